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
from conftest import assert_certify_coverage

from smoothjax import noise as noise_lib
from smoothjax import smoothing


def threshold_logits(x):
  z = x.reshape(x.shape[0], -1)[:, 0] - 0.5
  return jnp.stack([-z, z], axis=-1)


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
  prediction, radius, p_lower = assert_certify_coverage(
    certs, p=p, margin=margin, n0=n0, n=n, alpha=alpha
  )
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
