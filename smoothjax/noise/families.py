"""Noise of independent coordinates: Gaussian (l2), Laplace (l1), uniform (l1, linf)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from smoothjax.noise.base import Noise, _check_dim, _sample_dtype, _set_scales


@dataclasses.dataclass(frozen=True)
class Gaussian(Noise):
  """Isotropic Gaussian noise ``N(0, sigma^2 I)``; certifies l2 (Cohen et al. 2019).

  Attributes:
    sigma: standard deviation of every coordinate, in [0, 1] pixel units; within
      [:data:`MIN_SCALE`, :data:`MAX_SCALE`] (about [2e-31, 3.3e35]), where float32
      samples are exact enough and finite.
    lambda_: the same number (Gaussian's natural scale is its standard deviation).
  """

  sigma: float | None = None
  lambda_: float | None = None

  name: ClassVar[str] = "gaussian"
  norms: ClassVar[tuple[str, ...]] = ("l2",)

  def __post_init__(self):
    _set_scales(self, 1.0)

  def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    dtype, wide = _sample_dtype(self, self.sigma, dtype)
    return (self.sigma * jax.random.normal(key, shape, wide)).astype(dtype)

  def _direct_radius(self, p_lower, norm, dim):
    del norm, dim  # l2 only, dimension-free
    return self.sigma * scipy.stats.norm.ppf(p_lower)


@dataclasses.dataclass(frozen=True)
class Laplace(Noise):
  """Independent Laplace noise of scale ``lambda_`` per coordinate; certifies l1.

  The l1 radius ``-lambda * ln(2 (1 - p))`` is Teng, Lee & Yuan 2020 ("l1 Adversarial
  Robustness Certificates: a Randomized Smoothing Approach"), as in Yang et al. 2020.

  Attributes:
    sigma: per-coordinate standard deviation, ``sqrt(2) * lambda_``.
    lambda_: the Laplace scale (density ``exp(-|x| / lambda) / (2 lambda)``).
  """

  sigma: float | None = None
  lambda_: float | None = None

  name: ClassVar[str] = "laplace"
  norms: ClassVar[tuple[str, ...]] = ("l1",)

  def __post_init__(self):
    _set_scales(self, math.sqrt(2.0))

  def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    dtype, wide = _sample_dtype(self, self.sigma, dtype)
    return (self.lambda_ * jax.random.laplace(key, shape, wide)).astype(dtype)

  def _direct_radius(self, p_lower, norm, dim):
    del norm, dim  # l1, dimension-free
    return -self.lambda_ * np.log1p(1.0 - 2.0 * p_lower)


@dataclasses.dataclass(frozen=True)
class Uniform(Noise):
  """Independent uniform noise on ``[-lambda_, lambda_]`` per coordinate; certifies l1, linf.

  Radii of Yang et al. 2020: l1 ``2 lambda (p - 1/2)``, linf ``2 lambda (1 - (3/2 -
  p)^(1/d))`` (the second needs ``dim``).

  Attributes:
    sigma: per-coordinate standard deviation, ``lambda_ / sqrt(3)``.
    lambda_: half the width of the interval.
  """

  sigma: float | None = None
  lambda_: float | None = None

  name: ClassVar[str] = "uniform"
  norms: ClassVar[tuple[str, ...]] = ("l1", "linf")
  _dim_norms: ClassVar[tuple[str, ...]] = ("linf",)

  def __post_init__(self):
    _set_scales(self, 1.0 / math.sqrt(3.0))

  def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    dtype, wide = _sample_dtype(self, self.sigma, dtype)
    return (self.lambda_ * jax.random.uniform(key, shape, wide, -1.0, 1.0)).astype(dtype)

  def _direct_radius(self, p_lower, norm, dim):
    if norm == "l1":
      return 2.0 * self.lambda_ * (p_lower - 0.5)
    dim = _check_dim(dim, "the linf radius of uniform noise")
    # 1 - (3/2 - p)^(1/d), without cancellation for large d.
    return -2.0 * self.lambda_ * np.expm1(np.log(1.5 - p_lower) / dim)
