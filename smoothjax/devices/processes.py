"""The processes of a multi-process JAX job: meetings, agreement, notices, a lost process.

:func:`smoothjax.devices.parallel.initialize_distributed` starts JAX's runtime and then
:func:`join`, which wires this module to JAX's coordination service (its key-value
store; no device collective, so processes may meet hours apart):

* :func:`meet` waits for every process, polling, so that SIGTERM and the notices of
  the other processes are seen while waiting (:mod:`smoothjax.stopping`);
* :func:`agree` compares a value (a run's settings) across processes, so that
  processes started with different command lines all fail before any work;
* a process that stops (SIGTERM, an error) leaves a notice that stops the others at
  their next safe point;
* when a process dies outright (``kill -9``, a lost host), JAX's runtime notices its
  missing heartbeats (after ``SMOOTHJAX_HEARTBEAT_TIMEOUT`` seconds, default 100) and
  aborts every other process. :func:`join` installs a handler of that abort that
  releases this process's locks and ends it with one ``error:`` line naming the
  process that stopped and exit status :data:`LOST_STATUS`, after the runtime's own
  log lines. Rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from smoothjax import locks, stopping
from smoothjax.errors import InputError

LOST_STATUS = 3  # Exit status of a process whose job lost another process.
HEARTBEAT_ENV = "SMOOTHJAX_HEARTBEAT_TIMEOUT"
_PREFIX = "smoothjax/"
_STOP_KEY = _PREFIX + "stop"
_BEAT_SECONDS = 1.0
_POLL_SECONDS = 0.2

_job: dict[str, Any] = {"client": None, "index": 0, "count": 1, "meetings": 0}
_beats: dict[int, float] = {}  # Process -> when (this host's clock) its beat last changed.
_beat_values: dict[int, str] = {}
_hook: dict[str, Any] = {}


def heartbeat_timeout() -> int | None:
  """``SMOOTHJAX_HEARTBEAT_TIMEOUT`` in seconds (None: JAX's default, 100 s).

  Raises:
    InputError: it is not an integer >= 2.
  """
  text = os.environ.get(HEARTBEAT_ENV, "").strip()
  if not text:
    return None
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 2:
    raise InputError(f"{HEARTBEAT_ENV}={text!r} must be a whole number of seconds >= 2")
  return value


def _client():
  from jax._src import distributed  # The client of jax.distributed.initialize.

  return distributed.global_state.client


def join(index: int, count: int) -> None:
  """Wires this process to its job's coordination service (see the module)."""
  client = _client()
  if client is None or count < 2:
    return
  _job.update(client=client, index=index, count=count, meetings=0)
  stopping._announce = announce
  stopping._probe = _notice
  now = time.monotonic()
  _beats.update({p: now for p in range(count)})
  threading.Thread(target=_beat, name="smoothjax-heartbeat", daemon=True).start()
  _install_abort_handler()
  # Before JAX's own exit handler shuts the client down (atexit runs the last first).
  import atexit

  atexit.register(_leave)


def _joined():
  """The coordination client, joining the job if JAX was started without :func:`join`."""
  if _job["client"] is None and "left" not in _hook:
    import jax

    if jax.process_count() > 1 and _client() is not None:
      join(jax.process_index(), jax.process_count())
  return _job["client"]


def _leave() -> None:
  _hook["left"] = True
  _job["client"] = None
  stopping._announce = stopping._probe = None


def announce(what: str, status: int) -> None:
  """Leaves a notice for the other processes: this process ``what`` (e.g. "failed: ...")."""
  client = _job["client"]
  if client is None:
    return
  text = f"{status}\tprocess {_job['index']} of {_job['count']} {what}"
  with contextlib.suppress(Exception):
    client.key_value_set(_STOP_KEY, text)


def _notice() -> tuple[str, int] | None:
  client = _job["client"]
  if client is None:
    return None
  try:
    text = client.key_value_try_get(_STOP_KEY)
  except Exception:  # noqa: BLE001 - NOT_FOUND: no notice.
    return None
  status, _, message = text.partition("\t")
  try:
    return message, int(status)
  except ValueError:
    return message, stopping.SIGTERM_STATUS


def _beat() -> None:
  """Beats of every process in the key-value store, to name the one that stops beating."""
  count = 0
  while _job["client"] is not None:
    client = _job["client"]
    count += 1
    try:
      client.key_value_set(f"{_PREFIX}beat/{_job['index']}", str(count), allow_overwrite=True)
      now = time.monotonic()
      for key, value in client.key_value_dir_get(f"{_PREFIX}beat/"):
        process = int(key.rsplit("/", 1)[1])
        if _beat_values.get(process) != value:
          _beat_values[process] = value
          _beats[process] = now
    except Exception:  # noqa: BLE001 - the service is gone: the abort handler says so.
      pass
    time.sleep(_BEAT_SECONDS)


def _lost_message() -> str:
  index, count = _job["index"], _job["count"]
  now = time.monotonic()
  if count == 2:
    # The runtime stops a process for the loss of another, and of two there is one other
    # (its beats may look fresh: a closed connection is noticed before a missed beat).
    silent = [1 - index]
  else:
    silent = sorted(p for p, t in _beats.items() if p != index and now - t > 3 * _BEAT_SECONDS)
  if silent and silent != [0]:
    who = ", ".join(str(p) for p in silent)
    what = f"process {who} of {count} stopped (killed, or its host was lost)"
  elif index != 0:
    what = f"process 0 of {count}, the job's coordinator, stopped or cannot be reached"
  else:
    what = f"another process of the {count} stopped or cannot be reached"
  return (
    f"error: {what}, and JAX's distributed runtime stopped process {index} with it; rerun the "
    "same command on every process to resume (finished work is kept)\n"
  )


def _on_abort(signum) -> None:
  del signum
  with contextlib.suppress(Exception):
    locks.release_all()
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  os.write(2, _lost_message().encode("utf-8", "replace"))
  os._exit(LOST_STATUS)


def _install_abort_handler() -> None:
  """When JAX's runtime aborts this process for a lost process: one line, not a core dump.

  The runtime reports a lost process by aborting from one of its threads, which no
  Python signal handler can intercept (Python runs those later, in the main thread).
  A C-level handler that calls back into Python can: it takes the interpreter lock
  (the main thread releases it while it computes or waits) and exits.
  """
  if "handler" in _hook:
    return
  try:
    libc = ctypes.CDLL(None)
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
    handler = handler_type(_on_abort)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, handler_type]
    libc.signal(signal.SIGABRT, handler)
  except (OSError, AttributeError):
    return  # No C library to install it with (not a POSIX system): the runtime's own abort.
  _hook["handler"] = handler  # Kept alive: the C library calls it.


