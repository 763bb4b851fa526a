"""Sequential CERTIFY: coverage under optional stopping, stopping sizes, invariance.

Analytic base classifiers with known ``pA``: a linear two-class classifier
``1[w.x + b > 0]`` (unit ``w``) under ``N(0, sigma^2 I)`` votes class 1 with probability
``Phi(margin / sigma)`` and its smoothed classifier is constant exactly on the ball of
radius ``|margin|``; a constant classifier has ``pA = 1``. The coverage tests also
simulate the votes on the host (binomial increments at each look) and run the stopping
rules of :mod:`smoothjax.smoothing.sequential` on them, for many more trials.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from smoothjax import smoothing
from smoothjax.errors import InputError
from smoothjax.noise import Gaussian, Laplace
from smoothjax.smoothing import sequential, stats

SHAPE = (2, 2, 1)  # d = 4; w = (1/2, 1/2, 1/2, 1/2) has unit norm


def linear_logits(x):
  z = 0.5 * jnp.sum(x.reshape(x.shape[0], -1), axis=1) - 1.0
  return jnp.stack([-z, z], axis=-1)


def constant_logits(x):
  """Always class 1: pA = 1."""
  ones = jnp.ones(x.shape[0])
  return jnp.stack([-ones, ones], axis=-1)


def image(margin: float) -> np.ndarray:
  return np.full(SHAPE, (margin + 1) / 2, np.float32)


def true_margin(x: np.ndarray) -> float:
  return 0.5 * float(np.sum(x.astype(np.float64))) - 1.0


def keys_for(seed: int, count: int) -> jax.Array:
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(count))


def within_alpha(wrong: np.ndarray, alpha: float) -> bool:
  """The issue's coverage criterion: a wrong-certificate rate at most alpha + 3 s.e."""
  return wrong.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(wrong))


# ----------------------------------------------------------------------------
# Looks and stopping sizes


def test_look_schedule_is_geometric_and_ends_at_n_max():
  looks = stats.look_schedule(100_000, first=100, growth=1.25)
  assert looks[0] == 100 and looks[-1] == 100_000
  assert all(b > a for a, b in zip(looks, looks[1:], strict=False))
  ratios = np.diff(np.log(looks[:-1]))
  np.testing.assert_allclose(ratios, math.log(1.25), atol=0.02)
  assert looks[-1] / looks[-2] >= 1.1  # a look within 10% of n_max merges into it
  assert stats.look_schedule(7, first=100) == (7,)
  # Each look at least one sample beyond the last.
  assert stats.look_schedule(10, first=1, growth=1.01) == tuple(range(1, 11))


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(n_max=0), "n_max must be an integer >= 1"),
    (dict(n_max=100, first=0), "first must be an integer >= 1"),
    (dict(n_max=100, growth=1.0), "growth must be a number > 1"),
    (dict(n_max=100, growth=float("nan")), "growth must be a number > 1"),
  ],
)
def test_look_schedule_rejects_bad_settings(kwargs, message):
  with pytest.raises(InputError, match=message):
    stats.look_schedule(**kwargs)


@pytest.mark.parametrize("sigma, radius, level", [(0.25, 0.75, 1e-3 / 33), (1.0, 0.3, 0.01)])
def test_unanimous_samples_is_the_closed_form(sigma, radius, level):
  n = sequential.unanimous_samples(radius, level, Gaussian(sigma), 4)
  assert n == math.ceil(math.log(level) / math.log(scipy.stats.norm.cdf(radius / sigma)))
  # Radius 0 needs p_lower >= 1/2; Laplace l1 radius -lambda log(2 (1 - p)).
  assert sequential.unanimous_samples(0.0, 0.01, Gaussian(1.0), 4) == math.ceil(
    math.log(0.01) / math.log(0.5)
  )
  lam = 0.5
  p = 1 - 0.5 * math.exp(-radius / lam)
  assert sequential.unanimous_samples(radius, level, Laplace(lambda_=lam), 4) == math.ceil(
    math.log(level) / math.log(p)
  )


