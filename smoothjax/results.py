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
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smoothjax.errors import InputError

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
ABSTAIN = -1

# Columns every result file has; `radius` is missing from prediction files.
_REQUIRED_COLUMNS = ("idx", "label", "predict", "correct")
_INT_COLUMNS = ("idx", "label", "predict", "correct")
_SIX_DECIMAL_COLUMNS = ("p_lower", "p_upper")
_MISSING = object()
# str(datetime.timedelta): "0:00:01.234567", "1 day, 2:03:04", "3 days, 0:00:00.5".
_TIMEDELTA_RE = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


def settings_path(path: str | os.PathLike) -> str:
  """The settings file kept next to result file ``path``."""
  return os.fspath(path) + ".settings.json"


def _canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
  # A JSON round trip makes tuples and lists, NumPy and Python scalars compare equal.
  return json.loads(json.dumps(dict(settings), sort_keys=True, default=_json_default))


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


class ResultWriter:
  """Appends one TSV row per input to a result file and resumes an interrupted one.

  Example::

    with ResultWriter("out/certify.tsv", CERTIFY_COLUMNS, settings=dict(sigma=0.25)) as w:
      for i in range(len(dataset)):
        if i in w.done:
          continue
        w.write(dict(idx=i, label=..., predict=..., radius=..., correct=..., time=...))

  Attributes:
    path: the result file.
    columns: its column names, in order.
    done: ``idx`` values of the rows already in the file.
  """

  def __init__(
    self,
    path: str | os.PathLike,
    columns: Sequence[str],
    *,
    settings: Mapping[str, Any] | None = None,
    resume: bool = True,
    overwrite: bool = False,
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

    Raises:
      InputError: the existing file has another header, other settings, or is
        not to be resumed.
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
    self.done: set[int] = set()
    self._file = None

    exists = os.path.exists(self.path)
    if exists and not resume and not overwrite:
      raise InputError(
        f"{self.path} already exists; pass resume=True (--resume) to continue it, choose "
        "another --outfile, or delete the file"
      )
    if exists and resume:
      self._resume()
    else:
      self._create()
    self._file = open(self.path, "a", encoding="utf-8", newline="")

  def _create(self) -> None:
    parent = os.path.dirname(self.path)
    if parent:
      os.makedirs(parent, exist_ok=True)
    if self._settings is not None:
      self._write_settings()
    elif os.path.exists(settings_path(self.path)):
      os.remove(settings_path(self.path))  # A stale sidecar would describe other rows.
    with open(self.path, "w", encoding="utf-8", newline="") as f:
      f.write(self._header)
      f.flush()
      os.fsync(f.fileno())

  def _write_settings(self) -> None:
    tmp = settings_path(self.path) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self._settings, f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, settings_path(self.path))

  def _resume(self) -> None:
    with open(self.path, "rb") as f:
      data = f.read()
    header = self._header.encode("utf-8")
    if header.startswith(data):
      # Empty, or killed while writing the header: no rows yet, start afresh.
      self._create()
      return
    first_end = data.find(b"\n")
    if first_end < 0 or data[: first_end + 1] != header:
      found = data[: first_end if first_end >= 0 else 200].decode("utf-8", "replace")
      found_columns = found.rstrip("\r").split("\t")
      raise InputError(
        f"{self.path} has columns {found_columns} but this run writes "
        f"{list(self.columns)}; choose another --outfile or delete the file"
      )
    # A last line without its newline was cut off mid-write: drop it, rewrite the row.
    end = data.rfind(b"\n") + 1
    body = data[len(header) : end].decode("utf-8")
    idx_col = self.columns.index("idx")
    for lineno, line in enumerate(body.splitlines(), start=2):
      if not line.strip():
        continue
      fields = line.split("\t")
      if len(fields) != len(self.columns):
        raise InputError(
          f"{self.path} line {lineno} has {len(fields)} fields, expected "
          f"{len(self.columns)}; the file is damaged: choose another --outfile or delete it"
        )
      try:
        self.done.add(int(fields[idx_col]))
      except ValueError:
        raise InputError(
          f"{self.path} line {lineno}: idx {fields[idx_col]!r} is not an integer; the file "
          "is damaged: choose another --outfile or delete it"
        ) from None
    self._check_settings()
    if end < len(data):
      os.truncate(self.path, end)

  def _check_settings(self) -> None:
    if self._settings is None:
      return
    sidecar = settings_path(self.path)
    if not self.done:
      # No rows yet, so nothing can be mixed: the current settings describe the file.
      self._write_settings()
      return
    if not os.path.exists(sidecar):
      raise InputError(
        f"{self.path} has rows but no settings file {sidecar}, so they may come from "
        "other settings; choose another --outfile or delete the file"
      )
    try:
      with open(sidecar, encoding="utf-8") as f:
        stored = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise InputError(f"cannot read settings file {sidecar} ({e}); delete it and rerun") from e
    differ = sorted(
      k
      for k in stored.keys() | self._settings.keys()
      if stored.get(k, _MISSING) != self._settings.get(k, _MISSING)
    )
    if differ:
      detail = ", ".join(
        f"{k}: {stored.get(k, '<unset>')!r} in file vs {self._settings.get(k, '<unset>')!r} now"
        for k in differ
      )
      raise InputError(
        f"{self.path} was written with other settings ({detail}); rerun with the same "
        "settings, or choose another --outfile"
      )

  def write(self, row: Mapping[str, Any]) -> None:
    """Appends one row (every column, in order) and flushes it to the file.

    Args:
      row: a value for each column; see :func:`format_value` for the formats.

    Raises:
      ValueError: a column is missing or unknown, a value cannot be written, or
        the row's ``idx`` is already in the file.
    """
    if self._file is None:
      raise ValueError(f"{self.path} is closed")
    missing = [c for c in self.columns if c not in row]
    unknown = [c for c in row if c not in self.columns]
    if missing or unknown:
      raise ValueError(f"row has missing columns {missing} and unknown columns {unknown}")
    cells = [format_value(c, row[c]) for c in self.columns]
    idx = int(cells[self.columns.index("idx")])
    if idx in self.done:
      raise ValueError(f"idx {idx} is already in {self.path}; skip the inputs in `done`")
    self._file.write("\t".join(cells) + "\n")
    self._file.flush()
    self.done.add(idx)

  def close(self) -> None:
    """Flushes the rows to disk and closes the file."""
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()
      self._file = None

  def __enter__(self) -> ResultWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


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


