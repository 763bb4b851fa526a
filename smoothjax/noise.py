"""Noise families for randomized smoothing: samplers and certified radii in l1, l2 and linf.

Every family implements :class:`Noise`: ``sample(key, shape)`` draws the noise added to an
input (on the device, in JAX) and ``radius(p_lower, norm)`` turns a lower confidence bound
on the top-class probability into a certified radius (on the host, in NumPy/SciPy).
Instances are frozen dataclasses, hence hashable, so a noise can be a static argument of
``jax.jit``.

The families of Yang, Duan, Hu, Salman, Razenshteyn & Li 2020, "Randomized Smoothing of
All Shapes and Sizes" (their code: ``tonyduan/rs4a``), with ``lambda`` the natural scale,
``d`` the input dimension and ``p`` the bound on the top-class probability, each family
and the radii it certifies directly:

* **Gaussian**: ``lambda * N(0, I)``, sigma = lambda. l2: ``lambda * Phi^-1(p)``
  (Cohen, Rosenfeld & Kolter 2019).
* **Laplace**: iid ``Laplace(0, lambda)``, sigma = ``sqrt(2) lambda``. l1:
  ``-lambda * ln(2 (1 - p))`` (Teng, Lee & Yuan 2020).
* **Uniform**: iid ``U[-lambda, lambda]``, sigma = ``lambda / sqrt(3)``. l1:
  ``2 lambda (p - 1/2)``; linf: ``2 lambda (1 - (3/2 - p)^(1/d))``.
* **ExpInf(k, j)**: density ∝ ``||x||_inf^-j exp(-(||x||_inf / lambda)^k)``, sigma
  depends on d. l1: ``2 lambda d/(d-1) Gamma((d-j)/k) / Gamma((d-j-1)/k) (p - 1/2)``;
  linf (j = 0): ``lambda ln(1 / (2 (1 - p)))`` for k = 1, the differential method
  otherwise.

Every noise reports a radius in every norm of :data:`NORMS`: a radius ``r`` in norm ``a``
certifies ``r / d^(1/a - 1/b)`` in a norm ``b`` with ``b > a`` (the ``b`` ball of that
radius lies in the ``a`` ball of radius ``r``) and ``r`` itself in a norm ``b < a``; the
reported radius is the largest of those given by the norms the family certifies directly.
Norms that need the conversion, or families whose radius depends on it, need ``dim``.

A noise's scale is given either as ``sigma``, the per-coordinate standard deviation (the
quantity papers compare families at, and a training config's ``noise_sd``), or as the
natural scale ``lambda_``. :func:`parse` builds one from a command-line or config string
such as ``gaussian:0.25``, ``laplace:0.5``, ``uniform:lambda=0.8`` or
``expinf:0.5:k=1:j=0`` (the number is sigma).

Example::

  noise = Laplace(sigma=0.5)
  eps = noise.sample(jax.random.key(0), (32, 32, 3))
  noise.radius(0.9)                  # l1: -lambda * ln(0.2), lambda = 0.5 / sqrt(2)
  noise.radius(0.9, "l2", dim=3072)  # the l1 radius / sqrt(3072)
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
import scipy.integrate
import scipy.special
import scipy.stats

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
    noise = self if dim is None else self.bind(dim)
    dim = getattr(noise, "dim", None) if dim is None else dim  # a bound expinf knows it
    p = np.asarray(p_lower, dtype=np.float64)
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
      raise InputError("p_lower must lie in [0, 1]; pass a probability bound")
    above = p > 0.5
    # Evaluate only where a radius exists, so p <= 1/2 never reaches ppf/log.
    safe = np.where(above, p, 0.75)
    # Without dim, the norms whose radius or conversion would need it are left out (none
    # of them beats the rest then: uniform's linf radius, read in l1, is below its l1
    # one); if that leaves nothing, computing them says what is missing.
    sources = [
      s
      for s in self.norms
      if dim is not None or (s not in self._dim_norms and _EXPONENT[norm] <= _EXPONENT[s])
    ] or self.norms
    best = None
    with np.errstate(divide="ignore"):  # p = 1 certifies an infinite radius
      for source in sources:
        r = convert_radius(noise._direct_radius(safe, source, dim), source, norm, dim)
        best = r if best is None else np.maximum(best, r)
    out = np.where(above, best, 0.0)
    return float(out) if out.ndim == 0 else out

  def radii(self, p_lower, *, dim: int | None = None) -> dict[str, float | np.ndarray]:
    """Radii in every norm of :data:`NORMS`, keyed by norm name (``dim`` is needed)."""
    return {norm: self.radius(p_lower, norm, dim=dim) for norm in NORMS}


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


@dataclasses.dataclass(frozen=True)
class ExpInf(Noise):
  """Noise of density ∝ ``||x||_inf^-j exp(-(||x||_inf / lambda)^k)``; certifies l1 and linf.

  Yang et al. 2020's l-infinity family. A sample is ``lambda * R * u``: the radius
  ``R = Gamma((d - j) / k)^(1/k)`` (in polar coordinates the density of ``||x||_inf``
  is ∝ ``r^(d-1-j) exp(-(r/lambda)^k)``) times ``u`` uniform on the surface of the linf
  unit sphere (a face drawn uniformly, that coordinate ±1, the others uniform in
  [-1, 1]). One sample covers one input of ``dim`` values: ``sample(key, shape)`` draws
  independent samples over the leading axes of ``shape`` that come before the trailing
  axes holding ``dim`` values.

  Radii: l1 ``2 lambda d/(d-1) Gamma((d-j)/k) / Gamma((d-j-1)/k) (p - 1/2)`` for any
  (k, j); linf for ``j = 0``: ``lambda ln(1 / (2 (1 - p)))`` when ``k = 1``, otherwise
  Yang et al.'s differential method ``lambda * integral_{1-p}^{1/2} dq / Phi(q)`` with
  ``Phi(q) = k/2 Gamma((d+k-1)/k) / Gamma(d/k) * P[Gamma((d+k-1)/k) > F^-1(1 - 2q)]``,
  ``F`` the CDF of ``Gamma(d/k)`` (their ``ExpInf.Phi_linf``), integrated numerically
  per value (rather than interpolated from a table) with the integration error taken
  off. For ``j > 0`` the linf radius is the l1 one converted.

  The dimension fixes the relation between ``sigma`` and ``lambda_``: build it with
  ``dim``, or without and call :meth:`bind` once the input shape is known.

  Attributes:
    sigma: per-coordinate standard deviation (given, or computed once ``dim`` is known).
    lambda_: the natural scale (given, or computed once ``dim`` is known).
    k: the exponent of the tail, >= 1.
    j: the power of ``||x||_inf`` in the density, >= 0 and < d - 1 (0 for d = 1).
    dim: the input dimension d, or None until :meth:`bind`.
  """

  sigma: float | None = None
  lambda_: float | None = None
  k: float = 1.0
  j: float = 0.0
  dim: int | None = None

  name: ClassVar[str] = "expinf"
  norms: ClassVar[tuple[str, ...]] = ("l1", "linf")
  _params: ClassVar[tuple[str, ...]] = ("k", "j")

  def __post_init__(self):
    for name, value, low in (("k", self.k, 1.0), ("j", self.j, 0.0)):
      if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < low
      ):
        raise InputError(
          f"expinf noise needs {name} >= {low:g} (a finite number), got {value!r}; "
          "e.g. expinf:0.5:k=1:j=0"
        )
      object.__setattr__(self, name, float(value))
    if self.dim is not None:
      dim = _check_dim(self.dim, "expinf noise")
      object.__setattr__(self, "dim", dim)
      limit = "j = 0" if dim == 1 else f"j < d - 1 = {dim - 1}"
      if (dim == 1 and self.j != 0) or (dim > 1 and self.j >= dim - 1):
        raise InputError(
          f"expinf noise with j={_fmt(self.j)} in dimension d={dim} has no l1 radius; "
          f"it needs {limit}"
        )
    _set_scales(self, None if self.dim is None else self._ratio(self.dim))

  def _ratio(self, dim: int) -> float:
    """``sigma / lambda``: E||u||_2^2 = 1 + (d - 1)/3 and E R^2 = G((d+2-j)/k) / G((d-j)/k)."""
    k, j = self.k, self.j
    radius_sq = math.exp(math.lgamma((dim + 2 - j) / k) - math.lgamma((dim - j) / k))
    return math.sqrt((1.0 + (dim - 1) / 3.0) / dim * radius_sq)

  @property
  def std(self) -> float:
    if self.sigma is None:
      raise InputError("expinf noise given by lambda_ has a standard deviation once bound to dim")
    return self.sigma

  def bind(self, dim: int) -> ExpInf:
    dim = _check_dim(dim, "expinf noise")
    if self.dim == dim:
      return self
    if self.dim is not None:
      raise InputError(
        f"this expinf noise was built for inputs of {self.dim} values, not {dim}; build another"
      )
    return ExpInf(sigma=self.sigma, lambda_=self.lambda_, k=self.k, j=self.j, dim=dim)

  def _bound_dim(self, what: str) -> int:
    if self.dim is None:
      raise InputError(
        f"{what} of expinf noise needs the input dimension; build it with dim= or call bind(dim)"
      )
    return self.dim

  def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    dim = self._bound_dim("sampling")
    shape = tuple(int(s) for s in shape)
    split = next((i for i in range(len(shape) + 1) if math.prod(shape[i:]) == dim), None)
    if split is None:
      raise InputError(
        f"expinf noise for inputs of {dim} values cannot fill shape {shape}: no trailing "
        f"axes of it hold {dim} values"
      )
    dtype, wide = _sample_dtype(self, self.sigma, dtype)
    count = math.prod(shape[:split])
    key_radius, key_face, key_sign, key_rest = jax.random.split(key, 4)
    radius = jax.random.gamma(key_radius, (dim - self.j) / self.k, (count, 1), wide)
    radius = radius ** (1.0 / self.k)
    face = jax.random.randint(key_face, (count, 1), 0, dim)
    sign = jax.random.rademacher(key_sign, (count, 1), wide)
    rest = jax.random.uniform(key_rest, (count, dim), wide, -1.0, 1.0)
    direction = jnp.where(jnp.arange(dim)[None, :] == face, sign, rest)
    return (self.lambda_ * radius * direction).reshape(shape).astype(dtype)

  def _direct_radius(self, p_lower, norm, dim):
    dim = self._bound_dim(f"the {norm} radius")
    k, j = self.k, self.j
    if norm == "l1":
      if dim == 1:
        factor = math.gamma(1.0 + 1.0 / k)  # rs4a's d = 1 case (j = 0)
      else:
        log_ratio = math.lgamma((dim - j) / k) - math.lgamma((dim - j - 1) / k)
        factor = dim / (dim - 1) * math.exp(log_ratio)
      return 2.0 * self.lambda_ * factor * (p_lower - 0.5)
    if j != 0:
      # No direct linf radius: the l1 one converted (the caller takes the max anyway).
      return convert_radius(self._direct_radius(p_lower, "l1", dim), "l1", "linf", dim)
    if k == 1:
      return -self.lambda_ * np.log1p(1.0 - 2.0 * p_lower)
    return self.lambda_ * _differential_linf_radius(np.asarray(p_lower), dim, k)


def _differential_linf_radius(p_lower: np.ndarray, dim: int, k: float) -> np.ndarray:
  """ExpInf(k, j=0)'s linf radius at lambda = 1: ``integral_{1-p}^{1/2} dq / Phi(q)``.

  The values are sorted and integrated piecewise between neighbours, so an array of
  many bounds costs one pass over [1 - max p, 1/2]. Each piece's error estimate is
  subtracted, so the radius is never overstated by the quadrature.
  """
  a_in, a_out = dim / k, (dim + k - 1) / k
  const = k / 2.0 * math.exp(math.lgamma(a_out) - math.lgamma(a_in))
  inner, outer = scipy.stats.gamma(a_in), scipy.stats.gamma(a_out)

  def inverse_phi(q):
    # F^-1(1 - 2q) as isf(2q), accurate for small q.
    return 1.0 / (const * outer.sf(inner.isf(2.0 * q)))

  flat = p_lower.ravel()
  order = np.argsort(flat)
  out = np.empty_like(flat)
  total, upper = 0.0, 0.5
  for index in order:
    lower = 1.0 - flat[index]
    if lower <= 0.0:
      # 1 / Phi(q) grows like 1 / (q sqrt(log(1/q))) as q -> 0: the integral diverges.
      out[index] = math.inf
      continue
    if lower < upper:
      value, error = scipy.integrate.quad(
        inverse_phi, lower, upper, epsabs=0.0, epsrel=1e-10, limit=200
      )
      total += value - error
      upper = lower
    out[index] = max(total, 0.0)
  return out.reshape(p_lower.shape)


# Family name -> class, as the spec strings of parse() name them.
FAMILIES: dict[str, type[Noise]] = {
  "gaussian": Gaussian,
  "laplace": Laplace,
  "uniform": Uniform,
  "expinf": ExpInf,
}
_EXAMPLES = "gaussian:0.25, laplace:0.5, uniform:0.5, expinf:0.5:k=1:j=0"


def _spec_number(spec: str, name: str, text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise InputError(f"noise {spec!r}: {name} must be a number, got {text!r}") from None


def parse(
  spec, *, sigma: float | None = None, default_sigma: float | None = None, dim: int | None = None
) -> Noise:
  """The noise a command-line or config string names, e.g. ``laplace:0.5``.

  The form is ``family[:SIGMA][:lambda=LAMBDA][:key=value ...]``: the family (one of
  :data:`FAMILIES`), its scale as sigma (the per-coordinate standard deviation; ``0.5``
  or ``sigma=0.5``) or as its natural scale (``lambda=0.35``), and the family's settings
  (``k`` and ``j`` for expinf). ``Noise.spec`` gives the string back.

  Args:
    spec: the string, or a :class:`Noise` (returned, bound to ``dim`` if given).
    sigma: the scale (a config's ``noise_sd``); if ``spec`` gives one too, the two
      must agree.
    default_sigma: the scale when neither ``spec`` nor ``sigma`` gives one.
    dim: the input dimension, for families that need it (expinf).

  Returns:
    A :class:`Noise`.

  Raises:
    InputError: on anything else, naming what is wrong.
  """
  if isinstance(spec, Noise):
    return spec if dim is None else spec.bind(dim)
  if not isinstance(spec, str) or not spec.strip():
    raise InputError(f"a noise is a string such as {_EXAMPLES}; got {spec!r}")
  name, *parts = [part.strip() for part in spec.strip().split(":")]
  family = FAMILIES.get(name.lower())
  if family is None:
    raise InputError(f"unknown noise {name!r} in {spec!r}; choose one of: {_EXAMPLES}")
  scale: dict[str, float] = {}
  params: dict[str, float] = {}
  for position, part in enumerate(parts):
    key, has_key, value = part.partition("=")
    key = key.strip().lower()
    if not has_key:
      if position != 0:
        raise InputError(
          f"noise {spec!r}: {part!r} has no name; only the first setting (sigma) may be bare"
        )
      key, value = "sigma", part
    if key in ("sigma", "lambda"):
      scale[key] = _spec_number(spec, key, value)
    elif key in family._params:
      params[key] = _spec_number(spec, key, value)
    else:
      known = ", ".join(("sigma", "lambda", *family._params))
      raise InputError(f"noise {spec!r}: unknown setting {key!r}; {family.name} takes {known}")
  if len(scale) > 1:
    raise InputError(f"noise {spec!r} gives both sigma and lambda; give one scale")
  if sigma is not None:
    if scale and scale.get("sigma") != sigma:
      raise InputError(
        f"noise {spec!r} sets its own scale, and sigma {sigma:g} is also given; give it once"
      )
    scale = {"sigma": sigma}
  if not scale and default_sigma is not None:
    scale = {"sigma": default_sigma}
  if not scale:
    raise InputError(
      f"noise {spec!r} has no scale: write {family.name}:0.5 (sigma, the per-coordinate "
      f"standard deviation) or {family.name}:lambda=0.5"
    )
  kwargs = {"lambda_" if key == "lambda" else key: value for key, value in scale.items()}
  noise = family(**kwargs, **params)
  return noise if dim is None else noise.bind(dim)


def from_name(name: str, scale: float) -> Noise:
  """The family called ``name`` at standard deviation ``scale``: ``parse(name, sigma=scale)``."""
  return parse(name, sigma=scale)
