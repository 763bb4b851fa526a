"""Resumable TSV result files in the format of Cohen et al.'s certify.py.

Certification writes one row per test input with the columns of Cohen,
Rosenfeld & Kolter (2019), ``locuslab/smoothing``: ``idx label predict radius
correct time`` (their ``predict.py`` writes the same without ``radius``).
Extra columns such as ``p_lower``, ``count``, ``n`` or ``radius_l1`` may follow,
so their analysis scripts read our files and :func:`read_results` reads theirs.

A long run killed part-way is restarted with the same command:
:class:`ResultWriter` reads the ``idx`` values already written into
:attr:`ResultWriter.done`, drops a last line cut off mid-write, and refuses to
mix rows computed with different settings (kept in ``PATH.settings.json``).
A prediction of -1 means the smoothed classifier abstained.

Every reader (:func:`read_results` and a resuming :class:`ResultWriter`) parses
a file in one place, which refuses what would make the numbers wrong: a row
inconsistent with itself (an abstention with a radius or marked correct, a
radius that is negative or not finite, ``correct`` disagreeing with ``predict
== label``) and two different rows for one ``idx``. Rows repeated verbatim
(the ``time`` column aside) are counted once, with a note on stderr.

The writer does not lock the file: the program that owns it holds
:func:`smoothjax.locks.exclusive` on ``PATH.lock`` while it writes.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import math
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smoothjax.errors import InputError

# Re-exported: result files are written with them.
from smoothjax.hashing import fingerprint as fingerprint
from smoothjax.hashing import input_hashes as input_hashes

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
ABSTAIN = -1
# A digest of the input a row was computed from (see input_hashes).
INPUT_HASH_COLUMN = "input_hash"

# Columns every result file has; `radius` is missing from prediction files.
_REQUIRED_COLUMNS = ("idx", "label", "predict", "correct")
_INT_COLUMNS = ("idx", "label", "predict", "correct")
_SIX_DECIMAL_COLUMNS = ("p_lower", "p_upper")
# Read as text even when every value looks like a number (a hex digest may).
_STRING_COLUMNS = (INPUT_HASH_COLUMN,)
_MISSING = object()
# str(datetime.timedelta): "0:00:01.234567", "1 day, 2:03:04", "3 days, 0:00:00.5".
_TIMEDELTA_RE = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def settings_path(path: str | os.PathLike) -> str:
  """The settings file kept next to result file ``path``."""
  return os.fspath(path) + ".settings.json"


def lock_path(path: str | os.PathLike) -> str:
  """The lock file that the writer of result file ``path`` holds (see :mod:`smoothjax.locks`)."""
  return os.fspath(path) + ".lock"


# --------------------------------------------------------------------------
# Paths.


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


def _read_regular_file(path: str, what: str, advice: str) -> bytes:
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


def _write_error(path: str, e: OSError) -> InputError:
  if e.errno in _DISK_FULL:
    return InputError(
      f"the disk is full writing {path}; free some space and rerun the same command: it "
      "resumes where it stopped"
    )
  return InputError(f"cannot write {path}: {e.strerror}; check the path and its permissions")


# --------------------------------------------------------------------------
# Values.


def _canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
  # A JSON round trip makes tuples and lists, NumPy and Python scalars compare equal.
  try:
    text = json.dumps(dict(settings), sort_keys=True, default=_json_default, allow_nan=False)
  except ValueError as e:
    raise ValueError(f"settings must be JSON without NaN or infinity: {e}") from None
  return json.loads(text)


def _json_default(value):
  if isinstance(value, np.generic | np.ndarray):
    return value.tolist()
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  return str(value)


def _scalar(column: str, value: Any) -> Any:
  """Python scalar for a row value (NumPy and JAX 0-d arrays included)."""
  if isinstance(value, str | bool | int | float | datetime.timedelta):
    return value
  if isinstance(value, np.generic):
    return value.item()
  if hasattr(value, "__array__"):
    array = np.asarray(value)
    if array.ndim == 0:
      return array.item()
  raise ValueError(f"column {column!r}: cannot write a value of type {type(value).__name__}")


def format_value(column: str, value: Any) -> str:
  """Text for one cell: ints as ints, radii with 4 decimals, times as timedelta strings.

  Args:
    column: column name; it decides the float format (``radius*``: 4 decimals,
      ``p_lower``: 6 decimals, ``time``: ``str(datetime.timedelta)``, others: the
      shortest text that reads back to the same float).
    value: a Python, NumPy or 0-d JAX scalar, a string or a ``timedelta``.

  Returns:
    The cell text, without tabs or newlines.
  """
  value = _scalar(column, value)
  if column == "time" and not isinstance(value, str):
    if not isinstance(value, datetime.timedelta):
      value = datetime.timedelta(seconds=float(value))
    return str(value)
  if isinstance(value, bool):
    return str(int(value))
  if isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    if column in _INT_COLUMNS:
      if not value.is_integer():
        raise ValueError(f"column {column!r} holds integers, got {value!r}")
      return str(int(value))
    if column == "radius" or column.startswith("radius_"):
      return f"{value:.4f}"
    if column in _SIX_DECIMAL_COLUMNS:
      return f"{value:.6f}"
    return repr(value)
  if isinstance(value, str):
    if "\t" in value or "\n" in value or "\r" in value:
      raise ValueError(f"column {column!r}: value {value!r} contains a tab or newline")
    return value
  raise ValueError(f"column {column!r}: cannot write a value of type {type(value).__name__}")


# --------------------------------------------------------------------------
# Parsing: every reader goes through _parse.


@dataclasses.dataclass(frozen=True)
class Results:
  """The rows of a result file, one array entry per row.

  Attributes:
    idx: input index in the dataset.
    label: true class.
    predict: predicted class, -1 for abstain.
    radius: certified radius (NaN throughout for a prediction file).
    correct: 1 where ``predict == label``, else 0.
    extra: the other columns (``time`` in seconds, ``p_lower``, ``radius_l1``,
      ...): float arrays where every value parses as a number, else strings.
    path: the file read, or None.
  """

  idx: np.ndarray
  label: np.ndarray
  predict: np.ndarray
  radius: np.ndarray
  correct: np.ndarray
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  path: str | None = None

  def __len__(self) -> int:
    return len(self.idx)

  @property
  def has_radius(self) -> bool:
    """False for prediction files, which have no ``radius`` column."""
    return not (len(self.radius) and np.all(np.isnan(self.radius)))


def parse_time(text: str) -> float:
  """Seconds in ``str(datetime.timedelta)`` text such as ``0:00:01.234567``, or a number."""
  m = _TIMEDELTA_RE.match(text.strip())
  if m is None:
    return float(text)
  days, hours, minutes, seconds = m.groups()
  return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _parse_int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    value = float(text)  # Tolerate "3.0" from tools that write every number as a float.
    if not value.is_integer():
      raise
    return int(value)


@dataclasses.dataclass(frozen=True)
class _Parsed:
  results: Results | None  # None for a writer's file without the standard columns.
  idx: np.ndarray
  lines: list[str]  # The kept rows' text, duplicates removed.
  duplicates: int  # Rows dropped as verbatim repeats.
  end: int  # Byte offset just past the last complete line.


def _row_problem(values: Mapping[str, Any]) -> str | None:
  """What is inconsistent in one row (None if nothing); ``values`` holds the parsed cells."""
  idx, label, predict, correct = (values.get(c) for c in _INT_COLUMNS)
  radius = values.get("radius")
  if idx is not None and idx < 0:
    return f"idx {idx} is negative"
  if label is not None and label < 0:
    return f"label {label} is negative"
  if predict is not None and predict < ABSTAIN:
    return f"predict {predict} is below -1 (the abstention)"
  if correct is not None and correct not in (0, 1):
    return f"correct is {correct}, not 0 or 1"
  if radius is not None:
    if not math.isfinite(radius):
      return f"radius {radius} is not a finite number"
    if radius < 0:
      return f"radius {radius} is negative"
    if predict == ABSTAIN and radius != 0:
      return f"an abstention (predict -1) has radius {radius}, not 0"
  if predict == ABSTAIN and correct == 1:
    return "an abstention (predict -1) is marked correct"
  if None not in (label, predict, correct) and correct != int(predict == label):
    return (
      f"correct is {correct} but predict {predict} and label {label} say {int(predict == label)}"
    )
  return None


def _parse(path: str, data: bytes, *, expected: Sequence[str] | None, advice: str) -> _Parsed:
  """Parses and validates the bytes of a result file.

  Args:
    path: the file's name, for messages.
    data: its content.
    expected: the exact header columns required (a resuming writer), or None
      to accept any header naming the required columns (a reader).
    advice: how to fix a damaged file, appended to messages about rows.

  Returns:
    The rows, the text of the kept ones, and the end of the last complete line.
  """
  if b"\0" in data[:65536]:
    raise InputError(
      f"{path} holds binary data, not a result file; pass a TSV written by certify.py"
    )
  # Only lines ending in a newline are complete: a last line without one was cut off mid-write.
  end = data.rfind(b"\n") + 1
  try:
    lines = data[:end].decode("utf-8").split("\n")[:-1]
  except UnicodeDecodeError as e:
    raise InputError(
      f"{path} is not UTF-8 text (byte {e.start}); pass a TSV result file written by certify.py"
    ) from None
  if not lines:
    raise InputError(f"{path} has no header line; is it a result file?")
  if expected is not None:
    if lines[0].endswith("\r"):
      raise InputError(
        f"{path} has Windows line endings (CRLF), so this run would append rows that do not "
        "match; convert it (dos2unix) or choose another --outfile"
      )
    if lines[0].split("\t") != list(expected):
      raise InputError(
        f"{path} has columns {lines[0].split(chr(9))} but this run writes {list(expected)}; "
        "choose another --outfile or delete the file"
      )
  lines = [line.rstrip("\r") for line in lines]
  columns = [c.strip() for c in lines[0].split("\t")]
  # A writer resumes files of any columns with an idx; readers need the standard ones.
  missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
  if missing and expected is None:
    raise InputError(
      f"{path} lacks the columns {missing} (found {columns}); expected a certify or "
      "predict result file with a tab-separated header"
    )
  if len(set(columns)) != len(columns):
    raise InputError(f"{path} has a column named twice in its header {columns}")
  time_col = columns.index("time") if "time" in columns else None
  float_columns = [c for c in columns if c == "radius"]
  parsers = {c: _parse_int for c in _INT_COLUMNS} | {c: float for c in float_columns}
  kept, kept_lines = [], []
  first_line: dict[int, tuple[int, list[str]]] = {}
  duplicates = 0
  for lineno, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != len(columns):
      raise InputError(
        f"{path} line {lineno} has {len(fields)} fields but the header has {len(columns)}; "
        + advice
      )
    values = {}
    for c, v in zip(columns, fields, strict=True):
      if c in parsers:
        try:
          values[c] = parsers[c](v)
        except ValueError:
          raise InputError(f"{path} line {lineno}: {c} {v!r} is not a number; " + advice) from None
    problem = _row_problem(values)
    if problem:
      raise InputError(f"{path} line {lineno}: {problem}; " + advice)
    idx = values["idx"]
    comparable = [f.strip() for i, f in enumerate(fields) if i != time_col]
    if idx in first_line:
      other_lineno, other = first_line[idx]
      if other != comparable:
        raise InputError(
          f"{path} has two different rows for idx {idx} (lines {other_lineno} and {lineno}), "
          "so it mixes results of two runs; keep one of them or certify into a new file"
        )
      duplicates += 1
      continue
    first_line[idx] = (lineno, comparable)
    kept.append(fields)
    kept_lines.append(line)
  if duplicates:
    print(
      f"note: {path} repeats {duplicates} row(s) verbatim (same idx and values); each input "
      "is counted once",
      file=sys.stderr,
      flush=True,
    )
  by_column = {c: [row[i] for row in kept] for i, c in enumerate(columns)}

  def as_array(column, convert, dtype):
    return np.array([convert(v) for v in by_column[column]], dtype=dtype)

  if missing:
    idx = as_array("idx", _parse_int, np.int64)
    return _Parsed(results=None, idx=idx, lines=kept_lines, duplicates=duplicates, end=end)

  ints = {c: as_array(c, _parse_int, np.int64) for c in _REQUIRED_COLUMNS}
  if "radius" in columns:
    radius = as_array("radius", float, np.float64)
  else:
    radius = np.full(len(kept), np.nan)
  extra = {}
  for c in columns:
    if c in _REQUIRED_COLUMNS or c == "radius":
      continue
    try:
      if c in _STRING_COLUMNS:
        raise ValueError
      convert = parse_time if c == "time" else float
      extra[c] = np.array([convert(v) for v in by_column[c]], dtype=np.float64)
    except ValueError:
      extra[c] = np.array(by_column[c], dtype=str)
  results = Results(
    idx=ints["idx"],
    label=ints["label"],
    predict=ints["predict"],
    radius=radius,
    correct=ints["correct"],
    extra=extra,
    path=path,
  )
  return _Parsed(results=results, idx=results.idx, lines=kept_lines, duplicates=duplicates, end=end)


def read_results(path: str | os.PathLike) -> Results:
  """Reads a result file: ours, or Cohen et al.'s certify.py or predict.py output.

  A last line without a newline (a run killed mid-write) is ignored; rows
  repeated verbatim are counted once (with a note on stderr).

  Args:
    path: the TSV file, with a header line naming at least ``idx label predict
      correct`` (and ``radius`` for certification results).

  Returns:
    The rows as :class:`Results`, in file order.

  Raises:
    InputError: the file is missing or not a regular file, lacks a required
      column, has a malformed or inconsistent row, or two different rows for
      one ``idx``. The message names the file and line.
  """
  path = os.fspath(path)
  data = _read_regular_file(path, "result file", "pass a result file (TSV)")
  advice = "fix or delete that line, or recompute the file"
  return _parse(path, data, expected=None, advice=advice).results


def read_settings(path: str | os.PathLike) -> dict | None:
  """The settings stored beside result file ``path``; None if there are none.

  Raises:
    InputError: the settings file exists but is not a JSON object. Deleting it
      alone would leave rows of unknown settings, so the message says to
      delete the result file with it (or to choose another output).
  """
  sidecar = settings_path(path)
  if not os.path.lexists(sidecar):
    return None
  damaged = (
    f"delete both it and {os.fspath(path)} (their rows cannot be resumed without it), "
    "or choose another --outfile"
  )
  try:
    data = _read_regular_file(sidecar, "settings file", damaged)
    stored = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise InputError(f"settings file {sidecar} is damaged ({e}); {damaged}") from None
  if not isinstance(stored, dict):
    raise InputError(
      f"settings file {sidecar} holds {type(stored).__name__} {str(stored)[:40]}, not the "
      f"settings of a run; {damaged}"
    )
  return stored


# --------------------------------------------------------------------------
# Writing.


class ResultWriter:
  """Appends one TSV row per input to a result file and resumes an interrupted one.

  Example::

    with locks.exclusive(results.lock_path(path), f"result file {path}"):
      with ResultWriter(path, CERTIFY_COLUMNS, settings=dict(sigma=0.25)) as w:
        for i in range(len(dataset)):
          if i in w.done:
            continue
          w.write(dict(idx=i, label=..., predict=..., radius=..., correct=..., time=...))

  Attributes:
    path: the result file.
    columns: its column names, in order.
    done: ``idx`` values of the rows already in the file.
    existing: those rows, as :class:`Results` (empty for a new file; None for
      a file without the columns ``label predict correct``).
  """

  def __init__(
    self,
    path: str | os.PathLike,
    columns: Sequence[str],
    *,
    settings: Mapping[str, Any] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    hints: Mapping[str, str] | None = None,
  ):
    """Opens ``path`` for appending, creating it with a header if it does not exist.

    Args:
      path: the TSV file; missing parent folders are created.
      columns: column names in order, one of them ``idx``. Start with
        :data:`CERTIFY_COLUMNS` or :data:`PREDICT_COLUMNS` so that Cohen et al.'s
        scripts read the file; extra columns may follow.
      settings: JSON-serialisable run settings (n0, n, alpha, sigma, seed, ...).
        Written to ``PATH.settings.json`` when the file is created; when
        resuming, any difference from the stored ones is an error.
      resume: continue an existing file, skipping the ``idx`` values in it. If
        False, an existing file is an error unless ``overwrite`` is True.
      overwrite: with ``resume=False``, replace an existing file.
      hints: for a settings key, what a difference in it means (e.g. for a
        model fingerprint: "the checkpoint was retrained"), added to the error.

    Raises:
      InputError: ``path`` is not a writable regular file, the existing file has
        another header, other settings, an inconsistent row, or is not to be resumed.
    """
    self.path = os.fspath(path)
    self.columns = tuple(columns)
    if not self.columns or len(set(self.columns)) != len(self.columns):
      raise ValueError(f"columns must be non-empty and unique, got {self.columns}")
    if "idx" not in self.columns:
      raise ValueError(f"columns must include 'idx', got {self.columns}")
    for name in self.columns:
      if not name or any(c in name for c in "\t\n\r"):
        raise ValueError(f"invalid column name {name!r}")
    self._header = "\t".join(self.columns) + "\n"
    self._settings = None if settings is None else _canonical(settings)
    self._hints = dict(hints or {})
    self.done: set[int] = set()
    self.existing = _empty_results(self.path, self.columns)
    if any(c not in self.columns for c in _REQUIRED_COLUMNS):
      self.existing = None
    self._file = None

    check_output_path(self.path)
    exists = os.path.exists(self.path)
    if exists and not resume and not overwrite:
      raise InputError(
        f"{self.path} already exists; pass resume=True (--resume) to continue it, choose "
        "another --outfile, or delete the file"
      )
    try:
      if exists and resume:
        self._resume()
      else:
        self._create()
      self._file = open(self.path, "a", encoding="utf-8", newline="")
    except OSError as e:
      raise _write_error(self.path, e) from None

  def _create(self) -> None:
    parent = os.path.dirname(self.path)
    if parent:
      os.makedirs(parent, exist_ok=True)
    if self._settings is not None:
      self._write_settings()
    elif os.path.lexists(settings_path(self.path)):
      os.remove(settings_path(self.path))  # A stale sidecar would describe other rows.
    self._replace_file(self._header)

  def _replace_file(self, text: str) -> None:
    """Writes ``text`` as the whole file, atomically (a crash leaves the old or the new one)."""
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)

  def _write_settings(self) -> None:
    tmp = settings_path(self.path) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self._settings, f, indent=2, sort_keys=True, allow_nan=False)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, settings_path(self.path))

  def _resume(self) -> None:
    data = _read_regular_file(self.path, "result file", "choose another --outfile")
    header = self._header.encode("utf-8")
    if header.startswith(data):
      # Empty, or killed while writing the header: no rows yet, start afresh.
      self._create()
      return
    advice = "the file is damaged: choose another --outfile or delete it"
    parsed = _parse(self.path, data, expected=self.columns, advice=advice)
    self.existing = parsed.results
    self.done = set(parsed.idx.tolist())
    self._check_settings()
    if parsed.duplicates:
      # Rewrite without the repeats, so that other tools (Cohen et al.'s analyze.py) count each
      # input once too.
      self._replace_file(self._header + "".join(line + "\n" for line in parsed.lines))
    elif parsed.end < len(data):
      # A last line without its newline was cut off mid-write: drop it, the row is rewritten.
      os.truncate(self.path, parsed.end)

  def _check_settings(self) -> None:
    if self._settings is None:
      return
    sidecar = settings_path(self.path)
    if not self.done:
      # No rows yet, so nothing can be mixed: the current settings describe the file.
      self._write_settings()
      return
    stored = read_settings(self.path)
    if stored is None:
      raise InputError(
        f"{self.path} has rows but no settings file {sidecar}, so they may come from "
        "other settings; choose another --outfile or delete the file"
      )
    differ = sorted(
      k
      for k in stored.keys() | self._settings.keys()
      if stored.get(k, _MISSING) != self._settings.get(k, _MISSING)
    )
    if differ:
      detail = ", ".join(
        f"{k}: {_short(stored.get(k, '<unset>'))} in file vs "
        f"{_short(self._settings.get(k, '<unset>'))} now"
        for k in differ
      )
      hints = "".join(f"; {self._hints[k]}" for k in differ if k in self._hints)
      raise InputError(
        f"{self.path} was written with other settings ({detail}){hints}; rerun with the same "
        "settings, or choose another --outfile"
      )

  def _append(self, text: str) -> None:
    self._file.write(text)
    self._file.flush()

  def write(self, row: Mapping[str, Any]) -> None:
    """Appends one row (every column, in order) and flushes it to the file.

    Args:
      row: a value for each column; see :func:`format_value` for the formats.

    Raises:
      ValueError: a column is missing or unknown, a value cannot be written, the
        row is inconsistent (see the module docstring), or its ``idx`` is
        already in the file.
      InputError: the file cannot be written (the disk is full, ...); the
        writer is then closed, and rerunning resumes.
    """
    if self._file is None:
      raise ValueError(f"{self.path} is closed")
    missing = [c for c in self.columns if c not in row]
    unknown = [c for c in row if c not in self.columns]
    if missing or unknown:
      raise ValueError(f"row has missing columns {missing} and unknown columns {unknown}")
    cells = [format_value(c, row[c]) for c in self.columns]
    values = {}
    for c, cell in zip(self.columns, cells, strict=True):
      if c in _INT_COLUMNS or c == "radius":
        try:
          values[c] = _parse_int(cell) if c in _INT_COLUMNS else float(cell)
        except ValueError:
          raise ValueError(f"column {c!r} holds numbers, got {cell!r}") from None
    problem = _row_problem(values)
    if problem:
      raise ValueError(f"inconsistent row for {self.path}: {problem}")
    idx = values["idx"]
    if idx in self.done:
      raise ValueError(f"idx {idx} is already in {self.path}; skip the inputs in `done`")
    try:
      self._append("\t".join(cells) + "\n")
    except OSError as e:
      # The file may end in part of this row now: stop here, a rerun drops it and resumes.
      self._abandon()
      raise _write_error(self.path, e) from None
    self.done.add(idx)

  def _abandon(self) -> None:
    file, self._file = self._file, None
    try:
      file.close()
    except OSError:
      pass  # The buffered part of the row is lost, as it would be in a crash.

  def close(self) -> None:
    """Flushes the rows to disk and closes the file."""
    if self._file is None:
      return
    try:
      self._file.flush()
      os.fsync(self._file.fileno())
    except OSError as e:
      self._abandon()
      raise _write_error(self.path, e) from None
    self._file.close()
    self._file = None

  def __enter__(self) -> ResultWriter:
    return self

  def __exit__(self, exc_type, *exc_info) -> None:
    if exc_type is not None and self._file is not None:
      # Do not hide the error that is propagating behind one from flushing.
      try:
        self.close()
      except InputError:
        pass
      return
    self.close()


def _short(value: Any) -> str:
  text = repr(value)
  # Fingerprints differ in their first digits: the rest only makes the message long.
  return text[:22] + "...'" if len(text) > 30 and isinstance(value, str) else text


def _empty_results(path: str, columns: Sequence[str]) -> Results:
  empty_int = np.zeros(0, np.int64)
  extra = {
    c: np.zeros(0, dtype=str if c in _STRING_COLUMNS else np.float64)
    for c in columns
    if c not in _REQUIRED_COLUMNS and c != "radius"
  }
  return Results(
    idx=empty_int,
    label=empty_int.copy(),
    predict=empty_int.copy(),
    radius=np.zeros(0),
    correct=empty_int.copy(),
    extra=extra,
    path=path,
  )
