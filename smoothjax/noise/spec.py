"""Noises from strings: ``gaussian:0.25``, ``laplace:0.5``, ``expinf:0.5:k=1:j=0``."""

from __future__ import annotations

from smoothjax.errors import InputError
from smoothjax.noise.base import Noise
from smoothjax.noise.expinf import ExpInf
from smoothjax.noise.families import Gaussian, Laplace, Uniform

# Family name -> class, as the spec strings of parse() name them.
FAMILIES: dict[str, type[Noise]] = {
  "gaussian": Gaussian,
  "laplace": Laplace,
  "uniform": Uniform,
  "expinf": ExpInf,
}
_EXAMPLES = "gaussian:0.25, laplace:0.5, uniform:0.5, expinf:0.5:k=1:j=0"


def family_name(spec) -> str:
  """The family a spec names, in lower case: ``laplace`` for ``Laplace:0.5``.

  Only the name is read (the rest is not checked): for labels and file names of
  settings already written. :func:`parse` checks the whole string.
  """
  return str(spec).strip().split(":")[0].strip().lower()


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
  family = FAMILIES.get(family_name(spec))
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
    if key in scale or key in params:
      raise InputError(f"noise {spec!r} gives {key} twice; give each setting once")
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
