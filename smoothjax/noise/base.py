"""The noise interface: :class:`Noise`, the norms, radius conversion and scale checks."""

from __future__ import annotations

import abc
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax.errors import InputError

# The norms every noise reports a radius in, with their exponents.
NORMS = ("l1", "l2", "linf")
_EXPONENT = {"l1": 1.0, "l2": 2.0, "linf": math.inf}


def convert_radius(radius, source: str, target: str, dim: int | None):
  """A radius certified in norm ``source``, as a radius certified in norm ``target``.

  ``||v||_b <= ||v||_a <= d^(1/a - 1/b) ||v||_b`` for ``a < b``: the ``target`` ball of
  radius ``r / d^(1/a - 1/b)`` lies in the ``source`` ball of radius ``r`` when the target
  norm is larger in exponent, and the ball of radius ``r`` itself when it is smaller.

  Args:
    radius: a radius or an array of radii in norm ``source``.
    source: one of :data:`NORMS`.
    target: one of :data:`NORMS`.
    dim: the input dimension; needed when ``target`` has the larger exponent.

  Returns:
    The radius in norm ``target``.
  """
  a, b = _EXPONENT[_check_norm(source)], _EXPONENT[_check_norm(target)]
  if b <= a:
    return radius
  dim = _check_dim(dim, f"converting an {source} radius to {target}")
  return radius / float(dim) ** (1.0 / a - 1.0 / b)


def _check_norm(norm) -> str:
  if norm not in NORMS:
    raise InputError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
  return norm


def _check_dim(dim, why: str) -> int:
  if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
    raise InputError(
      f"{why} needs the input dimension d (the number of values in one input), got "
      f"dim={dim!r}; pass dim=math.prod(input_shape)"
    )
  return int(dim)


