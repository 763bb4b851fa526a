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


def _ks_pvalue(samples, scale):
  # A frozen distribution's cdf: SciPy 1.18 refuses kstest(x, "norm", args=...).
  return scipy.stats.kstest(samples, scipy.stats.norm(0, scale).cdf).pvalue


def test_gaussian_sample_passes_ks_test_and_wrong_scales_fail():
  eps = np.asarray(noise_lib.Gaussian(SIGMA).sample(jax.random.key(1), (20_000,)), np.float64)
  assert _ks_pvalue(eps, SIGMA) > 1e-3
  for wrong in (2 / 3 * SIGMA, 3 / 2 * SIGMA):
    assert _ks_pvalue(eps, wrong) < 1e-6


def test_gaussian_sample_respects_dtype():
  eps = noise_lib.Gaussian(SIGMA).sample(jax.random.key(2), (4, 3), jnp.bfloat16)
  assert eps.dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_dtype_samples_are_rounded_float32_samples(dtype):
  # jax.random.normal drawn directly in bfloat16 (float16) takes 128 (about 2,000)
  # values and never exceeds 2.9 (3.5): no Gaussian tail. Drawing in float32 and
  # rounding keeps it: 10^5 draws exceed 3.6 standard deviations about 30 times.
  g = noise_lib.Gaussian(1.0)
  eps = g.sample(jax.random.key(4), (100_000,), dtype)
  wide = g.sample(jax.random.key(4), (100_000,), jnp.float32)
  np.testing.assert_array_equal(eps, wide.astype(dtype))
  eps = np.asarray(eps, np.float64)
  assert np.abs(eps).max() > 3.6 and len(np.unique(eps)) > 1_000
  assert _ks_pvalue(eps, 1.0) > 1e-3


def test_scale_bounds_keep_samples_finite_and_nonzero():
  big = noise_lib.Gaussian(noise_lib.MAX_SCALE)
  for seed, dtype in enumerate((jnp.float32, jnp.bfloat16)):
    eps = big.sample(jax.random.key(seed), (100_000,), dtype)
    assert np.all(np.isfinite(np.asarray(eps, np.float32)))
  # XLA flushes subnormals to zero on CPU: at the lower bound almost no sample is 0.
  tiny = np.asarray(noise_lib.Gaussian(noise_lib.MIN_SCALE).sample(jax.random.key(5), (100_000,)))
  assert np.count_nonzero(tiny == 0) <= 2
  assert noise_lib.max_scale(jnp.bfloat16) == noise_lib.MAX_SCALE < noise_lib.max_scale(jnp.float32)
  assert noise_lib.max_scale(jnp.float16) == 65504 / 1024


@pytest.mark.parametrize("sigma", [1e39, 3.4e38, 1e36, 1e-38, 1e-40, 1e-32])
def test_scales_whose_samples_overflow_or_vanish_are_refused(sigma):
  with pytest.raises(InputError, match=r"sigma=.*outside \[1\.97e-31, 3\.31e\+35\]") as error:
    noise_lib.Gaussian(sigma)
  assert "\n" not in str(error.value)


def test_sample_refuses_a_scale_too_large_for_the_requested_dtype():
  g = noise_lib.Gaussian(100.0)
  with pytest.raises(InputError, match="float16.*<= 64"):
    g.sample(jax.random.key(6), (3,), jnp.float16)
  with pytest.raises(InputError, match="floating dtype"):
    g.sample(jax.random.key(7), (3,), jnp.int32)
  eps = noise_lib.Gaussian(60.0).sample(jax.random.key(8), (10_000,), jnp.float16)
  assert np.all(np.isfinite(np.asarray(eps, np.float32)))


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
  with pytest.raises(InputError, match="unknown norm 'l3'"):
    g.radius(0.9, "l3")
  with pytest.raises(InputError, match="converting an l2 radius to linf needs the input dimension"):
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
  assert noise_lib.from_name("Laplace", 1) == noise_lib.Laplace(sigma=1.0)
  with pytest.raises(InputError, match="unknown noise 'cauchy'"):
    noise_lib.from_name("cauchy", 0.25)
  with pytest.raises(InputError, match="sigma"):
    noise_lib.from_name("gaussian", -1.0)
