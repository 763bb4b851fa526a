"""Numerics of a run: matrix-product precision and deterministic GPU operations.

By default JAX runs float32 convolutions and matrix products on GPUs in TF32 (about
three decimal digits) and lets some GPU reductions (scatter-adds, the weight gradients
of some convolutions) depend on thread timing. Both are fast, and both break
reproducibility:

* at the default precision, a ResNet-20's logits for one image differ by about 1e-3
  between a batch of 64 and a batch of 1 on an H100, so a certificate can depend on
  ``--batch`` or on the device count in near-ties (``precision="highest"``: about 1e-6);
* a resumed GPU training run is not bit-identical to an uninterrupted one unless GPU
  operations are deterministic (``deterministic=True``).

:func:`configure` sets both for the whole process; programs call it from their
``--precision`` and ``--deterministic`` flags. Library functions that take a precision
(training's config ``precision``, ``attack.Options.precision``) compute inside
:func:`precision_scope` and leave the process's setting alone. On CPUs both settings
change nothing: float32 is exact there and XLA's CPU operations are deterministic.
Their cost on GPUs is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import os

import jax

from smoothjax.errors import InputError

PRECISIONS = ("default", "high", "highest")
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


def _backends_started() -> bool:
  from jax._src import xla_bridge

  return bool(xla_bridge.backends_are_initialized())


def check_precision(precision: str) -> str:
  """``precision`` if it is one of :data:`PRECISIONS`; InputError otherwise."""
  if precision not in PRECISIONS:
    raise InputError(
      f"unknown matmul precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
    )
  return precision


def deterministic_enabled() -> bool:
  """Whether this process's XLA flags ask for deterministic GPU operations."""
  return DETERMINISTIC_FLAG in os.environ.get("XLA_FLAGS", "").split()


def precision_scope(precision: str):
  """A context in which JAX computes at ``precision``; ``"default"`` leaves JAX's as it is."""
  if check_precision(precision) == "default":
    return contextlib.nullcontext()
  return jax.default_matmul_precision(precision)


def require_deterministic(deterministic: bool) -> None:
  """Asks for deterministic GPU operations if ``deterministic`` (see :func:`configure`)."""
  if not deterministic or deterministic_enabled():
    return
  if _backends_started():
    if jax.default_backend() == "cpu":
      return  # XLA's CPU operations are deterministic: nothing to change.
    raise InputError(
      "deterministic GPU operations must be chosen before JAX starts: call "
      "numerics.configure(deterministic=True) before the first computation, or set "
      f"XLA_FLAGS={DETERMINISTIC_FLAG}"
    )
  flags = os.environ.get("XLA_FLAGS", "").split()
  flags = [f for f in flags if not f.startswith("--xla_gpu_deterministic_ops")]
  os.environ["XLA_FLAGS"] = " ".join([*flags, DETERMINISTIC_FLAG])


def configure(*, precision: str = "default", deterministic: bool = False) -> None:
  """Sets the matmul precision and, if asked, deterministic GPU operations.

  Args:
    precision: ``"default"`` (the backend's fastest: TF32 on recent NVIDIA GPUs,
      bfloat16 passes on TPUs), ``"high"`` or ``"highest"`` (full float32).
    deterministic: deterministic GPU operations (XLA's ``xla_gpu_deterministic_ops``).
      XLA reads its flags when JAX starts its backends, so this must be called before
      the first computation; once they are started it is an error on GPUs unless the
      flag was already set (e.g. in ``XLA_FLAGS``), and nothing to do on CPUs.

  Raises:
    InputError: an unknown precision, or deterministic operations asked for after
      JAX's GPU backend started without them.
  """
  check_precision(precision)
  jax.config.update("jax_default_matmul_precision", None if precision == "default" else precision)
  require_deterministic(deterministic)


__all__ = [
  "DETERMINISTIC_FLAG",
  "PRECISIONS",
  "check_precision",
  "configure",
  "deterministic_enabled",
  "precision_scope",
  "require_deterministic",
]
