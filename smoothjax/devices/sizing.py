"""Step sizes from the memory of the devices: how many noisy copies one step evaluates.

On an accelerator the certification step should be as large as memory allows: the
forward pass of a small network is memory-bound, and a step of a few thousand noisy
copies leaves most of a GPU idle. :func:`auto_batch` sizes it from what XLA says one
more example costs (the compiled forward pass's memory analysis at two probe sizes,
so the parameters and constants cancel) and from the free memory of the devices. On
CPUs, whose "memory" is the host's and where large steps gain nothing, it returns the
fixed default.

The step size never changes a certificate (CERTIFY is batch-invariant, tested), so a
run may be resumed with another one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from smoothjax.errors import InputError

CPU_BATCH = 1000
"""The step size on CPUs (and wherever the free memory is unknown)."""
MAX_BATCH_PER_DEVICE = 2**16
"""The largest step per device :func:`auto_batch` picks: beyond it nothing is gained."""
ACCELERATOR_INPUTS = 8
"""Inputs certified together per step on accelerators: less padding in the last step."""


def free_memory(device) -> int | None:
  """Bytes free on ``device`` for new arrays; None where the runtime does not say (CPUs)."""
  if device.platform == "cpu":
    return None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 -- a runtime without memory statistics.
    return None
  if not stats or "bytes_limit" not in stats:
    return None
  return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def bytes_per_example(
  logits_fn: Callable, input_shape: Sequence[int], *, probe: int = 32, dtype=jnp.float32
) -> int:
  """The device memory one more example adds to a forward pass of ``logits_fn``.

  From XLA's memory analysis of the compiled forward pass at ``probe`` and
  ``2 * probe`` examples (temporaries, arguments and outputs): the difference is what
  ``probe`` examples cost, whatever the parameters take. Plus the float32 noise and
  noisy copy of each example, which the certification step holds beside the forward
  pass.
  """
  if probe < 1:
    raise InputError(f"probe must be >= 1, got {probe}")

  def total(size: int) -> int:
    spec = jax.ShapeDtypeStruct((size, *input_shape), dtype)
    analysis = jax.jit(lambda x: logits_fn(x)).lower(spec).compile().memory_analysis()
    if analysis is None:
      raise InputError("this backend gives no memory analysis; pass the step size (--batch)")
    return (
      analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    )

  forward = -(-(total(2 * probe) - total(probe)) // probe)
  # The certification step also holds each example's float32 noise and noisy copy.
  return max(1, forward + 2 * 4 * math.prod(input_shape))


def choose_batch(
  per_example: int,
  free: int,
  *,
  devices: int = 1,
  fraction: float = 0.5,
  cap: int = MAX_BATCH_PER_DEVICE,
) -> int:
  """The step size (over all ``devices``) that fits in ``fraction`` of ``free`` bytes per device.

  Per device a power of two, at least 1 and at most ``cap``; the step is that times
  ``devices``. The rest of the memory holds the noise, the votes and XLA's slack.
  """
  if per_example < 1 or free < 0 or devices < 1 or not 0 < fraction <= 1 or cap < 1:
    raise InputError(
      f"choose_batch needs per_example >= 1, free >= 0, devices >= 1, fraction in (0, 1] "
      f"and cap >= 1, got {per_example}, {free}, {devices}, {fraction}, {cap}"
    )
  fits = int(free * fraction) // per_example
  per_device = 1
  while per_device * 2 <= min(fits, cap):
    per_device *= 2
  return per_device * devices


def auto_batch(
  logits_fn: Callable,
  input_shape: Sequence[int],
  devices: Sequence | None = None,
  *,
  fraction: float = 0.5,
) -> int:
  """The certification step size for ``logits_fn`` on ``devices`` (default: this process's).

  :data:`CPU_BATCH` on CPUs and wherever a device's free memory is unknown; otherwise
  :func:`choose_batch` of :func:`bytes_per_example` (one compilation at two sizes) and
  the least free memory among ``devices``.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  free = [free_memory(d) for d in devices]
  if not devices or any(f is None for f in free):
    return CPU_BATCH
  per_example = bytes_per_example(logits_fn, input_shape)
  return choose_batch(per_example, min(free), devices=len(devices), fraction=fraction)


def auto_inputs_per_step(devices: Sequence | None = None) -> int:
  """Inputs certified together per step: 1 on CPUs, :data:`ACCELERATOR_INPUTS` elsewhere."""
  devices = list(jax.local_devices() if devices is None else devices)
  return 1 if all(d.platform == "cpu" for d in devices) else ACCELERATOR_INPUTS


__all__ = [
  "ACCELERATOR_INPUTS",
  "CPU_BATCH",
  "MAX_BATCH_PER_DEVICE",
  "auto_batch",
  "auto_inputs_per_step",
  "bytes_per_example",
  "choose_batch",
  "free_memory",
]
