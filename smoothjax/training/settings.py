"""What every training mode shares: its config section checked, numbers in bounds, the noise bound.

Each mode's settings live in their own config section over the papers' defaults
(:func:`section`); :func:`number` checks one of them, naming it by section and key in a
one-line :class:`~smoothjax.errors.InputError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from smoothjax.errors import InputError


def for_inputs(noise, images):
  """``noise`` bound to the dimension of one of ``images`` (a batch), as expinf needs."""
  return noise.bind(math.prod(images.shape[1:]))


def number(settings, name, *, low=None, high=None, integer=False, low_open=False):
  """``settings[name]`` as an int or float within the bounds; InputError otherwise."""
  value = settings[name]
  kind = "an integer" if integer else "a number"
  ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(
    value, bool
  )
  ok = ok and math.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value <= high
  if not ok:
    bounds = []
    if low is not None:
      bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
      bounds.append(f"<= {high}")
    raise InputError(
      f"{settings['_section']}.{name} must be {kind} {' and '.join(bounds)}, got {value!r}"
    )
  return int(value) if integer else float(value)


def section(config: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> dict:
  """The mode's config section over its defaults; unknown keys are refused."""
  given = config.get(name) or {}
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise InputError(
      f"unknown setting(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
      f"{name} takes {', '.join(sorted(defaults))}"
    )
  return {**defaults, **given, "_section": name}
