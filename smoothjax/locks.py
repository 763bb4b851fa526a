"""Exclusive lock files: one process at a time writes a result file or a workdir.

A lock is a file created atomically (``O_CREAT | O_EXCL``) that holds JSON
``{"pid": ..., "host": ..., "started": ...}``. A second process that finds it is
refused with a message naming the holder. A lock left behind by a process that
was killed (same host, the pid no longer runs) is taken over with a warning, so
``kill -9`` never blocks the next run; a lock held from another host (a shared
file system) is never taken over, since its pid cannot be checked from here.

Example::

  with locks.exclusive(os.path.join(workdir, "train.lock"), f"workdir {workdir}"):
    ...  # write into the workdir
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

from smoothjax.errors import InputError

# A takeover guard older than this was left by a process killed mid-takeover.
_GUARD_STALE_SECONDS = 30.0
# A lock file read while its creator is still writing it is empty for a moment.
_READ_RETRIES = 20
_READ_RETRY_SECONDS = 0.05
# The locks this process holds (path -> record), for release_all.
_HELD: dict[str, dict] = {}


def _holder_record() -> dict:
  started = datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": started}


def _read_holder(path: str) -> dict | None:
  """The JSON in an existing lock file; None if it vanished; {} if it is not readable JSON."""
  for attempt in range(_READ_RETRIES):
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except FileNotFoundError:
      return None
    except OSError:
      return {}
    try:
      holder = json.loads(text)
    except ValueError:
      holder = None
    if isinstance(holder, dict):
      return holder
    if attempt + 1 < _READ_RETRIES:
      time.sleep(_READ_RETRY_SECONDS)  # Its creator may still be writing it.
  return {}


def _process_exists(pid: int) -> bool:
  """Whether process ``pid`` runs on this host (a zombie, already dead, does not)."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # It exists but belongs to another user.
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      # "pid (comm) state ...": comm may hold spaces and ")", so the state follows the last ")".
      return f.read().rpartition(")")[2].split()[0] != "Z"
  except (OSError, IndexError):
    return True


def _is_stale(holder: dict) -> bool:
  pid = holder.get("pid")
  return (
    holder.get("host") == socket.gethostname()
    and isinstance(pid, int)
    and pid != os.getpid()
    and not _process_exists(pid)
  )


def _remove_stale(path: str, holder: dict) -> bool:
  """Deletes the lock at ``path`` if it still holds ``holder``; True if it is gone.

  A guard file makes the check-and-delete atomic among processes that all found
  the same stale lock: without it, one could delete the fresh lock of another.
  """
  guard = path + ".takeover"
  try:
    fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    with contextlib.suppress(OSError):
      if time.time() - os.path.getmtime(guard) > _GUARD_STALE_SECONDS:
        os.remove(guard)
    return False
  try:
    current = _read_holder(path)
    if current is None:
      return True
    if current != holder:
      return False  # Taken over by someone else meanwhile.
    os.remove(path)
    return True
  finally:
    os.close(fd)
    with contextlib.suppress(OSError):
      os.remove(guard)


def _describe(holder: dict) -> tuple[str, str, str]:
  return (
    str(holder.get("pid", "<unknown>")),
    str(holder.get("host", "<unknown host>")),
    str(holder.get("started", "<unknown time>")),
  )


def acquire(path: str | os.PathLike, what: str) -> dict:
  """Creates lock file ``path``; see :func:`exclusive`.

  Returns:
    The record written into the lock file, to pass to :func:`release`.
  """
  path = os.fspath(path)
  record = _holder_record()
  payload = (json.dumps(record) + "\n").encode("utf-8")
  for _ in range(100):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_holder(path)
      if holder is None:
        continue  # Released between our open and our read: try again.
      if _is_stale(holder):
        if _remove_stale(path, holder):
          pid, host, started = _describe(holder)
          print(
            f"warning: taking over the lock {path} of process {pid} on {host} "
            f"(started {started}), which no longer runs",
            file=sys.stderr,
            flush=True,
          )
        else:
          time.sleep(_READ_RETRY_SECONDS)
        continue
      pid, host, started = _describe(holder)
      raise InputError(
        f"{what} is in use by process {pid} on {host} since {started}; wait for it to "
        f"finish, or delete {path} if that process is gone"
      ) from None
    except OSError as e:
      raise InputError(
        f"cannot create the lock file {path} ({e.strerror}); check that its folder exists "
        "and is writable"
      ) from None
    try:
      os.write(fd, payload)
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      with contextlib.suppress(OSError):
        os.remove(path)
      raise
    os.close(fd)
    _HELD[path] = record
    return record
  raise InputError(f"cannot take the lock {path}: it keeps changing; delete it and rerun")


def release(path: str | os.PathLike, record: dict) -> None:
  """Deletes lock file ``path`` if it still holds ``record`` (never another process's lock)."""
  path = os.fspath(path)
  if _HELD.get(path) == record:
    del _HELD[path]
  if _read_holder(path) == record:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def release_all() -> None:
  """Releases every lock this process holds (a process about to end without unwinding)."""
  for path, record in list(_HELD.items()):
    release(path, record)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str) -> Iterator[None]:
  """Holds the lock file ``path`` for the duration of a ``with`` block.

  Args:
    path: the lock file; its folder must exist.
    what: what the lock protects, for the error message (e.g. ``"workdir runs/a"``).

  Raises:
    InputError: another live process holds the lock. The message names its pid,
      host and start time, and says to delete ``path`` if that process is gone.
  """
  record = acquire(path, what)
  try:
    yield
  finally:
    release(path, record)
