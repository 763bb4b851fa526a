"""Noise families for randomized smoothing: a sampler and a certified radius.

Every family implements :class:`Noise`: ``sample(key, shape)`` draws the noise
added to an input (on the device, in JAX) and ``radius(p_lower, norm)`` turns a
lower confidence bound on the top-class probability into a certified radius
(on the host, in NumPy/SciPy). Instances are frozen dataclasses, hence
hashable, so a noise can be a static argument of ``jax.jit``.

Gaussian noise certifies the l2 norm (Cohen, Rosenfeld & Kolter 2019,
"Certified Adversarial Robustness via Randomized Smoothing", Theorem 1):
``R = sigma * Phi^-1(p_lower)``. Other families follow Yang et al. 2020,
"Randomized Smoothing of All Shapes and Sizes".

Example::

  noise = Gaussian(sigma=0.25)
  eps = noise.sample(jax.random.key(0), (32, 32, 3))
  noise.radius(0.9)  # 0.25 * Phi^-1(0.9) = 0.320...
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from smoothjax.errors import InputError


class Noise(abc.ABC):
  """A noise distribution with the radii it certifies.

  Subclasses are frozen dataclasses (hashable, usable as static jit arguments)
  and define ``name``, ``norms``, ``std``, :meth:`sample` and :meth:`_radius`.
  """

  name: ClassVar[str]
  # The norms this family certifies, the first one being the primary norm.
  norms: ClassVar[tuple[str, ...]]

  @property
  @abc.abstractmethod
  def std(self) -> float:
    """Per-coordinate standard deviation, to compare families at equal noise."""

  @abc.abstractmethod
  def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Draws one noise array of ``shape`` from ``key``.

    Samples are drawn in float32 (float64 if requested) and rounded to ``dtype``, so
    that a bfloat16 or float16 sample is the rounded float32 one. A scale whose samples
    would overflow ``dtype`` (above :func:`max_scale` of it: 64 for float16) raises
    InputError.

    Args:
      key: a typed PRNG key (``jax.random.key``), used once.
      shape: the shape of the input the noise is added to.
      dtype: floating dtype of the result.

    Returns:
      An array of ``shape`` and ``dtype``.
    """

  @abc.abstractmethod
  def _radius(self, p_lower: np.ndarray, norm: str, dim: int | None) -> np.ndarray:
    """The radius for ``p_lower > 1/2`` (callers mask the rest)."""

  def radius(self, p_lower, norm: str | None = None, *, dim: int | None = None):
    """Certified radius for a lower bound ``p_lower`` on the top-class probability.

    Host-side and vectorised. The radius is 0 where ``p_lower <= 1/2``: nothing
    is certified there, and callers report the abstain prediction -1.

    Args:
      p_lower: scalar or array of lower confidence bounds in [0, 1].
      norm: one of :attr:`norms`; default the first (primary) one.
      dim: the input dimension, needed by families whose radius depends on it.

    Returns:
      A float for scalar ``p_lower``, else a float64 array of its shape.
    """
    norm = self.norms[0] if norm is None else norm
    if norm not in self.norms:
      raise InputError(
        f"{type(self).__name__} noise certifies {', '.join(self.norms)}, not {norm!r}; "
        "choose one of those norms"
      )
    p = np.asarray(p_lower, dtype=np.float64)
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
      raise InputError("p_lower must lie in [0, 1]; pass a probability bound")
    above = p > 0.5
    # Evaluate only where a radius exists, so p <= 1/2 never reaches ppf/log.
    safe = np.where(above, p, 0.75)
    out = np.where(above, self._radius(safe, norm, dim), 0.0)
    return float(out) if out.ndim == 0 else out

  def radii(self, p_lower, *, dim: int | None = None) -> dict[str, float | np.ndarray]:
    """Radii in every norm this noise certifies, keyed by norm name."""
    return {norm: self.radius(p_lower, norm, dim=dim) for norm in self.norms}