@pytest.mark.parametrize(
  "sigma, radius, alpha, mode",
  [(0.25, 0.75, 0.001, "target"), (0.5, 0.5, 0.01, "grid"), (1.0, 0.25, 0.001, "target")],
)
def test_pa_one_stops_at_the_closed_form_sample_size(sigma, radius, alpha, mode):
  n_max, first, growth = 100_000, 100, 1.25
  # The bound: Clopper-Pearson at alpha' = alpha / (J + 1), J geometric looks plus the
  # goal's look; with every vote agreeing it is alpha'^(1/n).
  alpha_look = alpha / (len(stats.look_schedule(n_max, first=first, growth=growth)) + 1)
  expected = math.ceil(math.log(alpha_look) / math.log(scipy.stats.norm.cdf(radius / sigma)))
  goal = dict(target_radius=radius) if mode == "target" else dict(radii=(0.0, radius / 2, radius))
  cert = smoothing.certify_adaptive(
    constant_logits,
    image(0.0),
    jax.random.key(3),
    noise=Gaussian(sigma),
    n0=10,
    n_max=n_max,
    alpha=alpha,
    batch_size=4096,
    **goal,
  )
  assert cert.samples == expected
  assert cert.stop == mode
  assert cert.prediction == 1 and cert.radius >= radius
  assert cert.p_lower == pytest.approx(alpha_look ** (1 / expected), rel=1e-9)
  np.testing.assert_array_equal(cert.counts, [0, expected])
  # One sample fewer would not have certified the radius.
  below = stats.clopper_pearson_lower(expected - 1, expected - 1, alpha_look)
  assert sigma * scipy.stats.norm.ppf(below) < radius


def test_an_unreachable_goal_stops_at_the_first_look():
  noise = Gaussian(0.25)
  # With 1,000 samples at most sigma * Phi^-1(alpha'^(1/1000)) ~ 0.55 is certifiable.
  cert = smoothing.certify_adaptive(
    constant_logits, image(0.0), jax.random.key(0), noise=noise, n0=10, n_max=1000,
    alpha=0.001, batch_size=512, target_radius=0.8,
  )  # fmt: skip
  assert (cert.stop, cert.samples, cert.prediction) == ("out_of_reach", 100, 1)


# ----------------------------------------------------------------------------
# The stopping rules on given votes


def _decide(k, look, looks, goal, level=0.001, sigma=1.0):
  stop, p_lower = sequential.decide(
    np.asarray(k), look, looks=looks, level=level, noise=Gaussian(sigma), dim=4,
    goal=sequential.check_goal(**goal),
  )  # fmt: skip
  return list(stop), p_lower


def test_decide_settles_abstention_and_out_of_reach_early():
  looks = (100, 1000, 10_000)
  # 30 of 100 votes: even 10,000 samples at the upper bound cannot reach 1/2.
  assert _decide([30], 0, looks, dict(radii=(0.0, 0.5)))[0] == ["abstain"]
  # 80 of 100: certifiable (radius ~0.4 in time) but 1.5 is out of reach.
  assert _decide([80], 0, looks, dict(target_radius=1.5))[0] == ["out_of_reach"]
  assert _decide([80], 0, looks, dict(target_radius=0.6))[0] == [""]
  assert _decide([80], 0, looks, dict(target_radius=0.3))[0] == ["target"]
  # Grid: certified at 0.25 (k = 9,000 of 10,000 at the last look), stops by n_max.
  assert _decide([9000], 2, looks, dict(radii=(0.0, 2.0)))[0] == ["n_max"]
  # The largest grid radius reached: stop even before n_max.
  assert _decide([999], 1, looks, dict(radii=(0.0, 1.0, 2.0)))[0] == ["grid"]
  assert _decide([999], 1, looks, dict(target_radius=2.0))[0] == ["target"]


def test_decide_tolerance_stops_when_more_samples_gain_little():
  looks = (1000, 100_000)
  stop, p_lower = _decide([700, 990], 0, looks, dict(tolerance=0.2))
  radius = scipy.stats.norm.ppf(p_lower)
  assert stop == ["", ""]  # 0.7: the radius could still grow by about 0.1 + ...
  stop, _ = _decide([700], 0, looks, dict(tolerance=1.0))
  assert stop == ["tolerance"]
  assert radius[0] > 0  # certified: tolerance applies to certified inputs only
  assert _decide([400], 0, looks, dict(tolerance=5.0))[0] == ["abstain"]


# ----------------------------------------------------------------------------
# Coverage under optional stopping


