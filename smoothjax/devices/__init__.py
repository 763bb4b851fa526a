"""Devices and processes: meshes and shardings, numerics, step sizes, the processes of a job.

* :mod:`~smoothjax.devices.parallel`: one ``data`` axis over every device, sharded
  batches, this process's share of the inputs, and the start of multi-process JAX.
* :mod:`~smoothjax.devices.processes`: meetings, agreement on settings, stop notices
  and a lost process under ``jax.distributed``.
* :mod:`~smoothjax.devices.numerics`: matmul precision and deterministic GPU operations.
* :mod:`~smoothjax.devices.sizing`: how many noisy copies one step evaluates, from
  the devices' memory.

Imports only JAX and the leaf modules (``errors``, ``locks``, ``stopping``).
"""

from smoothjax.devices import numerics, parallel, processes, sizing

__all__ = [
  "numerics",
  "parallel",
  "processes",
  "sizing",
]