def _key(name: str) -> str:
  """A key-value path for the next meeting of ``name`` (every process counts the same)."""
  _job["meetings"] += 1
  digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
  return f"{_PREFIX}meet/{_job['meetings']}-{digest}/"


def meet(name: str, timeout_seconds: float, value: str = "") -> dict[int, str]:
  """Waits until every process of the job has come to meeting ``name``.

  Polls the coordination service, so that SIGTERM and the notices of other processes
  stop the wait (:class:`smoothjax.stopping.Stopped`).

  Returns:
    The value each process brought, by process index ({0: value} in a single process).

  Raises:
    InputError: the others did not all come within ``timeout_seconds``.
  """
  client = _joined()
  if client is None:
    return {0: value}
  where = _key(name)
  client.key_value_set(f"{where}{_job['index']}", value)
  deadline = time.monotonic() + timeout_seconds
  while True:
    stopping.check(force=True)
    arrived = {int(k.rsplit("/", 1)[1]): v for k, v in client.key_value_dir_get(where)}
    if len(arrived) >= _job["count"]:
      return arrived
    if time.monotonic() > deadline:
      missing = sorted(set(range(_job["count"])) - set(arrived))
      raise InputError(
        f"the processes of this job did not all reach {name.split()[-1]!r} within "
        f"{timeout_seconds:.0f} s (missing: process {', '.join(map(str, missing))}); see "
        "their messages"
      )
    time.sleep(_POLL_SECONDS)


def agree(name: str, values: Mapping[str, Any], timeout_seconds: float) -> None:
  """Refuses, on every process, to go on when the processes bring different ``values``.

  ``values`` must be JSON (a run's settings); compared with process 0's.

  Raises:
    InputError: a process's values differ from process 0's (the message names the
      process and the keys), or the processes did not all come.
  """
  text = json.dumps(dict(values), sort_keys=True, default=str)
  brought = meet(name, timeout_seconds, text)
  first = json.loads(brought[0])
  for process in sorted(brought):
    other = json.loads(brought[process])
    differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
    if differ:
      detail = ", ".join(
        f"{k}: {first.get(k, '<unset>')!r} on process 0 vs {other.get(k, '<unset>')!r}"
        for k in differ[:4]
      )
      raise InputError(
        f"the processes of this job were started with different settings ({detail} on "
        f"process {process}); start every process with the same command line"
      )