def _simulate(p, goal, *, alpha, n_max, trials, seed, naive=False, first=20, growth=1.25):
  """p_lower and radius (sigma 1) of sequential CERTIFY on binomial votes of rate p.

  ``naive`` reads every look's bound at level alpha instead of the split level.
  """
  noise = Gaussian(1.0)
  goal = sequential.check_goal(**goal)
  looks, level = sequential.plan(
    n_max, alpha=alpha, noise=noise, dim=4, goal=goal, first=first, growth=growth
  )
  if naive:
    level = alpha
  rng = np.random.default_rng(seed)
  k = np.zeros(trials, np.int64)
  p_lower = np.full(trials, np.nan)
  running = np.arange(trials)
  drawn = 0
  for look, size in enumerate(looks):
    k[running] += rng.binomial(size - drawn, p, size=len(running))
    drawn = size
    stop, bound = sequential.decide(
      k[running], look, looks=looks, level=level, noise=noise, dim=4, goal=goal, futility=0.01
    )
    done = stop != ""
    p_lower[running[done]] = bound[done]
    running = running[~done]
  assert not len(running)
  radius = np.where(p_lower >= 0.5, scipy.stats.norm.ppf(p_lower), -np.inf)
  return p_lower, radius


@pytest.mark.parametrize(
  "goal, true_radius, naive_fails",
  [
    # pA just below what certifies the target: stopping when the bound first passes it
    # is where optional stopping pays off for a naive bound.
    (dict(target_radius=0.5), 0.48, True),
    # Just below the second radius of a grid.
    (dict(radii=(0.0, 0.25, 0.5)), 0.24, True),
    # Tolerance: certified inputs stop once n_max could add little (late, where the
    # naive bound's looks add little error).
    (dict(tolerance=0.05), 0.3, False),
  ],
)
def test_coverage_under_optional_stopping_and_the_naive_bound_fails(goal, true_radius, naive_fails):
  alpha, trials = 0.05, 4000
  p = float(scipy.stats.norm.cdf(true_radius))
  p_lower, radius = _simulate(p, goal, alpha=alpha, n_max=5000, trials=trials, seed=1)
  wrong = radius > true_radius
  np.testing.assert_array_equal(wrong, p_lower > p)
  assert within_alpha(wrong, alpha), wrong.mean()
  naive_lower, naive_radius = _simulate(
    p, goal, alpha=alpha, n_max=5000, trials=trials, seed=1, naive=True
  )
  naive_wrong = naive_radius > true_radius
  assert naive_wrong.mean() >= wrong.mean()
  if naive_fails:
    # The same test catches the naive version: its certificates are wrong far too often.
    assert not within_alpha(naive_wrong, alpha), naive_wrong.mean()
    assert naive_wrong.mean() > 2 * alpha


def test_end_to_end_coverage_on_an_analytic_classifier():
  # 2,000 inputs just inside the target radius, each certified with its own key.
  alpha, trials, sigma = 0.05, 2000, 0.5
  x = image(0.48 * sigma)
  margin = true_margin(x)
  p = scipy.stats.norm.cdf(margin / sigma)
  noise = Gaussian(sigma)
  certs = smoothing.certify_adaptive_batch(
    linear_logits,
    np.broadcast_to(x, (trials, *SHAPE)),
    keys_for(11, trials),
    noise=noise,
    n0=10,
    n_max=4000,
    alpha=alpha,
    batch_size=8192,
    target_radius=0.5 * sigma,
    first=20,
  )
  prediction = np.array([c.prediction for c in certs])
  radius = np.array([c.radius for c in certs])
  p_lower = np.array([c.p_lower for c in certs])
  top = np.array([c.top_class for c in certs])
  samples = np.array([c.samples for c in certs])
  # A wrong certificate (wrong class, or a radius beyond the true one) needs p_lower > pA.
  wrong = (prediction != smoothing.ABSTAIN) & ((prediction != 1) | (radius > margin))
  miss = p_lower > np.where(top == 1, p, 1 - p)
  assert not np.any(wrong & ~miss)
  assert within_alpha(wrong, alpha), wrong.mean()
  assert all(int(c.counts.sum()) == c.samples and c.counts_selection.sum() == 10 for c in certs)
  looks, _ = sequential.plan(
    4000, alpha=alpha, noise=noise, dim=4, goal=sequential.check_goal(target_radius=0.5 * sigma),
    first=20,
  )  # fmt: skip
  assert set(samples) <= set(looks) and len(set(samples)) > 3
  stops = np.array([c.stop for c in certs])
  assert set(stops) <= set(sequential.STOP_REASONS)
  # Every "target" stop certifies beyond the true radius: the risky path is taken.
  assert np.all(wrong[stops == "target"]) and (stops == "out_of_reach").mean() > 0.5


