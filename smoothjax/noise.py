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


def _check_scale(name: str, value) -> float:
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not math.isfinite(value)
    or value <= 0
  ):
    raise InputError(f"{name} must be a finite number > 0, got {value!r}; e.g. {name}=0.25")
  return float(value)


@dataclasses.dataclass(frozen=True)
class Gaussian(Noise):
  """Isotropic Gaussian noise ``N(0, sigma^2 I)``; certifies l2 (Cohen et al. 2019).

  Attributes:
    sigma: standard deviation of every coordinate, in [0, 1] pixel units.
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
    return (self.sigma * jax.random.normal(key, shape, dtype)).astype(dtype)

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
