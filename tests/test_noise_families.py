"""Tests for the noise families of Yang et al. 2020: Laplace, Uniform and ExpInf.

Every sampler is checked against its stated law (KS and chi-square tests that accept the
right scale and reject 2/3 and 3/2 of it) and every radius against formulas written here
independently of ``smoothjax.noise``: SciPy's quantile functions, ``scipy.special.gamma``
and, in one dimension, the Neyman-Pearson worst case found by numerical integration of
the shifted densities.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats

from smoothjax import noise as noise_lib
from smoothjax.errors import InputError
from smoothjax.noise import expinf as noise_expinf

SIGMA = 0.5
# Bounds on the top-class probability, dense near 1/2 and near 1.
P_GRID = np.concatenate([0.5 + np.logspace(-9, -1, 9), np.linspace(0.65, 0.99, 18), [0.999999]])


def _marginal(noise):
  """The per-coordinate law a family states, as a frozen SciPy distribution."""
  lam = noise.lambda_
  return {
    "gaussian": scipy.stats.norm(0, lam),
    "laplace": scipy.stats.laplace(0, lam),
    "uniform": scipy.stats.uniform(-lam, 2 * lam),
  }[noise.name]


IID = {
  "gaussian": noise_lib.Gaussian,
  "laplace": noise_lib.Laplace,
  "uniform": noise_lib.Uniform,
}


# ---------------------------------------------------------------------------
# Scales


def test_sigma_and_lambda_are_related_by_each_familys_standard_deviation():
  assert noise_lib.Gaussian(sigma=0.5).lambda_ == 0.5
  assert noise_lib.Laplace(sigma=0.5).lambda_ == pytest.approx(0.5 / math.sqrt(2), rel=1e-15)
  assert noise_lib.Laplace(lambda_=0.5).sigma == pytest.approx(0.5 * math.sqrt(2), rel=1e-15)
  assert noise_lib.Uniform(sigma=0.5).lambda_ == pytest.approx(0.5 * math.sqrt(3), rel=1e-15)
  assert noise_lib.Uniform(lambda_=0.9).sigma == pytest.approx(0.9 / math.sqrt(3), rel=1e-15)
  # Either scale gives the same noise.
  assert noise_lib.Laplace(lambda_=0.5 / math.sqrt(2)).sigma == pytest.approx(0.5, rel=1e-15)


@pytest.mark.parametrize(("k", "j"), [(1, 0), (2, 0), (1, 3), (3, 1)])
def test_expinf_sigma_is_the_marginal_standard_deviation_computed_independently(k, j):
  dim = 8
  noise = noise_lib.ExpInf(lambda_=1.0, k=k, j=j, dim=dim)
  # x_i = R u_i: E R^2 = E[G^(2/k)], G ~ Gamma((d - j)/k); u_i = +-1 on the face
  # (probability 1/d), else uniform in [-1, 1] (second moment 1/3).
  radius_sq = scipy.stats.gamma((dim - j) / k).expect(lambda g: g ** (2 / k))
  expected = math.sqrt(radius_sq * (1 / dim + (dim - 1) / dim / 3))
  assert noise.sigma == pytest.approx(expected, rel=1e-9)
  by_sigma = noise_lib.ExpInf(sigma=noise.sigma, k=k, j=j, dim=dim)
  assert by_sigma.lambda_ == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("family", [*IID.values(), noise_lib.ExpInf])
def test_scale_is_given_exactly_once(family):
  with pytest.raises(InputError, match="got neither"):
    family()
  with pytest.raises(InputError, match="got both"):
    family(sigma=0.5, lambda_=0.1)
  for bad in (0, -1.0, float("nan"), float("inf"), True, "0.5"):
    with pytest.raises(InputError, match="must be a finite number > 0"):
      family(sigma=bad)
    with pytest.raises(InputError, match="must be a finite number > 0"):
      family(lambda_=bad)


def test_a_built_noise_can_be_copied_with_both_scales():
  laplace = noise_lib.Laplace(sigma=0.5)
  assert dataclasses.replace(laplace) == laplace
  expinf = noise_lib.ExpInf(sigma=0.5, dim=10)
  assert dataclasses.replace(expinf) == expinf
  with pytest.raises(InputError, match="got both"):
    dataclasses.replace(laplace, sigma=0.6)


# ---------------------------------------------------------------------------
# Samplers


@pytest.mark.parametrize("name", sorted(IID))
def test_iid_samples_pass_ks_and_wrong_scales_fail(name):
  noise = IID[name](sigma=SIGMA)
  eps = np.asarray(noise.sample(jax.random.key(11), (20_000,)), np.float64)
  assert scipy.stats.kstest(eps, _marginal(noise).cdf).pvalue > 1e-3
  for factor in (2 / 3, 3 / 2):
    wrong = IID[name](lambda_=noise.lambda_ * factor)
    assert scipy.stats.kstest(eps, _marginal(wrong).cdf).pvalue < 1e-6


@pytest.mark.parametrize("name", sorted(IID))
def test_iid_samples_have_the_stated_standard_deviation_and_are_independent(name):
  noise = IID[name](sigma=SIGMA)
  eps = np.asarray(noise.sample(jax.random.key(12), (4_000, 5, 5)), np.float64)
  flat = eps.reshape(len(eps), -1)
  # The sample variance of N values has standard error sqrt((mu4 - sigma^4) / N).
  mu4 = float(_marginal(noise).moment(4))
  se = math.sqrt((mu4 - SIGMA**4) / flat.size)
  assert abs(np.var(flat) - SIGMA**2) < 4 * se
  assert abs(flat.mean()) < 4 * SIGMA / math.sqrt(flat.size)
  # Neighbouring coordinates are uncorrelated.
  corr = np.corrcoef(flat[:, 0], flat[:, 1])[0, 1]
  assert abs(corr) < 4 / math.sqrt(len(flat))


@pytest.mark.parametrize("name", [*sorted(IID), "expinf"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_samples_are_jittable_for_any_shape_and_dtype(name, dtype):
  shape = (3, 4, 4, 2)
  if name == "expinf":
    noise = noise_lib.ExpInf(sigma=SIGMA, dim=32)
  else:
    noise = IID[name](sigma=SIGMA)
  eager = noise.sample(jax.random.key(13), shape, dtype)
  jitted = jax.jit(lambda k: noise.sample(k, shape, dtype))(jax.random.key(13))
  assert eager.shape == shape and eager.dtype == dtype
  np.testing.assert_array_equal(np.asarray(eager, np.float32), np.asarray(jitted, np.float32))
  assert np.all(np.isfinite(np.asarray(eager, np.float32)))


def test_uniform_samples_stay_inside_their_interval():
  noise = noise_lib.Uniform(lambda_=0.3)
  eps = np.asarray(noise.sample(jax.random.key(14), (100_000,)))
  assert np.all(np.abs(eps) <= 0.3) and np.abs(eps).max() > 0.2999


def _expinf_samples(k, j, dim, count, seed, lam=0.7):
  noise = noise_lib.ExpInf(lambda_=lam, k=k, j=j, dim=dim)
  # One sample per row; the trailing (2, dim / 2) axes hold one input.
  eps = noise.sample(jax.random.key(seed), (count, 2, dim // 2))
  return noise, np.asarray(eps, np.float64).reshape(count, dim)


@pytest.mark.parametrize(("k", "j"), [(1, 0), (2, 0), (1, 4), (2, 3)])
def test_expinf_linf_norm_follows_its_gamma_law(k, j):
  dim, lam = 10, 0.7
  _, eps = _expinf_samples(k, j, dim, 20_000, seed=20 + 3 * k + j, lam=lam)
  radius = np.abs(eps).max(axis=1)
  law = scipy.stats.gamma((dim - j) / k)
  assert scipy.stats.kstest((radius / lam) ** k, law.cdf).pvalue > 1e-3
  for factor in (2 / 3, 3 / 2):
    assert scipy.stats.kstest((radius / (factor * lam)) ** k, law.cdf).pvalue < 1e-6


@pytest.mark.parametrize(("dim", "k"), [(1, 50.0), (2, 1e3)])
def test_expinf_with_a_small_radius_shape_still_follows_its_law(dim, k):
  # The radius law Gamma(d / k)^(1/k) has a shape far below 1 here: a float32 Gamma draw
  # underflows to 0 for most samples, its logarithm does not.
  noise = noise_lib.ExpInf(lambda_=1.0, k=k, j=0, dim=dim)
  eps = np.asarray(noise.sample(jax.random.key(33), (20_000, dim)), np.float64)
  log_radius = k * np.log(np.abs(eps).max(axis=1))
  assert scipy.stats.kstest(log_radius, scipy.stats.loggamma(dim / k).cdf).pvalue > 1e-3
  assert abs(eps.std() / noise.sigma - 1) < 0.03


def test_expinf_direction_is_uniform_on_the_faces_of_the_cube():
  dim = 6
  _, eps = _expinf_samples(1, 0, dim, 30_000, seed=31)
  radius = np.abs(eps).max(axis=1, keepdims=True)
  u = eps / radius
  face = np.argmax(np.abs(u), axis=1)
  sign = np.sign(u[np.arange(len(u)), face])
  cell = face * 2 + (sign > 0)
  counts = np.bincount(cell, minlength=2 * dim)
  assert scipy.stats.chisquare(counts).pvalue > 1e-3
  # Off the face, coordinates are uniform in [-1, 1].
  rest = np.where(np.arange(dim)[None, :] == face[:, None], np.nan, u)
  rest = rest[~np.isnan(rest)]
  assert rest.size == len(u) * (dim - 1)
  assert scipy.stats.kstest(rest, scipy.stats.uniform(-1, 2).cdf).pvalue > 1e-3
  assert scipy.stats.kstest(rest, scipy.stats.uniform(-0.9, 1.8).cdf).pvalue < 1e-6


def test_expinf_samples_have_the_stated_standard_deviation():
  noise, eps = _expinf_samples(2, 1, 10, 20_000, seed=32)
  se = np.std(eps**2) / math.sqrt(eps.size) * 4  # loose: coordinates of a row are dependent
  assert abs(np.mean(eps**2) - noise.sigma**2) < 4 * se


def test_expinf_sample_needs_its_dimension_in_the_trailing_axes():
  with pytest.raises(InputError, match="needs the input dimension"):
    noise_lib.ExpInf(sigma=0.5).sample(jax.random.key(0), (4, 10))
  noise = noise_lib.ExpInf(sigma=0.5, dim=10)
  with pytest.raises(InputError, match="no trailing axes of it hold 10 values"):
    noise.sample(jax.random.key(1), (4, 3, 3))
  with pytest.raises(InputError, match="built for inputs of 10 values, not 12"):
    noise.bind(12)
  assert noise_lib.ExpInf(sigma=0.5).bind(10) == noise


# ---------------------------------------------------------------------------
# Radii: closed forms, written here independently


def _laplace_l1(p, lam):
  return scipy.stats.laplace(0, lam).ppf(p)  # the 1-D worst case is the quantile


def _uniform_l1(p, lam):
  return scipy.stats.uniform(-lam, 2 * lam).ppf(p)


def _uniform_linf(p, lam, d):
  return 2 * lam * (1 - np.power(1.5 - p, 1.0 / d))


def _expinf_l1(p, lam, d, k, j):
  g = scipy.special.gamma
  return 2 * lam * d / (d - 1) * g((d - j) / k) / g((d - j - 1) / k) * (p - 0.5)


def test_laplace_radii_equal_their_closed_forms():
  d = 784
  noise = noise_lib.Laplace(sigma=SIGMA)
  lam = SIGMA / math.sqrt(2)
  l1 = _laplace_l1(P_GRID, lam)
  np.testing.assert_allclose(noise.radius(P_GRID), l1, rtol=1e-12)
  np.testing.assert_allclose(noise.radius(P_GRID, "l1"), l1, rtol=1e-12)
  np.testing.assert_allclose(noise.radius(P_GRID, "l2", dim=d), l1 / math.sqrt(d), rtol=1e-12)
  np.testing.assert_allclose(noise.radius(P_GRID, "linf", dim=d), l1 / d, rtol=1e-12)
  assert noise.norm == "l1"


def test_uniform_radii_equal_their_closed_forms():
  d = 50
  noise = noise_lib.Uniform(sigma=SIGMA)
  lam = SIGMA * math.sqrt(3)
  l1, linf = _uniform_l1(P_GRID, lam), _uniform_linf(P_GRID, lam, d)
  # (SciPy's ppf, -lambda + 2 lambda p, cancels near p = 1/2: hence rtol 1e-7.)
  np.testing.assert_allclose(noise.radius(P_GRID), l1, rtol=1e-7)
  np.testing.assert_allclose(noise.radius(P_GRID, "linf", dim=d), linf, rtol=1e-7, atol=1e-16)
  # l2 balls fit in the l1 ball of radius r * sqrt(d) and in the linf ball of radius r.
  l2 = np.maximum(l1 / math.sqrt(d), linf)
  np.testing.assert_allclose(noise.radius(P_GRID, "l2", dim=d), l2, rtol=1e-7, atol=1e-16)
  # In a high dimension the direct linf radius is kept without cancellation.
  big = noise.radius(0.75, "linf", dim=3 * 224 * 224)
  assert big == pytest.approx(-2 * lam * math.log(0.75) / (3 * 224 * 224), rel=1e-4)


@pytest.mark.parametrize(("k", "j"), [(1, 0), (2, 0), (1, 2), (3, 1)])
def test_expinf_l1_radius_equals_the_closed_form(k, j):
  d, lam = 12, 0.3
  noise = noise_lib.ExpInf(lambda_=lam, k=k, j=j, dim=d)
  expected = _expinf_l1(P_GRID, lam, d, k, j)
  if j == 0:
    # A linf ball holds the l1 ball of its radius: in this low dimension the direct
    # linf radius wins for p very near 1.
    linf = [_differential_reference(p, d, k) for p in P_GRID] if k != 1 else None
    linf = lam * (np.log(0.5 / (1 - P_GRID)) if k == 1 else np.array(linf))
    assert np.sum(linf > expected) == (1 if k == 1 else 0)
    expected = np.maximum(expected, linf)
  np.testing.assert_allclose(noise.radius(P_GRID, "l1"), expected, rtol=1e-7)


def test_expinf_linf_radius_k1_is_the_log_formula():
  d, lam = 100, 0.2
  noise = noise_lib.ExpInf(lambda_=lam, k=1, j=0, dim=d)
  expected = lam * np.log(0.5 / (1 - P_GRID))
  # The direct linf radius beats the converted l1 one except very near 1/2.
  np.testing.assert_allclose(
    noise.radius(P_GRID, "linf"),
    np.maximum(expected, _expinf_l1(P_GRID, lam, d, 1, 0) / d),
    rtol=1e-7,
  )
  assert noise.radius(0.99, "linf") == pytest.approx(lam * math.log(50), rel=1e-12)


def _differential_reference(p, d, k):
  """Yang et al.'s differential method with SciPy's Gamma distributions (rs4a's form)."""
  a_in, a_out = d / k, (d + k - 1) / k
  const = k / 2 * scipy.special.gamma(a_out) / scipy.special.gamma(a_in)
  inner, outer = scipy.stats.gamma(a_in), scipy.stats.gamma(a_out)

  def phi(q):
    return const * (1 - outer.cdf(inner.ppf(1 - 2 * q)))

  return scipy.integrate.quad(lambda q: 1 / phi(q), 1 - p, 0.5, epsabs=0, epsrel=1e-10)[0]


def test_expinf_linf_radius_for_k_above_1_is_the_differential_method():
  d, k, lam = 20, 2.0, 0.4
  noise = noise_lib.ExpInf(lambda_=lam, k=k, j=0, dim=d)
  p = np.array([0.5001, 0.6, 0.75, 0.9, 0.99, 0.999])
  expected = lam * np.array([_differential_reference(q, d, k) for q in p])
  linf = noise.radius(p, "linf")
  converted = _expinf_l1(p, lam, d, k, 0) / d
  np.testing.assert_allclose(linf, np.maximum(expected, converted), rtol=1e-7)
  # Any order of the bounds gives the same radii (they are integrated piecewise, sorted).
  shuffled = p[[3, 0, 5, 1, 4, 2]]
  np.testing.assert_allclose(noise.radius(shuffled, "linf"), linf[[3, 0, 5, 1, 4, 2]], rtol=1e-12)
  # The quadrature's error estimate is taken off, so the radius never exceeds the integral.
  assert np.all(linf <= np.maximum(expected, converted) * (1 + 1e-9))


def test_differential_method_at_k1_reproduces_the_log_formula():
  p = np.array([0.55, 0.8, 0.95, 0.9999])
  got = noise_expinf._differential_linf_radius(p, 30, 1.0)
  np.testing.assert_allclose(got, np.log(0.5 / (1 - p)), rtol=1e-8)


def test_gaussian_radii_are_todays_l2_radii_exactly():
  noise = noise_lib.Gaussian(0.25)
  np.testing.assert_array_equal(noise.radius(P_GRID), 0.25 * scipy.stats.norm.ppf(P_GRID))
  np.testing.assert_array_equal(noise.radius(P_GRID, "l2", dim=784), noise.radius(P_GRID))
  # l1 balls lie inside the l2 ball of the same radius; linf ones need sqrt(d).
  np.testing.assert_array_equal(noise.radius(P_GRID, "l1", dim=784), noise.radius(P_GRID))
  np.testing.assert_allclose(noise.radius(P_GRID, "linf", dim=784), noise.radius(P_GRID) / 28)


def _all_noises(dim):
  return [
    noise_lib.Gaussian(sigma=SIGMA),
    noise_lib.Laplace(sigma=SIGMA),
    noise_lib.Uniform(sigma=SIGMA),
    noise_lib.ExpInf(sigma=SIGMA, k=1, j=0, dim=dim),
    noise_lib.ExpInf(sigma=SIGMA, k=2, j=0, dim=dim),
    noise_lib.ExpInf(sigma=SIGMA, k=1, j=2, dim=dim),
  ]


@pytest.mark.parametrize("norm", noise_lib.NORMS)
@pytest.mark.parametrize("index", range(6))
def test_radius_is_zero_up_to_one_half_and_increasing_above(norm, index):
  dim = 16
  noise = _all_noises(dim)[index]
  below = np.array([0.0, 0.2, 0.4999999, 0.5])
  np.testing.assert_array_equal(noise.radius(below, norm, dim=dim), 0.0)
  r = noise.radius(P_GRID, norm, dim=dim)
  assert r.shape == P_GRID.shape and np.all(np.isfinite(r)) and np.all(r > 0)
  assert np.all(np.diff(r) > 0)
  assert noise.radius(1.0, norm, dim=dim) >= r[-1]
  radii = noise.radii(P_GRID, dim=dim)
  assert set(radii) == set(noise_lib.NORMS)
  np.testing.assert_array_equal(radii[norm], r)


# ---------------------------------------------------------------------------
# One dimension: the Neyman-Pearson worst case by numerical integration


def _worst_case_radius(density, kinks, p):
  """The largest shift keeping the worst classifier's vote above 1/2, by quadrature.

  In one dimension the likelihood ratio ``q(z - delta) / q(z)`` of a log-concave
  density is non-decreasing in ``z``, so of the sets ``A`` with ``P_q[A] = p`` the
  half-line ``(-inf, t]`` has the least mass under the density shifted by ``delta``
  (Neyman-Pearson). The radius is the ``delta`` at which that mass falls to 1/2.
  ``kinks`` are the points where the density is not smooth (support edges included).
  """

  def mass(upper, shift=0.0):
    # Integrated piece by piece between the (shifted) kinks, so quad sees smooth pieces.
    edges = [e + shift for e in kinks if e + shift < upper]
    total, lower = 0.0, -np.inf
    for edge in [*edges, upper]:
      total += scipy.integrate.quad(lambda z: density(z - shift), lower, edge, epsabs=1e-14)[0]
      lower = edge
    return total

  t = scipy.optimize.brentq(lambda u: mass(u) - p, -50, 50, xtol=1e-14)
  return scipy.optimize.brentq(lambda s: mass(t, s) - 0.5, 0.0, 60.0, xtol=1e-14)


@pytest.mark.parametrize("name", ["laplace", "uniform", "gaussian"])
def test_one_dimensional_radius_is_the_neyman_pearson_worst_case(name):
  noise = IID[name](lambda_=0.8)
  density = _marginal(noise).pdf
  kinks = [-0.8, 0.8] if name == "uniform" else [0.0]
  for p in (0.55, 0.7, 0.9, 0.99):
    expected = _worst_case_radius(density, kinks, p)
    for norm in noise_lib.NORMS:  # all norms agree in one dimension
      assert noise.radius(p, norm, dim=1) == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_one_dimensional_expinf_is_a_generalised_gaussian():
  # In d = 1, ExpInf(k, 0) has density exp(-|x/lambda|^k) / (2 lambda Gamma(1 + 1/k)). For
  # k = 2 that is N(0, lambda^2 / 2), whose exact radius the differential method finds;
  # the l1 formula ((p - 1/2) over the vote's Lipschitz constant q(0)) is below it.
  lam, k = 0.6, 2.0
  noise = noise_lib.ExpInf(lambda_=lam, k=k, j=0, dim=1)
  q0 = 1 / (2 * lam * scipy.special.gamma(1 + 1 / k))
  gaussian = lam / math.sqrt(2) * scipy.stats.norm.ppf(0.8)
  for norm in noise_lib.NORMS:
    assert noise.radius(0.8, norm) == pytest.approx(gaussian, rel=1e-8)
  assert 0.3 / q0 < gaussian
  eps = np.asarray(noise.sample(jax.random.key(40), (20_000, 1)), np.float64).ravel()
  law = scipy.stats.gennorm(k, scale=lam)
  assert scipy.stats.kstest(eps, law.cdf).pvalue > 1e-3


# ---------------------------------------------------------------------------
# Specs


def test_parse_builds_each_family():
  assert noise_lib.parse("gaussian:0.25") == noise_lib.Gaussian(0.25)
  assert noise_lib.parse("Laplace:0.5") == noise_lib.Laplace(sigma=0.5)
  assert noise_lib.parse("uniform:sigma=0.5") == noise_lib.Uniform(sigma=0.5)
  assert noise_lib.parse("uniform:lambda=0.8") == noise_lib.Uniform(lambda_=0.8)
  expinf = noise_lib.parse("expinf:0.5:k=2:j=1", dim=784)
  assert expinf == noise_lib.ExpInf(sigma=0.5, k=2, j=1, dim=784)
  assert noise_lib.parse("expinf:0.5").k == 1.0 and noise_lib.parse("expinf:0.5").j == 0.0
  # The scale may come separately (a config's noise_sd) or as a default.
  assert noise_lib.parse("laplace", sigma=0.5) == noise_lib.Laplace(sigma=0.5)
  assert noise_lib.parse("laplace", default_sigma=0.5) == noise_lib.Laplace(sigma=0.5)
  assert noise_lib.parse("laplace:0.3", default_sigma=0.5) == noise_lib.Laplace(sigma=0.3)
  noise = noise_lib.Uniform(sigma=0.5)
  assert noise_lib.parse(noise) is noise


@pytest.mark.parametrize(
  "noise",
  [
    noise_lib.Gaussian(0.25),
    noise_lib.Laplace(sigma=0.5),
    noise_lib.Uniform(lambda_=0.8),
    noise_lib.ExpInf(sigma=0.5, k=2, j=1),
    noise_lib.ExpInf(lambda_=0.01, k=1.5, j=0),
  ],
)
def test_spec_reads_back_to_the_same_noise(noise):
  assert noise_lib.parse(noise.spec) == noise
  assert noise.spec.startswith(noise.name + ":")


@pytest.mark.parametrize(
  ("spec", "kwargs", "message"),
  [
    ("laplace:-1", {}, "sigma must be a finite number > 0, got -1.0"),
    ("cauchy:0.5", {}, "unknown noise 'cauchy'.*gaussian:0.25, laplace:0.5"),
    ("", {}, "a noise is a string such as"),
    ("gaussian", {}, "has no scale: write gaussian:0.5"),
    ("laplace:abc", {}, "sigma must be a number, got 'abc'"),
    ("uniform:0.5:lambda=0.3", {}, "gives both sigma and lambda"),
    ("gaussian:0.25:k=1", {}, "unknown setting 'k'; gaussian takes sigma, lambda"),
    ("expinf:0.5:2", {}, "'2' has no name"),
    ("expinf:0.5:k=0.5", {}, "expinf noise needs k >= 1"),
    ("expinf:0.5:j=-1", {}, "expinf noise needs j >= 0"),
    ("expinf:0.5:k=1e7", {}, "expinf noise needs k <= 1e\\+06"),
    ("gaussian:0.25:sigma=0.5", {}, "gives sigma twice; give each setting once"),
    ("expinf:0.5:k=1:k=2", {}, "gives k twice"),
    ("expinf:0.5:j=9", {"dim": 10}, "j=9 in dimension d=10 has no l1 radius; it needs j < d - 1"),
    ("expinf:0.5:j=1", {"dim": 1}, "it needs j = 0"),
    ("laplace:0.3", {"sigma": 0.5}, "sets its own scale, and sigma 0.5 is also given"),
    (3, {}, "a noise is a string such as"),
  ],
)
def test_bad_specs_are_one_line_errors(spec, kwargs, message):
  with pytest.raises(InputError, match=message) as error:
    noise_lib.parse(spec, **kwargs)
  assert "\n" not in str(error.value)


def test_radius_in_a_norm_that_needs_the_dimension_says_so():
  with pytest.raises(InputError, match="converting an l1 radius to l2 needs the input dimension"):
    noise_lib.Laplace(sigma=0.5).radius(0.9, "l2")
  with pytest.raises(InputError, match="to linf needs the input dimension"):
    noise_lib.Uniform(sigma=0.5).radius(0.9, "linf")
  # The l1 radius of uniform noise needs no dimension.
  assert noise_lib.Uniform(lambda_=1.0).radius(0.9) == pytest.approx(0.8, rel=1e-12)
  with pytest.raises(InputError, match="needs the input dimension; build it with dim="):
    noise_lib.ExpInf(sigma=0.5).radius(0.9)
  with pytest.raises(InputError, match="unknown norm 'l0'"):
    noise_lib.Laplace(sigma=0.5).radius(0.9, "l0")
  with pytest.raises(InputError, match="dim=0"):
    noise_lib.Laplace(sigma=0.5).radius(0.9, "l2", dim=0)


def test_convert_radius_follows_the_norm_inequalities():
  rng = np.random.default_rng(0)
  d = 20
  for source in noise_lib.NORMS:
    for target in noise_lib.NORMS:
      r = noise_lib.convert_radius(1.0, source, target, d)
      # Every point of the target ball of radius r lies in the source unit ball.
      v = rng.normal(size=(2_000, d)) * rng.exponential(size=(2_000, 1))
      order = {"l1": 1, "l2": 2, "linf": np.inf}
      v *= r / np.linalg.norm(v, ord=order[target], axis=1, keepdims=True)
      assert np.all(np.linalg.norm(v, ord=order[source], axis=1) <= 1 + 1e-9)
      # ... and the bound is tight: a point of the target sphere reaches the source sphere.
      if order[target] > order[source]:
        corner = np.full(d, r) if target == "linf" else np.full(d, r / math.sqrt(d))
        assert np.linalg.norm(corner, ord=order[source]) == pytest.approx(1.0)


def test_family_name_reads_only_the_family():
  assert noise_lib.family_name("Laplace:0.5") == "laplace"
  assert noise_lib.family_name(" expinf:lambda=0.1:k=2") == "expinf"
  assert noise_lib.family_name("gaussian") == "gaussian"