def read_results(path: str | os.PathLike) -> Results:
  """Reads a result file: ours, or Cohen et al.'s certify.py or predict.py output.

  A last line without a newline (a run killed mid-write) is ignored.

  Args:
    path: the TSV file, with a header line naming at least ``idx label predict
      correct`` (and ``radius`` for certification results).

  Returns:
    The rows as :class:`Results`.

  Raises:
    InputError: the file is missing, lacks a required column or has a malformed row.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8", newline="") as f:
      text = f.read()
  except FileNotFoundError:
    raise InputError(f"result file {path} does not exist; check the path") from None
  except OSError as e:
    raise InputError(f"cannot read result file {path}: {e}") from e
  # Only lines ending in a newline are complete.
  lines = text.split("\n")[:-1]
  lines = [line.rstrip("\r") for line in lines]
  if not lines:
    raise InputError(f"{path} has no header line; is it a result file?")
  columns = [c.strip() for c in lines[0].split("\t")]
  missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
  if missing:
    raise InputError(
      f"{path} lacks the columns {missing} (found {columns}); expected a certify or "
      "predict result file with a tab-separated header"
    )
  rows = []
  for lineno, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != len(columns):
      raise InputError(
        f"{path} line {lineno} has {len(fields)} fields but the header has {len(columns)}"
      )
    rows.append(fields)
  by_column = dict(zip(columns, zip(*rows, strict=True), strict=True)) if rows else {}
  by_column = {c: list(by_column.get(c, ())) for c in columns}

  def parse(column, convert, dtype):
    try:
      return np.array([convert(v) for v in by_column[column]], dtype=dtype)
    except ValueError:
      raise InputError(f"{path}: column {column!r} has a value that is not a number") from None

  ints = {c: parse(c, _parse_int, np.int64) for c in _REQUIRED_COLUMNS}
  if "radius" in columns:
    radius = parse("radius", float, np.float64)
  else:
    radius = np.full(len(rows), np.nan)
  extra = {}
  for c in columns:
    if c in _REQUIRED_COLUMNS or c == "radius":
      continue
    try:
      convert = parse_time if c == "time" else float
      extra[c] = np.array([convert(v) for v in by_column[c]], dtype=np.float64)
    except ValueError:
      extra[c] = np.array(by_column[c], dtype=str)
  return Results(
    idx=ints["idx"],
    label=ints["label"],
    predict=ints["predict"],
    radius=radius,
    correct=ints["correct"],
    extra=extra,
    path=path,
  )
