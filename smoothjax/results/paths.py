"""Output files: checked before a run starts, read without blocking, write errors in one line.

A program that writes a file at the end of a long run checks its path first
(:func:`check_output_path`), so a directory, a device or a read-only folder is
refused before any work is done. A result file ``PATH`` has two companions:
its settings, ``PATH.settings.json`` (:func:`settings_path`), and the lock its
writer holds, ``PATH.lock`` (:func:`lock_path`). A result computed by several
processes is kept in part files beside it, ``PATH.part-I-of-N`` (:func:`part_path`),
each a result file with its own companions, until they are merged into ``PATH``.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from smoothjax.errors import InputError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def settings_path(path: str | os.PathLike) -> str:
  """The settings file kept next to result file ``path``."""
  return os.fspath(path) + ".settings.json"


def lock_path(path: str | os.PathLike) -> str:
  """The lock file that the writer of result file ``path`` holds (see :mod:`smoothjax.locks`)."""
  return os.fspath(path) + ".lock"


_PART_SUFFIX = re.compile(r"\.part-(\d+)-of-(\d+)")


def part_path(path: str | os.PathLike, index: int, count: int) -> str:
  """The part of result file ``path`` that process ``index`` of ``count`` writes."""
  return f"{os.fspath(path)}.part-{index}-of-{count}"


def part_paths(path: str | os.PathLike) -> list[str]:
  """The part files of result file ``path`` that exist, ordered by (count, index)."""
  path = os.fspath(path)
  folder, base = os.path.split(path)
  try:
    names = os.listdir(folder or ".")
  except OSError:
    return []
  found = []
  for name in names:
    if not name.startswith(base + ".part-"):
      continue
    match = _PART_SUFFIX.fullmatch(name[len(base) :])
    if match:
      index, count = int(match.group(1)), int(match.group(2))
      found.append(((count, index), os.path.join(folder, name)))
  return [p for _, p in sorted(found)]


def _file_kind(mode: int) -> str:
  if stat.S_ISDIR(mode):
    return "a directory"
  if stat.S_ISFIFO(mode):
    return "a FIFO (named pipe)"
  if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
    return "a device"
  if stat.S_ISSOCK(mode):
    return "a socket"
  return "not a regular file"


def check_output_path(path: str | os.PathLike, flag: str = "--outfile") -> str:
  """Checks, without creating anything, that ``path`` can be written as a regular file.

  A missing file is fine if its nearest existing parent is a writable folder
  (missing folders are created when writing). Catches before any work is done
  what would otherwise fail (or hang, or fill the memory) at the end of a run: a
  directory, a FIFO or a device such as ``/dev/null`` or ``/dev/full``, a parent
  that is a file, a read-only file or folder.

  Args:
    path: the file to be written.
    flag: the option that named it, for the message.

  Returns:
    ``path`` as a string.

  Raises:
    InputError: ``path`` cannot be written as a regular file.
  """
  path = os.fspath(path)
  if not path or path.endswith(os.sep):
    raise InputError(f"{flag} {path!r} is not a file name; pass the path of a file")
  try:
    st = os.stat(path)
  except FileNotFoundError:
    st = None
  except NotADirectoryError:
    st = None  # A parent is a file: reported below.
  except OSError as e:
    raise InputError(f"cannot use {flag} {path}: {e.strerror}; choose another path") from None
  if st is not None:
    if not stat.S_ISREG(st.st_mode):
      raise InputError(
        f"{flag} {path} is {_file_kind(st.st_mode)}; pass the path of a regular file"
      )
    if not os.access(path, os.W_OK):
      raise InputError(f"{flag} {path} is read-only; make it writable or choose another path")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise InputError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
  if st is None and not os.access(parent, os.W_OK | os.X_OK):
    raise InputError(f"{flag} {path}: the folder {parent} is not writable; choose another path")
  return path


def read_regular_file(path: str, what: str, advice: str) -> bytes:
  """The bytes of regular file ``path``; an InputError ending in ``advice`` for anything else."""
  try:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat refuses it next.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  except FileNotFoundError:
    raise InputError(f"{what} {path} does not exist; check the path") from None
  except OSError as e:
    raise InputError(f"cannot read {what} {path}: {e.strerror}") from None
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      raise InputError(f"{what} {path} is {_file_kind(mode)}; {advice}")
    with os.fdopen(fd, "rb", closefd=False) as f:
      return f.read()
  except OSError as e:
    raise InputError(f"cannot read {what} {path}: {e.strerror}") from None
  finally:
    os.close(fd)


def write_error(path: str, e: OSError) -> InputError:
  """The one-line InputError for a failed write of ``path``; a full disk says to rerun."""
  if e.errno in _DISK_FULL:
    return InputError(
      f"the disk is full writing {path}; free some space and rerun the same command: it "
      "resumes where it stopped"
    )
  return InputError(f"cannot write {path}: {e.strerror}; check the path and its permissions")
