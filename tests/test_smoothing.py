"""Tests for vote counting, CERTIFY and PREDICT against analytic base classifiers.

A linear two-class classifier ``1[w.x + b > 0]`` with unit ``w`` under
``N(0, sigma^2 I)`` noise votes for class 1 with probability
``Phi(margin / sigma)``, where ``margin = w.x + b`` is the signed l2 distance to
its boundary, so the true certified radius is ``|margin|``. A "leak" classifier
votes a class read off the noise itself (uniform over ``K_LEAK`` classes),
which shows which noise samples produced which votes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from conftest import assert_certify_coverage, cp_lower

from smoothjax import smoothing
from smoothjax.errors import InputError
from smoothjax.noise import Gaussian
from smoothjax.smoothing import votes

SIGMA = 0.25
NOISE = Gaussian(SIGMA)
SHAPE = (2, 2, 1)  # d = 4; w = (1/2, 1/2, 1/2, 1/2) has unit norm
K_LEAK = 10


def linear_logits(x):
  z = 0.5 * jnp.sum(x.reshape(x.shape[0], -1), axis=1) - 1.0
  return jnp.stack([-z, z], axis=-1)


def leak_logits(x):
  u = jax.scipy.special.ndtr((x[:, 0, 0, 0] - 0.5) / SIGMA)
  votes = jnp.clip(jnp.floor(K_LEAK * u).astype(jnp.int32), 0, K_LEAK - 1)
  return jax.nn.one_hot(votes, K_LEAK)


def image(margin: float) -> np.ndarray:
  """A constant image at signed distance ~``margin`` from the linear boundary."""
  return np.full(SHAPE, (margin + 1) / 2, np.float32)


def true_margin(x: np.ndarray) -> float:
  return 0.5 * float(np.sum(x.astype(np.float64))) - 1.0


def keys_for(seed: int, count: int) -> jax.Array:
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(count))


# ----------------------------------------------------------------------------
# Vote counts


def test_counts_follow_the_binomial_law():
  x = image(0.1)
  p = scipy.stats.norm.cdf(true_margin(x) / SIGMA)
  num, trials = 200, 2000
  counts = np.asarray(
    smoothing.sample_counts_batch(
      linear_logits,
      np.broadcast_to(x, (trials, *SHAPE)),
      keys_for(0, trials),
      noise=NOISE,
      num=num,
      batch_size=4096,
    )
  )
  assert counts.shape == (trials, 2) and counts.dtype == np.int32
  np.testing.assert_array_equal(counts.sum(axis=1), num)
  k = counts[:, 1]
  assert abs(k.mean() - num * p) < 4 * np.sqrt(num * p * (1 - p) / trials)
  assert abs(k.var(ddof=1) / (num * p * (1 - p)) - 1) < 4 * np.sqrt(2 / (trials - 1))
  # The histogram of counts against Binomial(num, p), bins pooled in the tails.
  edges = np.array([0, 115, 122, 127, 131, 135, 139, 144, num + 1])
  observed = np.histogram(k, edges)[0]
  cdf = scipy.stats.binom.cdf(edges - 1, num, p)
  expected = trials * np.diff(cdf)
  expected *= trials / expected.sum()
  assert scipy.stats.chisquare(observed, expected).pvalue > 1e-4


def test_single_input_counts_match_binomial():
  x = image(-0.15)
  p = scipy.stats.norm.cdf(true_margin(x) / SIGMA)
  num = 20_000
  counts = smoothing.sample_counts(
    linear_logits, x, jax.random.key(1), noise=NOISE, num=num, batch_size=1000
  )
  assert counts.shape == (2,) and counts.dtype == jnp.int32
  assert int(counts.sum()) == num
  assert abs(int(counts[1]) - num * p) < 4 * np.sqrt(num * p * (1 - p))


def test_noise_of_sample_s_is_drawn_from_fold_in_key_s():
  key = jax.random.key(5)
  x = image(0.0)
  num = 250
  eps = jax.vmap(lambda s: NOISE.sample(jax.random.fold_in(key, s), SHAPE))(jnp.arange(num))
  direct = np.bincount(np.argmax(leak_logits(jnp.asarray(x) + eps), axis=-1), minlength=K_LEAK)
  counts = smoothing.sample_counts(leak_logits, x, key, noise=NOISE, num=num, batch_size=32)
  np.testing.assert_array_equal(counts, direct)


@pytest.mark.parametrize("fn", [linear_logits, leak_logits], ids=["linear", "leak"])
def test_counts_do_not_depend_on_batch_size(fn):
  key = jax.random.key(6)
  x = image(0.05)
  results = [
    np.asarray(smoothing.sample_counts(fn, x, key, noise=NOISE, num=250, batch_size=bs))
    for bs in (7, 32, 100, 249)
  ]
  results.append(
    np.asarray(
      smoothing.sample_counts(fn, jnp.asarray(x), key, noise=NOISE, num=250, batch_size=1000)
    )
  )
  for r in results:
    assert r.sum() == 250
    np.testing.assert_array_equal(r, results[0])


def test_num_classes_pads_the_vote_vector():
  counts = smoothing.sample_counts(
    linear_logits,
    image(0.0),
    jax.random.key(7),
    noise=NOISE,
    num=33,
    batch_size=8,
    num_classes=5,
  )
  assert counts.shape == (5,) and int(counts.sum()) == 33
  np.testing.assert_array_equal(counts[2:], 0)


def test_batched_counts_equal_single_input_counts():
  xs = np.stack([image(m) for m in (-0.3, 0.0, 0.12, 0.4)])
  keys = keys_for(8, 4)
  batch = smoothing.sample_counts_batch(leak_logits, xs, keys, noise=NOISE, num=91, batch_size=50)
  for i in range(4):
    single = smoothing.sample_counts(
      leak_logits, xs[i], keys[i], noise=NOISE, num=91, batch_size=13
    )
    np.testing.assert_array_equal(batch[i], single)


# ----------------------------------------------------------------------------
# CERTIFY


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_certify_coverage_matches_exact_failure_probability(alpha):
  n0, n, trials = 10, 100, 3000
  # Just below the bound of k = 88 the miss probability is close to alpha, so
  # an anti-conservative bound (a two-sided alpha, shared samples) shows.
  p_target = float(scipy.stats.beta.ppf(alpha, 88, n - 88 + 1)) - 0.002
  x = image(SIGMA * scipy.stats.norm.ppf(p_target))
  margin = true_margin(x)
  p = scipy.stats.norm.cdf(margin / SIGMA)
  certs = smoothing.certify_batch(
    linear_logits,
    np.broadcast_to(x, (trials, *SHAPE)),
    keys_for(10, trials),
    noise=NOISE,
    n0=n0,
    n=n,
    alpha=alpha,
    batch_size=4096,
  )
  # Exact P[miss]: selection (ties to class 0) then an independent estimate; a wrong
  # certificate (wrong class, or a radius beyond the true distance) is a miss.
  prediction, radius, p_lower = assert_certify_coverage(
    certs, p=p, margin=margin, n0=n0, n=n, alpha=alpha
  )
  certified = prediction == 1
  assert certified.any()
  np.testing.assert_allclose(
    radius[certified], SIGMA * scipy.stats.norm.ppf(p_lower[certified]), rtol=1e-12
  )


def test_selection_and_estimation_use_fresh_samples():
  # Under a uniform random classifier the estimation votes for the selected
  # class are Binomial(n, 1/K) only if they are not the samples that chose it
  # (re-using them gives the maximum of K counts, mean ~0.18 n here).
  n0 = n = 50
  trials = 2000
  x = image(0.0)
  certs = smoothing.certify_batch(
    leak_logits,
    np.broadcast_to(x, (trials, *SHAPE)),
    keys_for(11, trials),
    noise=NOISE,
    n0=n0,
    n=n,
    alpha=0.05,
    batch_size=2048,
  )
  share = np.array([c.counts[c.top_class] for c in certs]) / n
  assert abs(share.mean() - 1 / K_LEAK) < 4 * np.sqrt((1 / K_LEAK) * (1 - 1 / K_LEAK) / n / trials)
  selected_share = np.array([c.counts_selection[c.top_class] for c in certs]) / n0
  assert selected_share.mean() > 0.15  # the selected class wins its own samples
  same = np.mean([np.array_equal(c.counts, c.counts_selection) for c in certs])
  assert same < 0.01
  assert all(c.prediction == smoothing.ABSTAIN for c in certs)


def test_certify_phases_use_documented_keys():
  key = jax.random.key(12)
  x = image(0.0)
  cert = smoothing.certify(leak_logits, x, key, noise=NOISE, n0=40, n=70, alpha=0.01, batch_size=16)
  selection = smoothing.sample_counts(
    leak_logits, x, jax.random.fold_in(key, 0), noise=NOISE, num=40, batch_size=16
  )
  estimation = smoothing.sample_counts(
    leak_logits, x, jax.random.fold_in(key, 1), noise=NOISE, num=70, batch_size=16
  )
  np.testing.assert_array_equal(cert.counts_selection, selection)
  np.testing.assert_array_equal(cert.counts, estimation)
  assert cert.top_class == int(np.argmax(selection))
  assert cert.p_lower == pytest.approx(float(cp_lower(estimation[cert.top_class], 70, 0.01)))


def test_certify_clear_input_gives_expected_certificate():
  x = image(0.5)
  cert = smoothing.certify(
    linear_logits,
    x,
    jax.random.key(13),
    noise=NOISE,
    n0=100,
    n=1000,
    alpha=0.001,
    batch_size=256,
  )
  k = int(cert.counts[1])
  expected_lower = float(cp_lower(k, 1000, 0.001))
  assert cert.prediction == 1 and cert.top_class == 1
  assert cert.p_lower == pytest.approx(expected_lower, rel=1e-12)
  assert cert.radius == pytest.approx(SIGMA * scipy.stats.norm.ppf(expected_lower), rel=1e-12)
  # l1 balls lie in the l2 ball of the same radius, linf ones in that of radius sqrt(d) r.
  assert cert.radii == {"l1": cert.radius, "l2": cert.radius, "linf": cert.radius / 2}
  assert 0 < cert.radius < true_margin(x)
  assert cert.counts.dtype == np.int64 and cert.counts.shape == (2,)
  assert not cert.abstained


def test_ties_select_the_lowest_class():
  # Every vote goes to class 1 or 3 with equal logits 0 elsewhere; constant
  # logits make all classes tie, so the lowest index must win.
  def constant_logits(x):
    return jnp.zeros((x.shape[0], 4))

  cert = smoothing.certify(
    constant_logits,
    image(0.0),
    jax.random.key(14),
    noise=NOISE,
    n0=5,
    n=20,
    alpha=0.1,
    batch_size=8,
  )
  np.testing.assert_array_equal(cert.counts, [20, 0, 0, 0])
  assert cert.top_class == 0 and cert.prediction == 0


def test_same_key_same_certificate_and_batch_equals_single():
  xs = np.stack([image(m) for m in (-0.4, -0.02, 0.0, 0.2, 0.6)])
  keys = keys_for(15, 5)
  settings = dict(noise=NOISE, n0=17, n=250, alpha=0.01)
  batch = smoothing.certify_batch(linear_logits, xs, keys, batch_size=64, **settings)
  again = smoothing.certify_batch(linear_logits, xs, keys, batch_size=1000, **settings)
  assert batch == again
  for i in range(5):
    key = keys[i]  # indexing a key array uses that element up, so index once
    for bs in (7, 100):
      single = smoothing.certify(linear_logits, xs[i], key, batch_size=bs, **settings)
      assert single == batch[i]
  predictions = [c.prediction for c in batch]
  assert predictions[0] == 0 and predictions[-1] == 1


def test_certificate_equality_sees_counts():
  cert = smoothing.certify(
    linear_logits,
    image(0.3),
    jax.random.key(16),
    noise=NOISE,
    n0=10,
    n=50,
    alpha=0.1,
    batch_size=32,
  )
  other = smoothing.certify(
    linear_logits,
    image(0.3),
    jax.random.key(17),
    noise=NOISE,
    n0=10,
    n=50,
    alpha=0.1,
    batch_size=32,
  )
  assert cert == cert and (cert != other) == (not np.array_equal(cert.counts, other.counts))


# ----------------------------------------------------------------------------
# PREDICT


def test_predict_returns_the_class_of_a_clear_input():
  xs = np.stack([image(0.5)] * 10 + [image(-0.5)] * 10)
  preds = smoothing.predict_batch(
    linear_logits, xs, keys_for(20, 20), noise=NOISE, n=100, alpha=0.001, batch_size=512
  )
  np.testing.assert_array_equal(preds, [1] * 10 + [0] * 10)
  assert (
    smoothing.predict(
      linear_logits,
      image(0.5),
      jax.random.key(21),
      noise=NOISE,
      n=100,
      alpha=0.001,
      batch_size=64,
    )
    == 1
  )


def test_predict_abstains_on_a_fair_coin_at_the_exact_rate():
  n, alpha, trials = 100, 0.1, 3000
  preds = smoothing.predict_batch(
    linear_logits,
    np.broadcast_to(image(0.0), (trials, *SHAPE)),
    keys_for(22, trials),
    noise=NOISE,
    n=n,
    alpha=alpha,
    batch_size=4096,
  )
  assert set(np.unique(preds)) <= {-1, 0, 1}
  answered = np.mean(preds != smoothing.ABSTAIN)
  k = np.arange(n + 1)
  rejects = np.array([scipy.stats.binomtest(int(a), n, 0.5).pvalue <= alpha for a in k])
  exact = scipy.stats.binom.pmf(k, n, 0.5)[rejects].sum()
  assert 0.5 * alpha < exact <= alpha
  assert abs(answered - exact) <= 4 * np.sqrt(exact * (1 - exact) / trials)
  assert 1 - answered >= 1 - alpha - 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_predict_uses_fold_in_key_2():
  key = jax.random.key(23)
  x = image(0.03)
  counts = np.asarray(
    smoothing.sample_counts(
      linear_logits, x, jax.random.fold_in(key, 2), noise=NOISE, num=500, batch_size=128
    )
  )
  pvalue = scipy.stats.binomtest(int(counts.max()), 500, 0.5).pvalue
  expected = int(np.argmax(counts)) if pvalue <= 0.05 else -1
  got = smoothing.predict(linear_logits, x, key, noise=NOISE, n=500, alpha=0.05, batch_size=37)
  assert got == expected


# ----------------------------------------------------------------------------
# Parameters as arguments, compilation cache


def _affine_apply(params, x):
  w, b = params
  z = x.reshape(x.shape[0], -1) @ w + b
  return jnp.stack([-z, z], axis=-1)


def test_partial_logits_fn_takes_new_params_without_recompiling():
  w = jnp.full((4,), 0.5)
  fn = jax.tree_util.Partial(_affine_apply, (w, jnp.float32(-1.0)))
  flipped = jax.tree_util.Partial(_affine_apply, (-w, jnp.float32(1.0)))
  key = jax.random.key(30)
  x = image(0.05)
  a = smoothing.sample_counts(fn, x, key, noise=NOISE, num=300, batch_size=64)
  size = votes._count_votes_jit._cache_size()
  b = smoothing.sample_counts(flipped, x, key, noise=NOISE, num=300, batch_size=64)
  assert votes._count_votes_jit._cache_size() == size
  # Negated weights swap the two classes on the very same noise.
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[::-1])
  reference = smoothing.sample_counts(linear_logits, x, key, noise=NOISE, num=300, batch_size=64)
  np.testing.assert_array_equal(a, reference)


def test_nnx_module_as_logits_fn():
  from flax import nnx

  class Affine(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.full((4,), 0.5))
      self.b = nnx.Param(jnp.float32(-1.0))

    def __call__(self, x):
      z = x.reshape(x.shape[0], -1) @ self.w[...] + self.b[...]
      return jnp.stack([-z, z], axis=-1)

  key = jax.random.key(31)
  x = image(-0.05)
  got = smoothing.sample_counts(Affine(), x, key, noise=NOISE, num=300, batch_size=64)
  reference = smoothing.sample_counts(linear_logits, x, key, noise=NOISE, num=300, batch_size=64)
  np.testing.assert_array_equal(got, reference)


def test_no_recompilation_on_second_call():
  settings = dict(noise=NOISE, n0=12, n=77, alpha=0.01, batch_size=20)
  smoothing.certify(linear_logits, image(0.2), jax.random.key(32), **settings)
  size = votes._count_votes_jit._cache_size()
  smoothing.certify(linear_logits, image(-0.3), jax.random.key(33), **settings)
  smoothing.certify(linear_logits, image(0.1), jax.random.key(34), **{**settings, "alpha": 0.2})
  assert votes._count_votes_jit._cache_size() == size
  smoothing.certify(linear_logits, image(0.1), jax.random.key(35), **{**settings, "n": 78})
  assert votes._count_votes_jit._cache_size() == size + 1


# ----------------------------------------------------------------------------
# Bad input


GOOD = dict(noise=NOISE, n0=10, n=20, alpha=0.01, batch_size=8)


def _certify(**overrides):
  args = dict(logits_fn=linear_logits, x=image(0.1), key=jax.random.key(40), **GOOD)
  args.update(overrides)
  return smoothing.certify(args.pop("logits_fn"), args.pop("x"), args.pop("key"), **args)


def _nan_image():
  x = image(0.1)
  x[0, 0, 0] = np.nan
  return x


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.0), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(n0=0), "n0"),
    (dict(n=0), "n must"),
    (dict(n=10.5), "n must"),
    (dict(batch_size=0), "batch_size"),
    (dict(noise=0.25), "noise"),
    (dict(x=_nan_image()), "NaN"),
    (dict(x=jnp.asarray(_nan_image())), "NaN"),
    (dict(x=jnp.asarray(image(0.1)) + 1.5), r"\[0, 1\]"),
    (dict(x=image(0.1) + 2.0), r"\[0, 1\]"),
    (dict(x=image(0.1) - 1.0), r"\[0, 1\]"),
    (dict(x=np.zeros((0, 3), np.float32)), "non-empty array"),
    (dict(x=image(0.1) * 255), r"outside value_range=\(0, 1\)"),
    (dict(value_range=(1, 0)), "value_range"),
    (dict(value_range=(0, float("inf"))), "value_range"),
    (dict(value_range="01"), "value_range"),
    (dict(value_range=(0,)), "value_range"),
    (dict(x=np.full(4, 3e38, np.float32), value_range=None), "overflows float32"),
    (dict(x=np.ones(SHAPE, np.int32)), "float"),
    (dict(key=np.zeros(2, np.uint32)), "jax.random.key"),
    (dict(key=keys_for(0, 2)), "shape"),
    (dict(logits_fn=lambda x: x), r"\(N, K\) logits"),
    (dict(logits_fn="model"), "callable"),
  ],
)
def test_certify_rejects_bad_input(overrides, message):
  with pytest.raises(InputError, match=message):
    _certify(**overrides)


def test_sigma_must_be_positive():
  with pytest.raises(InputError, match="sigma"):
    _certify(noise=Gaussian(0.0))


def test_slightly_out_of_range_pixels_are_accepted():
  x = image(0.1)
  x[0, 0, 0] = 1 + 5e-7
  assert _certify(x=x).counts.sum() == 20


def test_batched_functions_reject_bad_shapes():
  xs = np.stack([image(0.1)] * 3)
  with pytest.raises(InputError, match="non-empty batch"):
    smoothing.certify_batch(linear_logits, np.float32(0.5), keys_for(0, 3), **GOOD)
  with pytest.raises(InputError, match=r"\(N, K\) logits.*\*_batch"):
    smoothing.certify(linear_logits_nhwc, xs, jax.random.key(0), **GOOD)
  with pytest.raises(InputError, match=r"shape \(3,\)"):
    smoothing.certify_batch(linear_logits, xs, keys_for(0, 2), **GOOD)
  with pytest.raises(InputError, match="num must"):
    smoothing.sample_counts_batch(
      linear_logits, xs, keys_for(0, 3), noise=NOISE, num=0, batch_size=8
    )
  with pytest.raises(InputError, match="num_classes=1"):
    smoothing.sample_counts(
      linear_logits,
      xs[0],
      jax.random.key(0),
      noise=NOISE,
      num=5,
      batch_size=8,
      num_classes=1,
    )
  with pytest.raises(InputError, match="alpha"):
    smoothing.predict_batch(
      linear_logits, xs, keys_for(0, 3), noise=NOISE, n=5, alpha=2.0, batch_size=8
    )
  with pytest.raises(InputError, match="mesh"):
    smoothing.sample_counts_batch(
      linear_logits, xs, keys_for(0, 3), noise=NOISE, num=5, batch_size=8, mesh="cpu"
    )


def linear_logits_nhwc(x):
  if x.ndim != 4:  # like a model that only takes image batches
    return x
  return linear_logits(x)


# ----------------------------------------------------------------------------
# Broken models: non-finite logits are an error, never votes (NaN argmax is class 0).


def nan_logits(x):
  return jnp.full((x.shape[0], 3), jnp.nan)


def rare_nan_logits(x):
  # NaN for about 1% of the noisy samples, read off the noise of one coordinate.
  logits = linear_logits(x)
  u = jax.scipy.special.ndtr((x[:, 0, 0, 0] - x[:, 1, 1, 0]) / (SIGMA * np.sqrt(2)))
  return jnp.where((u < 0.01)[:, None], jnp.nan, logits)


def inf_above_half(x):
  # +inf logits for inputs far above 0.5 (clean value 1), finite ones for clean value 0.
  logits = linear_logits(x)
  return jnp.where((jnp.mean(x.reshape(x.shape[0], -1), axis=1) > 0.5)[:, None], jnp.inf, logits)


@pytest.mark.parametrize("fn", [nan_logits, rare_nan_logits], ids=["all", "rare"])
def test_non_finite_logits_are_refused_by_every_entry_point(fn):
  x = image(0.3)
  xs = np.stack([x, x])
  key = jax.random.key(50)
  calls = {
    "certify": lambda: smoothing.certify(fn, x, key, **{**GOOD, "n0": 100, "n": 300}),
    "predict": lambda: smoothing.predict(fn, x, key, noise=NOISE, n=400, alpha=0.01, batch_size=64),
    "sample_counts": lambda: smoothing.sample_counts(
      fn, x, key, noise=NOISE, num=400, batch_size=64
    ),
    "certify_batch": lambda: smoothing.certify_batch(
      fn, xs, keys_for(1, 2), **{**GOOD, "n0": 100, "n": 300}
    ),
    "predict_batch": lambda: smoothing.predict_batch(
      fn, xs, keys_for(2, 2), noise=NOISE, n=400, alpha=0.01, batch_size=64
    ),
    "sample_counts_batch": lambda: smoothing.sample_counts_batch(
      fn, xs, keys_for(3, 2), noise=NOISE, num=400, batch_size=64
    ),
  }
  for name, call in calls.items():
    with pytest.raises(InputError, match="NaN or infinite logits.*model is broken") as error:
      call()
    assert "\n" not in str(error.value), name


def test_non_finite_logits_error_names_the_inputs():
  xs = np.stack([np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32)] * 2)
  with pytest.raises(InputError, match=r"input\(s\) 1, 3 of this call's 4 \(40 noisy samples\)"):
    smoothing.sample_counts_batch(
      inf_above_half, xs, keys_for(4, 4), noise=Gaussian(0.01), num=20, batch_size=7
    )
  # The same model on the inputs it handles votes normally, padding included.
  counts = smoothing.sample_counts_batch(
    inf_above_half, xs[::2], keys_for(5, 2), noise=Gaussian(0.01), num=20, batch_size=7
  )
  np.testing.assert_array_equal(counts, [[20, 0], [20, 0]])


# ----------------------------------------------------------------------------
# Inputs of any shape: a tabular model with features outside [0, 1].

FEATURES = np.array([3.0, -2.0, 1.5, 0.5], np.float32)  # w.x + b with w = 1/2: margin 0.5


def test_vector_inputs_certify_like_the_same_values_as_an_image():
  settings = dict(noise=NOISE, n0=50, n=2000, alpha=0.001, batch_size=256)
  with pytest.raises(InputError, match="value_range"):
    smoothing.certify(linear_logits, FEATURES, jax.random.key(60), **settings)
  cert = smoothing.certify(
    linear_logits, FEATURES, jax.random.key(60), value_range=None, **settings
  )
  assert cert.prediction == 1 and 0 < cert.radius < 0.5
  # Noise depends on the number of coordinates, not their layout: the same values as a
  # (2, 2, 1) "image" get the same certificate.
  same = smoothing.certify(
    linear_logits, FEATURES.reshape(SHAPE), jax.random.key(60), value_range=None, **settings
  )
  assert cert == same
  batch = smoothing.certify_batch(
    linear_logits, np.stack([FEATURES, -FEATURES]), keys_for(61, 2), value_range=(-5, 5), **settings
  )
  assert [c.prediction for c in batch] == [1, 0]
  pred = smoothing.predict_batch(
    linear_logits,
    FEATURES[None],
    keys_for(62, 1),
    noise=NOISE,
    n=500,
    alpha=0.01,
    batch_size=128,
    value_range=None,
  )
  assert pred.tolist() == [1]
  # A scalar input (S = ()) is an input too.
  counts = smoothing.sample_counts(
    lambda x: jnp.stack([-x, x], axis=-1),
    np.float32(0.5),
    jax.random.key(63),
    noise=NOISE,
    num=300,
    batch_size=64,
  )
  assert counts.sum() == 300 and counts[1] > counts[0]


def test_custom_value_range_accepts_its_data():
  x = image(0.1) * 255
  counts = smoothing.sample_counts(
    lambda v: linear_logits(v / 255),
    x,
    jax.random.key(64),
    noise=NOISE,
    num=50,
    batch_size=50,
    value_range=(0, 255),
  )
  assert counts.sum() == 50


# ----------------------------------------------------------------------------
# Calls too large for the device loop's int32 indices say what to lower.


def test_too_many_samples_per_input_says_lower_n():
  with pytest.raises(
    InputError, match=r"n0 \+ n = 2147483657 samples per input.*lower n to at most 2147483629"
  ):
    _certify(n=2**31 - 1)
  with pytest.raises(InputError, match="lower num to at most"):
    smoothing.sample_counts(
      linear_logits, image(0.1), jax.random.key(65), noise=NOISE, num=2**31, batch_size=8
    )


def test_too_many_inputs_per_call_says_how_many_fit():
  xs = np.stack([image(0.1)] * 3)
  with pytest.raises(
    InputError, match=r"3 inputs x 1073741834 samples.*at most 1 inputs per call, or lower n"
  ):
    smoothing.certify_batch(linear_logits, xs, keys_for(0, 3), **{**GOOD, "n": 2**30})
