"""Tests for the noise families: sampling distribution and certified radii."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from smoothjax import noise as noise_lib
from smoothjax.errors import InputError

SIGMA = 0.5


def test_gaussian_sample_shape_dtype_and_moments():
  eps = noise_lib.Gaussian(SIGMA).sample(jax.random.key(0), (100, 10, 10, 1))
  assert eps.shape == (100, 10, 10, 1) and eps.dtype == jnp.float32
  eps = np.asarray(eps, np.float64).ravel()
  se_mean = SIGMA / np.sqrt(eps.size)
  assert abs(eps.mean()) < 4 * se_mean
  # The sample std of 10^4 normals has relative standard error 1 / sqrt(2 * 10^4).
  assert abs(eps.std() / SIGMA - 1) < 4 / np.sqrt(2 * eps.size)


def test_gaussian_sample_passes_ks_test_and_wrong_scales_fail():
  eps = np.asarray(noise_lib.Gaussian(SIGMA).sample(jax.random.key(1), (20_000,)), np.float64)
  assert scipy.stats.kstest(eps, "norm", args=(0, SIGMA)).pvalue > 1e-3
  for wrong in (2 / 3 * SIGMA, 3 / 2 * SIGMA):
    assert scipy.stats.kstest(eps, "norm", args=(0, wrong)).pvalue < 1e-6


def test_gaussian_sample_respects_dtype():
  eps = noise_lib.Gaussian(SIGMA).sample(jax.random.key(2), (4, 3), jnp.bfloat16)
  assert eps.dtype == jnp.bfloat16


def test_same_key_same_sample_and_different_keys_differ():
  g = noise_lib.Gaussian(SIGMA)
  key = jax.random.key(3)
  a = g.sample(jax.random.fold_in(key, 0), (5, 5, 3))
  b = g.sample(jax.random.fold_in(key, 0), (5, 5, 3))
  c = g.sample(jax.random.fold_in(key, 1), (5, 5, 3))
  np.testing.assert_array_equal(a, b)
  assert not np.any(np.asarray(a) == np.asarray(c))


def test_gaussian_radius_closed_forms():
  g = noise_lib.Gaussian(SIGMA)
  assert g.radius(0.5) == 0.0
  assert g.radius(0.3) == 0.0
  assert g.radius(0.0) == 0.0
  assert g.radius(scipy.stats.norm.cdf(1.0)) == pytest.approx(SIGMA, rel=1e-12)
  assert g.radius(scipy.stats.norm.cdf(2.5), "l2") == pytest.approx(2.5 * SIGMA, rel=1e-12)
  assert isinstance(g.radius(0.9), float)


def test_gaussian_radius_is_vectorised():
  g = noise_lib.Gaussian(0.25)
  p = np.array([[0.1, 0.5, 0.6], [0.9, 0.999, 0.5000001]])
  expected = np.where(p > 0.5, 0.25 * scipy.stats.norm.ppf(p), 0.0)
  np.testing.assert_allclose(g.radius(p), expected, rtol=1e-12)
  assert g.radius(p).shape == (2, 3)
  np.testing.assert_allclose(g.radii(p, dim=12)["l2"], expected, rtol=1e-12)


def test_gaussian_declares_norms_and_std():
  g = noise_lib.Gaussian(0.25)
  assert g.norms == ("l2",)
  assert g.std == 0.25
  assert g.name == "gaussian"


def test_unknown_norm_and_bad_p_raise():
  g = noise_lib.Gaussian(SIGMA)
  with pytest.raises(InputError, match="linf"):
    g.radius(0.9, "linf")
  with pytest.raises(InputError, match=r"\[0, 1\]"):
    g.radius(1.5)
  with pytest.raises(InputError, match=r"\[0, 1\]"):
    g.radius(np.array([0.7, np.nan]))


@pytest.mark.parametrize("sigma", [0, -0.25, float("nan"), float("inf"), True, "0.25", None])
def test_invalid_sigma_raises(sigma):
  with pytest.raises(InputError, match="sigma"):
    noise_lib.Gaussian(sigma)


def test_noise_is_hashable_and_static_friendly():
  a, b = noise_lib.Gaussian(0.25), noise_lib.Gaussian(np.float32(0.25))
  assert a == b and hash(a) == hash(b) and isinstance(b.sigma, float)
  assert a != noise_lib.Gaussian(0.5)

  f = jax.jit(lambda x, g: x * g.sigma, static_argnums=1)
  assert float(f(jnp.float32(2.0), a)) == 0.5


def test_from_name():
  assert noise_lib.from_name("gaussian", 0.25) == noise_lib.Gaussian(0.25)
  assert noise_lib.from_name("Gaussian", 1) == noise_lib.Gaussian(1.0)
  with pytest.raises(InputError, match="unknown noise 'cauchy'; choose one of: gaussian"):
    noise_lib.from_name("cauchy", 0.25)
  with pytest.raises(InputError, match="sigma"):
    noise_lib.from_name("gaussian", -1.0)
