"""Stopping a long job at a safe point: SIGTERM, and the other processes of a job.

Schedulers (SLURM, Kubernetes, TPU maintenance) stop jobs with SIGTERM. A program
that calls :func:`install` turns SIGTERM into :class:`Stopped`, an exception that
unwinds like any error (locks released, files closed) and ends the program with
exit status 143 and one line saying how to resume.

Inside :func:`deferred` (the body of a loop that writes results or trains) the
signal is only noted; the loop calls :func:`check` (or, in training, :func:`at_step`)
at its safe points, between two rows or two steps, and stops there.

In a multi-process job (:mod:`smoothjax.devices.parallel`) the process that receives SIGTERM,
or that fails, leaves a notice for the others through JAX's coordination service;
:func:`check` raises :class:`Stopped` on every other process at its next safe point,
so that the whole job stops within seconds whichever process was told to.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

SIGTERM_STATUS = 128 + signal.SIGTERM  # 143: the status of a process ended by SIGTERM

_RESUME = "rerun the same command to resume"


class Stopped(Exception):  # noqa: N818 - not an error of the program: a request to stop.
  """The program was asked to stop (SIGTERM, or another process of its job stopped)."""

  def __init__(self, message: str, status: int = SIGTERM_STATUS):
    super().__init__(message)
    self.status = status


_state = {"reason": None, "deferred": 0, "last_probe": 0.0}
# Set by smoothjax.devices.processes in a multi-process job: leave a notice for the other processes,
# and read theirs (None when there is none).
_announce: Callable[[str, int], None] | None = None
_probe: Callable[[], tuple[str, int] | None] | None = None
_PROBE_SECONDS = 1.0  # How often check() asks the other processes (one small RPC).


def install() -> bool:
  """Makes SIGTERM stop this program (see the module); returns whether it could.

  Only the main thread can install a signal handler; elsewhere (a notebook's worker
  thread) this does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    return False
  signal.signal(signal.SIGTERM, _on_sigterm)
  return True


def _on_sigterm(signum, frame) -> None:
  del signum, frame
  request("SIGTERM")
  if not _state["deferred"]:
    raise _local_stop()


def _local_stop() -> Stopped:
  if _announce is not None:
    return Stopped(
      f"stopped by {_state['reason']}, and the other processes of the job with it; rerun the "
      "same command on every process to resume"
    )
  return Stopped(f"stopped by {_state['reason']}; {_RESUME}")


def requested() -> bool:
  """Whether this process was asked to stop (SIGTERM)."""
  return _state["reason"] is not None


def request(reason: str = "SIGTERM") -> None:
  """Notes a request to stop, as SIGTERM does (for tests and embedding programs)."""
  if _state["reason"] is None:
    _state["reason"] = reason
    if _announce is not None:
      with contextlib.suppress(Exception):
        _announce(f"was stopped by {reason}", SIGTERM_STATUS)


def reset() -> None:
  """Forgets a request to stop (for tests and notebooks that go on after one)."""
  _state["reason"] = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """SIGTERM is only noted inside: the block reaches its own safe point (:func:`check`)."""
  _state["deferred"] += 1
  try:
    yield
  finally:
    _state["deferred"] -= 1


def check(*, force: bool = False) -> None:
  """Raises :class:`Stopped` if this process or another of its job was asked to stop.

  The other processes are asked at most once a second (``force``: now).
  """
  if _state["reason"] is not None:
    raise _local_stop()
  if _probe is None:
    return
  now = time.monotonic()
  if not force and now - _state["last_probe"] < _PROBE_SECONDS:
    return
  _state["last_probe"] = now
  notice = _probe()
  if notice is not None:
    message, status = notice
    raise Stopped(
      f"{message}; this process stopped with it; rerun the same command on every process to resume",
      status,
    )


def at_step(step: int) -> bool:
  """Whether a training loop stops after ``step``: the same answer on every process.

  In a multi-process job, JAX's preemption service turns a SIGTERM to any process
  into the same step on every process (``reached_preemption_sync_point``, which must
  be called at every step); in one process, whether SIGTERM arrived.
  """
  import jax

  if jax.process_count() > 1:
    from jax._src import distributed

    if distributed.global_state.preemption_sync_manager is not None:
      from jax.experimental import multihost_utils

      return bool(multihost_utils.reached_preemption_sync_point(step))
    return False
  return requested()
