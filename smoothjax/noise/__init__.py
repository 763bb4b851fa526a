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

from smoothjax.noise.base import (
  MAX_SCALE,
  MIN_SCALE,
  NORMS,
  Noise,
  convert_radius,
  max_scale,
)
from smoothjax.noise.expinf import ExpInf
from smoothjax.noise.families import Gaussian, Laplace, Uniform
from smoothjax.noise.spec import FAMILIES, family_name, from_name, parse

__all__ = [
  "FAMILIES",
  "MAX_SCALE",
  "MIN_SCALE",
  "NORMS",
  "ExpInf",
  "Gaussian",
  "Laplace",
  "Noise",
  "Uniform",
  "convert_radius",
  "family_name",
  "from_name",
  "max_scale",
  "parse",
]
