"""Device meshes and shardings: one `data` axis over every device.

Parameters are replicated; batches (training) and noise samples
(certification) are split along their leading axis. The same code runs on one
CPU, on 8 fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``),
on GPUs and TPUs, and on several hosts after :func:`initialize_distributed`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Starts multi-host JAX when the environment asks for it.

  On a cluster (SLURM, TPU pods, or ``JAX_COORDINATOR_ADDRESS`` set) this calls
  ``jax.distributed.initialize()``, which must run before any other JAX call.
  On a single host it does nothing.
  """
  if (
    os.environ.get("JAX_COORDINATOR_ADDRESS")
    or os.environ.get("SLURM_NTASKS", "1") != "1"
    or os.environ.get("SMOOTHJAX_DISTRIBUTED") == "1"
  ):
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """A one-dimensional mesh with axis ``data`` over ``devices`` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the ``data`` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def shard_batch(tree, mesh: Mesh):
  """Places a global host batch on the mesh, split along its leading axis.

  Every process passes the same global batch (the data order is a function of the
  seed and epoch only); each keeps the rows of its own devices. The leading
  dimension must be a multiple of the number of devices.
  """
  n = mesh.devices.size
  sharding = data_sharding(mesh)
  procs, proc = jax.process_count(), jax.process_index()

  def put(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ValueError(
        f"batch dimension {x.shape[0]} is not a multiple of the {n} devices; "
        "choose a batch size divisible by the device count"
      )
    local = x.shape[0] // procs
    rows = x[proc * local : (proc + 1) * local] if procs > 1 else x
    return jax.make_array_from_process_local_data(sharding, rows, x.shape)

  return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
