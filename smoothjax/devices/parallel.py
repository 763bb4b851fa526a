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

from smoothjax import stopping
from smoothjax.devices import processes
from smoothjax.errors import InputError

DATA_AXIS = "data"


# What jax.distributed.initialize is given: JAX reads the coordinator's address from the
# environment itself, but not the process count and index.
_ENV_ARGS = (
  ("JAX_COORDINATOR_ADDRESS", "coordinator_address"),
  ("JAX_NUM_PROCESSES", "num_processes"),
  ("JAX_PROCESS_ID", "process_id"),
)


def distributed_requested() -> bool:
  """Whether the environment asks for multi-process JAX (see :func:`initialize_distributed`)."""
  env = os.environ
  return bool(
    env.get("SMOOTHJAX_DISTRIBUTED") == "1"
    or env.get("JAX_COORDINATOR_ADDRESS")
    or env.get("SLURM_NTASKS", "1") != "1"
  )


def _distributed_args() -> dict:
  args = {}
  for name, arg in _ENV_ARGS:
    value = os.environ.get(name, "").strip()
    if not value:
      continue
    if arg == "coordinator_address":
      if ":" not in value:
        raise InputError(f"{name}={value!r} must be HOST:PORT, e.g. 10.0.0.1:1234")
      args[arg] = value
      continue
    try:
      args[arg] = int(value)
    except ValueError:
      raise InputError(f"{name}={value!r} must be an integer") from None
  num, index = args.get("num_processes"), args.get("process_id")
  if num is not None and num < 1:
    raise InputError(f"JAX_NUM_PROCESSES={num} must be >= 1")
  if (num is None) != (index is None) and "coordinator_address" in args:
    raise InputError(
      "set JAX_NUM_PROCESSES and JAX_PROCESS_ID together (or neither, to let JAX detect "
      "SLURM or a TPU pod)"
    )
  if num is not None and index is not None and not 0 <= index < num:
    raise InputError(f"JAX_PROCESS_ID={index} must lie in [0, JAX_NUM_PROCESSES={num})")
  return args


def initialize_distributed(
  *, shutdown_timeout_seconds: int | None = None, take_sigterm: bool = True
) -> bool:
  """Starts multi-process JAX when the environment asks for it; returns whether it did.

  The environment asks with ``SMOOTHJAX_DISTRIBUTED=1``, ``JAX_COORDINATOR_ADDRESS``
  or a SLURM job of several tasks. The process count and index come from
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set (with
  ``JAX_COORDINATOR_ADDRESS=HOST:PORT``, the address of process 0), else from JAX's
  own detection of SLURM, Open MPI and TPU pods. This must run before any other
  JAX call. On CPU, collectives between processes go through gloo.

  Then the process joins its job (:func:`smoothjax.devices.processes.join`): processes meet
  and compare settings through JAX's coordination service, a process that stops
  leaves a notice that stops the others, and a process that dies
  (``SMOOTHJAX_HEARTBEAT_TIMEOUT`` seconds without heartbeats, default 100) ends every
  other one with one ``error:`` line.

  Args:
    shutdown_timeout_seconds: how long a process that has finished waits at exit for
      the others (JAX's default is 5 minutes: programs whose processes finish their
      shares at different times pass more).
    take_sigterm: SIGTERM stops this process at its next safe point and the others
      with it (:mod:`smoothjax.stopping`). False leaves SIGTERM to JAX's preemption
      service, whose sync points stop a lockstep training loop at the same step on
      every process (:func:`smoothjax.stopping.at_step`).

  Raises:
    InputError: the variables are malformed or the processes cannot connect.
  """
  if not distributed_requested():
    return False
  args = _distributed_args()
  heartbeat = processes.heartbeat_timeout()
  if heartbeat is not None:
    args["heartbeat_timeout_seconds"] = heartbeat
  if shutdown_timeout_seconds is not None:
    args["shutdown_timeout_seconds"] = int(shutdown_timeout_seconds)
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # an older JAX without the option
    pass
  try:
    jax.distributed.initialize(**args)
  except (RuntimeError, ValueError) as e:
    detail = " ".join(str(e).split())[:300]
    raise InputError(
      f"cannot start multi-process JAX ({detail}); check JAX_COORDINATOR_ADDRESS (HOST:PORT "
      "of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, and that every process was started"
    ) from None
  processes.join(jax.process_index(), jax.process_count())
  if take_sigterm:
    stopping.install()  # Again: JAX's preemption service took SIGTERM over.
  return True


def process_share(items, *, index: int | None = None, count: int | None = None):
  """The items of this process: ``items[index::count]`` (default: this JAX process's).

  A deterministic split by position, so that shares are balanced whatever the spacing
  of the items and every item has exactly one owner.
  """
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return items[index::count]


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
  seed and epoch only); each keeps the rows of its own devices. On a mesh of this
  process's devices alone the whole batch is its own. The leading dimension must be
  a multiple of the number of devices.
  """
  n = mesh.devices.size
  sharding = data_sharding(mesh)
  procs, proc = jax.process_count(), jax.process_index()
  if all(d.process_index == proc for d in mesh.devices.flat):
    procs = 1  # A mesh of this process's own devices (certification): the batch is all its own.

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


def wait_for_processes(name: str, timeout_seconds: float) -> None:
  """Blocks until every process of a multi-process job has called this with ``name``.

  A meeting in JAX's coordination service (:func:`smoothjax.devices.processes.meet`: no
  device collective, so processes may arrive hours apart within ``timeout_seconds``;
  SIGTERM and the other processes' notices stop the wait). Does nothing in a single
  process.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # The client of jax.distributed.initialize.

  if distributed.global_state.client is None:
    # Multi-process through a runtime of its own (TPU pods): a collective.
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
    return
  processes.meet(name, timeout_seconds)


def process_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
  """The rows ``(start, stop)`` of a global batch that this process's devices hold.

  With :func:`make_mesh`'s device order (processes in turn) they are contiguous:
  process ``p`` of ``P`` holds ``[p * B / P, (p + 1) * B / P)``. A process reads only
  these rows and places them with :func:`put_process_batch`.
  """
  n = mesh.devices.size
  if batch_size % n:
    raise InputError(
      f"batch size {batch_size} is not a multiple of the {n} devices; choose a batch size "
      "divisible by the device count"
    )
  index_map = data_sharding(mesh).addressable_devices_indices_map((batch_size,))
  spans = sorted(
    {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in index_map.values()}
  )
  if any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False)):
    raise InputError(
      f"this process's devices hold rows {spans} of the batch, not one contiguous slice; "
      "build the mesh with parallel.make_mesh()"
    )
  return spans[0][0], spans[-1][1]


def put_process_batch(tree, mesh: Mesh, batch_size: int):
  """Assembles a global batch of ``batch_size`` rows on the mesh from each process's rows.

  Each process passes only its :func:`process_rows` of the batch (``jax``'s
  ``make_array_from_process_local_data``), so no host reads or holds the whole batch.
  """
  sharding = data_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (batch_size, *x.shape[1:]))

  return jax.tree.map(put, tree)