# Noise scales are bounded so that the samples, in the dtype they are computed in, are
# finite and still follow the stated distribution:
# * above: a standard normal draw of jax.random.normal never exceeds 5.42 in float32 (it is
#   sqrt(2) * erfinv(u) with |u| <= 1 - 2**-24) nor 8.3 in float64, so a scale up to
#   finfo(dtype).max / 2**10 keeps every sample below max / 120: finite, and still finite
#   once added to any input of magnitude up to max / 2. Beyond it, float32 turns samples
#   into inf (Gaussian(1e39)) and a "certificate" would claim a radius of 1e39.
# * below: XLA flushes subnormal numbers to zero on CPUs, so with sigma near float32's
#   smallest normal number (1.2e-38) most samples would be exactly 0. From 2**-102
#   (= tiny * 2**24, about 2e-31) on, every sample with |z| >= 2**-24 (all but a 1e-7
#   fraction) is a normal float32 number.
_HEADROOM = 2.0**10
# bfloat16 (for speed on accelerators) has float32's exponent range but a slightly smaller max.
MAX_SCALE = float(jnp.finfo(jnp.bfloat16).max) / _HEADROOM
MIN_SCALE = float(np.finfo(np.float32).tiny) * 2.0**24


def max_scale(dtype=jnp.float32) -> float:
  """The largest noise scale whose samples in ``dtype`` are finite (see MAX_SCALE).

  Args:
    dtype: a floating dtype; float32 and bfloat16 share float32's range, float16 is
      much narrower (max 65504).

  Returns:
    ``finfo(dtype).max / 2**10``: 3.3e35 for float32 and bfloat16, 64 for float16.
  """
  return float(jnp.finfo(dtype).max) / _HEADROOM


def _check_scale(name: str, value) -> float:
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not math.isfinite(value)
    or value <= 0
  ):
    raise InputError(f"{name} must be a finite number > 0, got {value!r}; e.g. {name}=0.25")
  if not MIN_SCALE <= value <= MAX_SCALE:
    raise InputError(
      f"{name}={float(value):g} is outside [{MIN_SCALE:.3g}, {MAX_SCALE:.3g}], where float32 "
      f"noise samples are neither flushed to zero nor overflow to inf (and so follow the "
      f"stated distribution); choose {name} in that range, e.g. {name}=0.25"
    )
  return float(value)


def _sample_dtype(noise: Noise, scale: float, dtype):
  """Checks the requested sample dtype; returns ``(dtype, wide)``, ``wide`` the draw dtype.

  Draws are made in float32 (or float64) and rounded to ``dtype``: jax.random.normal in
  bfloat16 or float16 has only 128 or about 2,000 distinct values and no tail beyond 2.9
  or 3.5 standard deviations, which is not the stated distribution.
  """
  try:
    dtype = jnp.dtype(dtype)
  except TypeError:
    raise InputError(f"dtype must be a floating dtype, got {dtype!r}") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise InputError(f"noise samples need a floating dtype, got {dtype}")
  if scale > max_scale(dtype):
    raise InputError(
      f"{type(noise).__name__} noise of scale {scale:g} overflows {dtype} samples to inf; "
      f"use a scale <= {max_scale(dtype):.3g} for {dtype}, or a wider dtype"
    )
  return dtype, jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Gaussian(Noise):
  """Isotropic Gaussian noise ``N(0, sigma^2 I)``; certifies l2 (Cohen et al. 2019).

  Attributes:
    sigma: standard deviation of every coordinate, in [0, 1] pixel units; within
      [:data:`MIN_SCALE`, :data:`MAX_SCALE`] (about [2e-31, 3.3e35]), where float32
      samples are exact enough and finite.
  """

  sigma: float

  name: ClassVar[str] = "gaussian"
  norms: ClassVar[tuple[str, ...]] = ("l2",)

  def __post_init__(self):
    # Stored as a Python float so equal settings hash equally as jit statics.
    object.__setattr__(self, "sigma", _check_scale("sigma", self.sigma))

  @property
  def std(self) -> float:
    return self.sigma

  def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    dtype, wide = _sample_dtype(self, self.sigma, dtype)
    return (self.sigma * jax.random.normal(key, shape, wide)).astype(dtype)

  def _radius(self, p_lower: np.ndarray, norm: str, dim: int | None) -> np.ndarray:
    del norm, dim  # l2 only, dimension-free
    return self.sigma * scipy.stats.norm.ppf(p_lower)


_FAMILIES: dict[str, type[Noise]] = {"gaussian": Gaussian}


def from_name(name: str, scale: float) -> Noise:
  """The noise family called ``name`` at scale ``scale`` (sigma for Gaussian).

  Args:
    name: family name, one of ``"gaussian"``.
    scale: the family's scale parameter (``lambda`` in Yang et al. 2020).

  Returns:
    A :class:`Noise` instance.
  """
  family = _FAMILIES.get(str(name).lower())
  if family is None:
    raise InputError(f"unknown noise {name!r}; choose one of: {', '.join(sorted(_FAMILIES))}")
  return family(scale)
