"""Tests for the Clopper-Pearson bounds and the binomial test against SciPy and theory."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from smoothjax.errors import InputError
from smoothjax.smoothing import stats


def _grid():
  """(k, n) pairs over several n, including k = 0 and k = n."""
  ks, ns = [], []
  for n in (1, 2, 5, 37, 100, 1000, 100_000):
    k = np.unique(np.concatenate([np.linspace(0, n, 41).round(), [0, 1, n - 1, n]]))
    k = k[(k >= 0) & (k <= n)].astype(np.int64)
    ks.append(k)
    ns.append(np.full_like(k, n))
  return np.concatenate(ks), np.concatenate(ns)


K, N = _grid()
ALPHAS = (0.001, 0.01, 0.05, 0.3)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_lower_matches_scipy_beta(alpha):
  lower = stats.clopper_pearson_lower(K, N, alpha)
  inner = K > 0
  expected = scipy.stats.beta.ppf(alpha, K[inner], N[inner] - K[inner] + 1)
  np.testing.assert_allclose(lower[inner], expected, rtol=1e-12)
  np.testing.assert_array_equal(lower[~inner], 0.0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_upper_matches_scipy_beta(alpha):
  upper = stats.clopper_pearson_upper(K, N, alpha)
  inner = K < N
  expected = scipy.stats.beta.ppf(1 - alpha, K[inner] + 1, N[inner] - K[inner])
  np.testing.assert_allclose(upper[inner], expected, rtol=1e-12)
  np.testing.assert_array_equal(upper[~inner], 1.0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_closed_forms_at_the_ends(alpha):
  n = np.array([1, 2, 10, 100, 100_000])
  np.testing.assert_allclose(stats.clopper_pearson_lower(n, n, alpha), alpha ** (1 / n), rtol=1e-10)
  np.testing.assert_allclose(
    stats.clopper_pearson_upper(0 * n, n, alpha), 1 - alpha ** (1 / n), rtol=1e-10
  )


@pytest.mark.parametrize("alpha", ALPHAS)
def test_bounds_solve_the_one_sided_defining_equation(alpha):
  # The one-sided bound at alpha is the p where the tail beyond k has mass alpha
  # exactly; a two-sided bound (alpha / 2) would give alpha / 2 here.
  n = 200
  k = np.arange(1, n)
  lower = stats.clopper_pearson_lower(k, n, alpha)
  upper = stats.clopper_pearson_upper(k, n, alpha)
  np.testing.assert_allclose(scipy.stats.binom.sf(k - 1, n, lower), alpha, rtol=1e-6)
  np.testing.assert_allclose(scipy.stats.binom.cdf(k, n, upper), alpha, rtol=1e-6)
  assert np.all(lower < k / n) and np.all(upper > k / n)
  assert np.all(np.diff(lower) > 0) and np.all(np.diff(upper) > 0)


def test_lower_equals_two_sided_interval_at_twice_alpha():
  # Cohen et al. call statsmodels' two-sided 'beta' interval at 2 * alpha; its
  # lower end is beta.ppf((2 * alpha) / 2, k, n - k + 1).
  alpha = 0.001
  k, n = np.array([1, 50, 99_000, 100_000]), 100_000
  lo_two_sided = scipy.stats.beta.ppf((2 * alpha) / 2, k, n - k + 1)
  np.testing.assert_allclose(stats.clopper_pearson_lower(k, n, alpha), lo_two_sided, rtol=1e-12)


def test_scalars_give_floats_and_arrays_keep_shape():
  assert isinstance(stats.clopper_pearson_lower(5, 10, 0.05), float)
  assert isinstance(stats.clopper_pearson_upper(np.int32(5), 10, 0.05), float)
  assert isinstance(stats.binom_pvalue(3, 4), float)
  k = np.arange(12).reshape(3, 4)
  assert stats.clopper_pearson_lower(k, 11, 0.05).shape == (3, 4)
  assert stats.binom_pvalue(k, 11 - k).shape == (3, 4)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001, 100_000])
def test_binom_pvalue_matches_scipy_binomtest(n):
  n_a = np.unique(np.linspace(0, n, 60).round().astype(np.int64))
  expected = [scipy.stats.binomtest(int(a), n, 0.5).pvalue for a in n_a]
  np.testing.assert_allclose(stats.binom_pvalue(n_a, n - n_a), expected, rtol=1e-9, atol=1e-300)


def test_binom_pvalue_edge_cases():
  assert stats.binom_pvalue(0, 0) == 1.0
  assert stats.binom_pvalue(50, 50) == 1.0
  assert stats.binom_pvalue(10, 0) == pytest.approx(2 * 0.5**10)
  assert stats.binom_pvalue(3, 7) == stats.binom_pvalue(7, 3)


@pytest.mark.parametrize("n", [100, 1000])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99, 0.999])
def test_lower_bound_coverage_by_simulation(p, n):
  alpha, trials = 0.05, 20_000
  rng = np.random.default_rng(1000 * n + int(1000 * p))
  k = rng.binomial(n, p, size=trials)
  miss_rate = np.mean(stats.clopper_pearson_lower(k, n, alpha) > p)
  # The exact miss probability, summed over every outcome.
  support = np.arange(n + 1)
  misses = scipy.stats.beta.ppf(alpha, np.maximum(support, 1), n - np.maximum(support, 1) + 1) > p
  exact = scipy.stats.binom.pmf(support, n, p)[misses & (support > 0)].sum()
  se = np.sqrt(max(exact * (1 - exact), 0) / trials)
  assert exact <= alpha
  assert miss_rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
  assert abs(miss_rate - exact) <= 4 * se + 1e-12


@pytest.mark.parametrize("n", [100, 1000])
def test_lower_bound_is_not_far_from_exact_level(n):
  # Just below the bound of an attainable k, P[lower > p] is P[K >= k] ~ alpha:
  # the bound is tight there, so a test of coverage is not vacuous.
  alpha, trials = 0.05, 20_000
  p = stats.clopper_pearson_lower(int(0.9 * n), n, alpha) - 1e-9
  rng = np.random.default_rng(n)
  k = rng.binomial(n, p, size=trials)
  miss_rate = np.mean(stats.clopper_pearson_lower(k, n, alpha) > p)
  se = np.sqrt(alpha * (1 - alpha) / trials)
  assert abs(miss_rate - alpha) <= 4 * se


def test_upper_bound_coverage_by_simulation():
  alpha, n, p, trials = 0.05, 500, 0.3, 20_000
  k = np.random.default_rng(7).binomial(n, p, size=trials)
  miss_rate = np.mean(stats.clopper_pearson_upper(k, n, alpha) < p)
  assert 0 < miss_rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), float("inf"), True, "0.1", None])
def test_check_alpha_rejects(alpha):
  with pytest.raises(InputError, match="alpha"):
    stats.check_alpha(alpha)


def test_check_alpha_and_count_accept():
  assert stats.check_alpha(0.001) == 0.001
  assert stats.check_alpha(np.float32(0.5)) == 0.5
  assert stats.check_count("n", 5) == 5
  assert stats.check_count("n", np.int64(7)) == 7


@pytest.mark.parametrize("n", [0, -3, 2.5, 3.0, True, "10", None])
def test_check_count_rejects(n):
  with pytest.raises(InputError, match="n0 must be an integer >= 1"):
    stats.check_count("n0", n)


@pytest.mark.parametrize("k, n", [(-1, 10), (11, 10), (0, 0), (2.5, 10), (np.array([1, 20]), 10)])
def test_bounds_reject_bad_counts(k, n):
  with pytest.raises(InputError):
    stats.clopper_pearson_lower(k, n, 0.05)
  with pytest.raises(InputError):
    stats.clopper_pearson_upper(k, n, 0.05)


def test_binom_pvalue_rejects_bad_counts():
  with pytest.raises(InputError):
    stats.binom_pvalue(-1, 3)
  with pytest.raises(InputError):
    stats.binom_pvalue(1.5, 3)