# ----------------------------------------------------------------------------
# Determinism and the relation to fixed-n CERTIFY


def test_votes_are_the_first_samples_of_fixed_n_certify():
  xs = np.stack([image(m) for m in (0.05, 0.2, -0.3)])
  keys = keys_for(5, len(xs))
  noise = Gaussian(0.25)
  seq = smoothing.certify_adaptive_batch(
    linear_logits, xs, keys, noise=noise, n0=30, n_max=5000, alpha=0.001, batch_size=1024,
    radii=(0.0, 0.25, 0.5),
  )  # fmt: skip
  assert len({c.samples for c in seq}) > 1
  for i, c in enumerate(seq):
    fixed = smoothing.certify(
      linear_logits, xs[i], keys[i], noise=noise, n0=30, n=c.samples, alpha=0.001,
      batch_size=777,
    )  # fmt: skip
    np.testing.assert_array_equal(c.counts, fixed.counts)
    np.testing.assert_array_equal(c.counts_selection, fixed.counts_selection)
    assert fixed.samples == c.samples and fixed.stop == "fixed"
    # The same votes, bounded at the split level: never a larger radius.
    assert c.p_lower <= fixed.p_lower


def test_same_key_same_certificate_whatever_the_batch():
  xs = np.stack([image(m) for m in (0.02, 0.15, 0.9, -0.1)])
  settings = dict(
    noise=Gaussian(0.25), n0=20, n_max=8000, alpha=0.01, tolerance=0.02, target_radius=0.5
  )

  def keys():  # fresh key arrays: the key-reuse checker sees each use
    return keys_for(8, len(xs))

  together = smoothing.certify_adaptive_batch(
    linear_logits, xs, keys(), batch_size=1024, **settings
  )
  pairs = smoothing.certify_adaptive_batch(
    linear_logits, xs[::-1], keys()[::-1], batch_size=64, **settings
  )[::-1]
  for i, c in enumerate(together):
    alone = smoothing.certify_adaptive(linear_logits, xs[i], keys()[i], batch_size=256, **settings)
    assert c == alone == pairs[i]
  assert len({c.stop for c in together}) > 1, [c.stop for c in together]
  other = smoothing.certify_adaptive(linear_logits, xs[0], keys()[1], batch_size=256, **settings)
  assert other != together[0]


# ----------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(radii=None, target_radius=None, tolerance=None), "needs a goal to stop at"),
    (dict(target_radius=0.5), "not both"),
    (dict(radii=()), "radii is empty"),
    (dict(radii=(0.1, -1)), "each of radii must be a finite number >= 0"),
    (dict(radii="0.25"), "radii must be a sequence"),
    (dict(tolerance=float("inf")), "tolerance must be a finite number >= 0"),
    (dict(futility=1.0), "futility must be a number in \\(0, 1\\)"),
    (dict(growth=0.5), "growth must be a number > 1"),
    (dict(first=0), "first must be an integer >= 1"),
    (dict(n_max=0), "n_max must be an integer >= 1"),
    (dict(n0=1.5), "n0 must be an integer >= 1"),
    (dict(alpha=0), "alpha must be a number in \\(0, 1\\)"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(noise=0.25), "noise must be a smoothjax.noise.Noise"),
    (dict(n_max=2**31), "overflow the int32"),
  ],
)
def test_bad_settings_are_refused(overrides, message):
  settings = dict(
    noise=Gaussian(0.25), n0=10, n_max=1000, alpha=0.01, batch_size=64, radii=(0.0, 0.5)
  )
  settings.update(overrides)
  with pytest.raises(InputError, match=message):
    smoothing.certify_adaptive(linear_logits, image(0.3), jax.random.key(0), **settings)


def test_non_finite_logits_are_refused():
  def broken(x):
    return jnp.full((x.shape[0], 2), jnp.nan)

  with pytest.raises(InputError, match="NaN or infinite logits"):
    smoothing.certify_adaptive_batch(
      broken, np.stack([image(0.1)] * 2), keys_for(0, 2), noise=Gaussian(0.25), n0=10,
      n_max=100, alpha=0.01, batch_size=64, target_radius=0.1,
    )  # fmt: skip
