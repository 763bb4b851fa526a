"""Confidence bounds and tests for vote counts (host side, NumPy/SciPy).

CERTIFY (Cohen, Rosenfeld & Kolter 2019, Algorithm 1) needs the *one-sided*
Clopper-Pearson (1934) lower bound at level ``alpha``: with probability at
least ``1 - alpha`` over ``k ~ Binomial(n, p)``, ``clopper_pearson_lower(k, n,
alpha) <= p``. It equals the lower end of the two-sided interval at level
``2 * alpha`` (what Cohen et al.'s code requests from statsmodels); using
``alpha / 2`` is over-conservative, and the two-sided interval at ``alpha``
computed with ``2 * alpha`` would break the guarantee.

Sequential CERTIFY (:mod:`smoothjax.smoothing.sequential`) looks at its votes at the sample
sizes of a schedule fixed in advance (:func:`look_schedule`) and bounds ``pA`` at look
``j`` with the Clopper-Pearson bound at level ``alpha / J`` for ``J`` looks: by the union
bound the ``J`` bounds hold together with probability at least ``1 - alpha``, so the
bound at whichever look it stops at, chosen by any rule from the votes seen, holds too.

PREDICT (Algorithm 2) uses the two-sided binomial test of ``n_a`` successes in
``n_a + n_b`` trials at ``p = 1/2``.

All functions are vectorised: they take scalars or arrays and return a float
for scalar input, else an array.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.stats

from smoothjax.errors import InputError


def check_alpha(alpha, name: str = "alpha") -> float:
  """Validates a significance level: a number with ``0 < alpha < 1``.

  Args:
    alpha: the failure probability allowed to a bound or test.
    name: the setting's name, used in the error message.

  Returns:
    ``alpha`` as a float.
  """
  if (
    isinstance(alpha, bool)
    or not isinstance(alpha, numbers.Real)
    or not math.isfinite(alpha)
    or not 0 < alpha < 1
  ):
    raise InputError(f"{name} must be a number in (0, 1), got {alpha!r}; e.g. {name}=0.001")
  return float(alpha)


def check_nonnegative(name: str, value) -> float:
  """Validates a setting that is a finite real number >= 0; returns it as a float.

  Args:
    name: the setting's name, used in the error message.
    value: the value to check.
  """
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not math.isfinite(value)
    or value < 0
  ):
    raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
  return float(value)


def check_count(name: str, n) -> int:
  """Validates a sample count or batch size: an integer >= 1.

  Args:
    name: the setting's name, used in the error message.
    n: the value to check.

  Returns:
    ``n`` as a Python int.
  """
  if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
    raise InputError(f"{name} must be an integer >= 1, got {n!r}")
  return int(n)


def look_schedule(n_max, *, first: int = 100, growth: float = 1.25) -> tuple[int, ...]:
  """The sample sizes at which sequential CERTIFY looks at its votes.

  ``first``, then each size ``growth`` times the last (rounded up), the last one being
  ``n_max``; a size within 10% of ``n_max`` merges into it. The schedule depends on the
  settings alone, never on the votes, which is what lets a union bound over its looks
  hold at any stopping time (module docstring).

  Args:
    n_max: the largest number of samples, the last look.
    first: the first look (at most ``n_max``).
    growth: the ratio of consecutive looks, > 1.

  Returns:
    Increasing sample sizes ending at ``n_max``.
  """
  n_max = check_count("n_max", n_max)
  first = check_count("first", first)
  if (
    isinstance(growth, bool)
    or not isinstance(growth, numbers.Real)
    or not math.isfinite(growth)
    or not growth > 1
  ):
    raise InputError(f"growth must be a number > 1, got {growth!r}; e.g. growth=1.5")
  sizes = []
  size = min(first, n_max)
  while size < n_max / 1.1:
    sizes.append(size)
    size = max(size + 1, math.ceil(size * growth))
  return (*sizes, n_max)


def _counts(k, n):
  """Checks successes ``k`` out of ``n`` trials; returns int64 arrays."""
  k = np.asarray(k)
  n = np.asarray(n)
  for name, v in (("k", k), ("n", n)):
    if not (np.issubdtype(v.dtype, np.integer) or np.all(np.mod(v, 1) == 0)):
      raise InputError(f"{name} must hold integer counts, got {v!r}")
  k = k.astype(np.int64)
  n = n.astype(np.int64)
  if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
    raise InputError("counts must satisfy 0 <= k <= n and n >= 1; check the vote counts")
  return k, n


def _out(x):
  x = np.asarray(x, dtype=np.float64)
  return float(x) if x.ndim == 0 else x


def clopper_pearson_lower(k, n, alpha):
  """One-sided Clopper-Pearson lower confidence bound on a binomial proportion.

  ``beta.ppf(alpha, k, n - k + 1)``, and 0 when ``k == 0``; it satisfies
  ``P[bound > p] <= alpha`` for every true ``p``.

  Args:
    k: number of successes (scalar or array).
    n: number of trials (scalar or array, broadcast with ``k``).
    alpha: significance level in (0, 1).

  Returns:
    The lower bound(s), a float or float64 array.
  """
  alpha = check_alpha(alpha)
  k, n = _counts(k, n)
  safe_k = np.maximum(k, 1)  # beta.ppf is undefined at a = 0
  lower = scipy.stats.beta.ppf(alpha, safe_k, n - safe_k + 1)
  return _out(np.where(k == 0, 0.0, lower))


def clopper_pearson_upper(k, n, alpha):
  """One-sided Clopper-Pearson upper confidence bound on a binomial proportion.

  ``beta.ppf(1 - alpha, k + 1, n - k)``, and 1 when ``k == n``.

  Args:
    k: number of successes (scalar or array).
    n: number of trials (scalar or array, broadcast with ``k``).
    alpha: significance level in (0, 1).

  Returns:
    The upper bound(s), a float or float64 array.
  """
  alpha = check_alpha(alpha)
  k, n = _counts(k, n)
  safe_k = np.minimum(k, n - 1)  # beta.ppf is undefined at b = 0
  upper = scipy.stats.beta.ppf(1 - alpha, safe_k + 1, n - safe_k)
  return _out(np.where(k == n, 1.0, upper))


def binom_pvalue(n_a, n_b):
  """Two-sided binomial test p-value of ``n_a`` successes in ``n_a + n_b`` trials at p=1/2.

  Equal to ``scipy.stats.binomtest(n_a, n_a + n_b, 0.5).pvalue``: at p = 1/2 the
  distribution is symmetric, so the outcomes at most as likely as ``n_a`` are
  the two tails beyond ``min(n_a, n_b)``. It is 1 when there are no trials.

  Args:
    n_a: count of the top class (scalar or array).
    n_b: count of the runner-up class (scalar or array).

  Returns:
    The p-value(s), a float or float64 array.
  """
  n_a = np.asarray(n_a)
  n_b = np.asarray(n_b)
  for name, v in (("n_a", n_a), ("n_b", n_b)):
    if not (np.issubdtype(v.dtype, np.integer) or np.all(np.mod(v, 1) == 0)) or np.any(v < 0):
      raise InputError(f"{name} must hold non-negative integer counts, got {v!r}")
  n_a = n_a.astype(np.int64)
  n_b = n_b.astype(np.int64)
  total = n_a + n_b
  tail = scipy.stats.binom.cdf(np.minimum(n_a, n_b), np.maximum(total, 1), 0.5)
  return _out(np.where(total == 0, 1.0, np.minimum(1.0, 2.0 * tail)))