class Noise(abc.ABC):
  """A noise distribution with the radii it certifies.

  Subclasses are frozen dataclasses (hashable, usable as static jit arguments) with the
  fields ``sigma`` and ``lambda_`` and define ``name``, ``norms``, :meth:`sample` and
  :meth:`_direct_radius`.
  """

  name: ClassVar[str]
  # The norms this family certifies directly, the first one being its primary norm (the
  # ``radius`` column of result files). Every norm of NORMS gets a radius by conversion.
  norms: ClassVar[tuple[str, ...]]
  # Settings beyond the scale, in the order the spec string gives them.
  _params: ClassVar[tuple[str, ...]] = ()
  # Norms whose direct radius depends on the input dimension.
  _dim_norms: ClassVar[tuple[str, ...]] = ()
  # The input dimension, for families bound to one (ExpInf's field); None otherwise.
  dim: int | None = None

  sigma: float | None
  lambda_: float | None

  @property
  def norm(self) -> str:
    """The primary norm: the one this family is for."""
    return self.norms[0]

  @property
  def std(self) -> float:
    """Per-coordinate standard deviation, to compare families at equal noise."""
    return self.sigma

  @property
  def spec(self) -> str:
    """The string :func:`parse` turns back into this noise, e.g. ``laplace:0.5``."""
    scale = _fmt(self.sigma) if self.sigma is not None else f"lambda={_fmt(self.lambda_)}"
    params = "".join(f":{p}={_fmt(getattr(self, p))}" for p in self._params)
    return f"{self.name}:{scale}{params}"

  def bind(self, dim: int) -> Noise:
    """This noise for inputs of ``dim`` values (families that depend on it need it)."""
    _check_dim(dim, f"{self.name} noise")
    return self

  @abc.abstractmethod
  def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Draws one noise array of ``shape`` from ``key``.

    Samples are drawn in float32 (float64 if requested) and rounded to ``dtype``, so
    that a bfloat16 or float16 sample is the rounded float32 one. A scale whose samples
    would overflow ``dtype`` (above :func:`max_scale` of it: 64 for float16) raises
    InputError.

    Args:
      key: a typed PRNG key (``jax.random.key``), used once.
      shape: the shape of the input (or batch of inputs) the noise is added to.
      dtype: floating dtype of the result.

    Returns:
      An array of ``shape`` and ``dtype``.
    """

  @abc.abstractmethod
  def _direct_radius(self, p_lower: np.ndarray, norm: str, dim: int | None) -> np.ndarray:
    """The radius in ``norm`` (one of :attr:`norms`) for ``p_lower > 1/2``."""

  def radius(self, p_lower, norm: str | None = None, *, dim: int | None = None):
    """Certified radius for a lower bound ``p_lower`` on the top-class probability.

    Host-side and vectorised. The radius is 0 where ``p_lower <= 1/2``: nothing is
    certified there, and callers report the abstain prediction -1. In a norm the family
    does not certify directly the radius is converted (see :func:`convert_radius`),
    taking the best of the norms it does certify.

    Args:
      p_lower: scalar or array of lower confidence bounds in [0, 1].
      norm: one of :data:`NORMS`; default the family's primary norm.
      dim: the input dimension, needed where the radius or the conversion depend on it.

    Returns:
      A float for scalar ``p_lower``, else a float64 array of its shape.
    """
    norm = self.norm if norm is None else _check_norm(norm)
    return self._radii(p_lower, (norm,), dim)[norm]

  def radii(self, p_lower, *, dim: int | None = None) -> dict[str, float | np.ndarray]:
    """Radii in every norm of :data:`NORMS`, keyed by norm name (``dim`` is needed).

    Each direct radius is computed once for all three norms (ExpInf's numerical linf
    radius is a quadrature per value).
    """
    return self._radii(p_lower, NORMS, dim)

  def _radii(self, p_lower, targets, dim):
    noise = self if dim is None else self.bind(dim)
    dim = noise.dim if dim is None else dim  # a bound expinf knows it
    p = np.asarray(p_lower, dtype=np.float64)
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
      raise InputError("p_lower must lie in [0, 1]; pass a probability bound")
    above = p > 0.5
    # Evaluate only where a radius exists, so p <= 1/2 never reaches ppf/log.
    safe = np.where(above, p, 0.75)
    direct = {}
    out = {}
    with np.errstate(divide="ignore"):  # p = 1 certifies an infinite radius
      for norm in targets:
        # Without dim, the norms whose radius or conversion would need it are left out
        # (none of them beats the rest then: uniform's linf radius, read in l1, is below
        # its l1 one); if that leaves nothing, computing them says what is missing.
        sources = [
          s
          for s in self.norms
          if dim is not None or (s not in self._dim_norms and _EXPONENT[norm] <= _EXPONENT[s])
        ] or self.norms
        best = None
        for source in sources:
          if source not in direct:
            direct[source] = noise._direct_radius(safe, source, dim)
          r = convert_radius(direct[source], source, norm, dim)
          best = r if best is None else np.maximum(best, r)
        radius = np.where(above, best, 0.0)
        out[norm] = float(radius) if radius.ndim == 0 else radius
    return out


def _fmt(value: float) -> str:
  """A number as the shortest string that reads back to it (``0.25``, ``1``)."""
  value = float(value)
  return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


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


def _set_scales(noise: Noise, ratio: float | None) -> None:
  """Checks the scale given (``sigma`` or ``lambda_``) and fills in the other one.

  ``ratio`` is ``sigma / lambda``; None when it is not known yet (ExpInf before its
  dimension is), in which case only the given one is kept.
  """
  family = type(noise).__name__
  sigma, lam = noise.sigma, noise.lambda_
  both = sigma is not None and lam is not None
  if both and ratio is not None:
    # A copy of a built noise (dataclasses.replace) carries both; they must agree.
    sigma, lam = _check_scale("sigma", sigma), _check_scale("lambda_", lam)
    if math.isclose(sigma, lam * ratio, rel_tol=1e-12):
      object.__setattr__(noise, "sigma", sigma)
      object.__setattr__(noise, "lambda_", lam)
      return
  if both or (sigma is None and lam is None):
    what = "both" if both else "neither"
    raise InputError(
      f"{family} noise takes its scale as sigma (the per-coordinate standard deviation) or "
      f"as lambda_ (its natural scale), got {what}; e.g. {family}(sigma=0.5)"
    )
  if sigma is not None:
    sigma = _check_scale("sigma", sigma)
    lam = None if ratio is None else sigma / ratio
  else:
    lam = _check_scale("lambda_", lam)
    sigma = None if ratio is None else lam * ratio
  for name, value in (("sigma", sigma), ("lambda_", lam)):
    if value is not None:
      # Stored as Python floats so equal settings hash equally as jit statics.
      object.__setattr__(noise, name, _check_scale(name, value))
