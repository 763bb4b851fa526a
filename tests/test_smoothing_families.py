"""CERTIFY's guarantee under Laplace and uniform noise, on one-dimensional classifiers.

The base classifier ``1[x > 1/2]`` on one value ``x`` under noise of CDF ``F``
votes for class 1 with probability ``F(x - 1/2)``; for a symmetric noise the smoothed
classifier's boundary is 1/2 too, so the true certified radius at ``x`` is
``|x - 1/2|`` in every norm. Just below a Clopper-Pearson bound the probability that
the certified radius exceeds it is close to alpha, so a bound at ``2 alpha`` (a
two-sided interval used one-sided the wrong way), or shared selection and estimation
samples, would show.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from smoothjax import noise as noise_lib
from smoothjax import smoothing


def threshold_logits(x):
  z = x.reshape(x.shape[0], -1)[:, 0] - 0.5
  return jnp.stack([-z, z], axis=-1)


def cp_lower(k, n, alpha):
  k = np.asarray(k)
  safe = np.maximum(k, 1)
  return np.where(k == 0, 0.0, scipy.stats.beta.ppf(alpha, safe, n - safe + 1))


def exact_miss(p, n0, n, alpha):
  """P[p_lower exceeds the probability of the selected class], selection ties to 0."""
  support = np.arange(n + 1)
  select_1 = scipy.stats.binom.sf(n0 // 2, n0, p)
  miss_1 = scipy.stats.binom.pmf(support, n, p)[cp_lower(support, n, alpha) > p].sum()
  miss_0 = scipy.stats.binom.pmf(support, n, 1 - p)[cp_lower(support, n, alpha) > 1 - p].sum()
  return select_1 * miss_1 + (1 - select_1) * miss_0


FAMILIES = {
  "laplace": (noise_lib.Laplace(lambda_=0.1), lambda lam: scipy.stats.laplace(0, lam)),
  "uniform": (noise_lib.Uniform(lambda_=0.3), lambda lam: scipy.stats.uniform(-lam, 2 * lam)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_certify_coverage_under_laplace_and_uniform_noise(family, alpha):
  noise, law = FAMILIES[family]
  dist = law(noise.lambda_)
  n0, n, trials = 10, 100, 3000
  p_target = float(scipy.stats.beta.ppf(alpha, 88, n - 88 + 1)) - 0.002
  margin = float(dist.ppf(p_target))  # the true radius, in every norm
  x = np.array([0.5 + margin], np.float32)
  margin = float(x[0]) - 0.5  # as float32 holds it
  p = float(dist.cdf(margin))
  base = jax.random.key(20)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(trials))
  certs = smoothing.certify_batch(
    threshold_logits,
    np.broadcast_to(x, (trials, 1)),
    keys,
    noise=noise,
    n0=n0,
    n=n,
    alpha=alpha,
    batch_size=4096,
  )
  top = np.array([c.top_class for c in certs])
  p_lower = np.array([c.p_lower for c in certs])
  prediction = np.array([c.prediction for c in certs])
  radius = np.array([c.radius for c in certs])

  exact = exact_miss(p, n0, n, alpha)
  assert 0.5 * alpha < exact <= alpha
  # A bound at 2 alpha would miss far more often than alpha: this setting would see it.
  assert exact_miss(p, n0, n, 2 * alpha) > alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
  miss = p_lower > np.where(top == 1, p, 1 - p)
  assert abs(miss.mean() - exact) <= 4 * np.sqrt(exact * (1 - exact) / trials)

  wrong = (prediction != smoothing.ABSTAIN) & ((prediction != 1) | (radius > margin))
  assert not np.any(wrong & ~miss)
  assert wrong.mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
  certified = prediction == 1
  assert certified.sum() > trials / 4
  # The radius is the family's l1 formula, the same in every norm in one dimension.
  np.testing.assert_allclose(radius[certified], dist.ppf(p_lower[certified]), rtol=1e-6)
  for c in certs[:50]:
    assert c.radii["l1"] == c.radii["l2"] == pytest.approx(c.radii["linf"], rel=1e-9)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_clear_input_certifies_nearly_its_true_radius(family):
  noise, law = FAMILIES[family]
  x = np.array([0.5 + 0.8 * noise.lambda_], np.float32)
  cert = smoothing.certify(
    threshold_logits,
    x,
    jax.random.key(3),
    noise=noise,
    n0=100,
    n=100_000,
    alpha=0.001,
    batch_size=20_000,
  )
  truth = float(x[0]) - 0.5
  assert cert.prediction == 1
  assert 0.9 * truth < cert.radius <= truth
