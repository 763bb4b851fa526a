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

This module holds the writing side; reading is :mod:`smoothjax.results.reader`,
path checks :mod:`smoothjax.results.paths` and digests :mod:`smoothjax.hashing`. Their
public names are offered here too (``__all__``).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smoothjax.errors import InputError
from smoothjax.hashing import input_hashes
from smoothjax.results.paths import (
  check_output_path,
  lock_path,
  part_paths,
  read_regular_file,
  settings_path,
  write_error,
)
from smoothjax.results.reader import (
  INPUT_HASH_COLUMN,
  INT_COLUMNS,
  REQUIRED_COLUMNS,
  STRING_COLUMNS,
  Results,
  parse,
  parse_int,
  read_combined,
  read_settings,
  row_problem,
)

_SIX_DECIMAL_COLUMNS = ("p_lower", "p_upper")
_MISSING = object()


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
  """Text for one cell: ints as ints, radii rounded, times as timedelta strings.

  Args:
    column: column name; it decides the float format (``radius``: 4 decimals,
      ``radius_<norm>``: 6 significant digits, ``p_lower``: 6 decimals, ``time``:
      ``str(datetime.timedelta)``, others: the
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
    if column in INT_COLUMNS:
      if not value.is_integer():
        raise ValueError(f"column {column!r} holds integers, got {value!r}")
      return str(int(value))
    if column == "radius":
      return f"{value:.4f}"
    if column.startswith("radius_"):
      # Six significant digits: linf radii are often of order 1e-4.
      return f"{value:.6g}"
    if column in _SIX_DECIMAL_COLUMNS:
      return f"{value:.6f}"
    return repr(value)
  if isinstance(value, str):
    if "\t" in value or "\n" in value or "\r" in value:
      raise ValueError(f"column {column!r}: value {value!r} contains a tab or newline")
    return value
  raise ValueError(f"column {column!r}: cannot write a value of type {type(value).__name__}")


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
    if any(c not in self.columns for c in REQUIRED_COLUMNS):
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
      raise write_error(self.path, e) from None

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
    _replace(self.path, text)

  def _write_settings(self) -> None:
    text = json.dumps(self._settings, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _replace(settings_path(self.path), text)

  def _resume(self) -> None:
    data = read_regular_file(self.path, "result file", "choose another --outfile")
    header = self._header.encode("utf-8")
    if header.startswith(data):
      # Empty, or killed while writing the header: no rows yet, start afresh.
      self._create()
      return
    advice = "the file is damaged: choose another --outfile or delete it"
    parsed = parse(self.path, data, expected=self.columns, advice=advice)
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
    problem = settings_mismatch(self.path, stored, self._settings, self._hints)
    if problem:
      raise InputError(problem)

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
      if c in INT_COLUMNS or c == "radius":
        try:
          values[c] = parse_int(cell) if c in INT_COLUMNS else float(cell)
        except ValueError:
          raise ValueError(f"column {c!r} holds numbers, got {cell!r}") from None
    problem = row_problem(values)
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
      raise write_error(self.path, e) from None
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
      raise write_error(self.path, e) from None
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


def settings_mismatch(
  path: str, stored: Mapping[str, Any], settings: Mapping[str, Any], hints: Mapping[str, str]
) -> str | None:
  """What differs between a result file's stored settings and this run's, as a message.

  None if they agree. ``hints`` say, for a settings key, what a difference in it means.
  """
  settings = _canonical(settings)
  keys = stored.keys() | settings.keys()
  differ = sorted(k for k in keys if stored.get(k, _MISSING) != settings.get(k, _MISSING))
  if not differ:
    return None
  detail = ", ".join(
    f"{k}: {_short(stored.get(k, '<unset>'), settings.get(k))} in file vs "
    f"{_short(settings.get(k, '<unset>'), stored.get(k))} now"
    for k in differ
  )
  hints = "".join(f"; {hints[k]}" for k in differ if k in hints)
  return (
    f"{path} was written with other settings ({detail}){hints}; rerun with the same "
    "settings, or choose another --outfile"
  )


def merge_parts(path: str | os.PathLike) -> int:
  """Merges result file ``path`` and its part files into ``path``, rows sorted by idx.

  The parts (``path.part-I-of-N``, written by the processes of a multi-process run)
  are removed once ``path`` holds all their rows; a crash in between leaves rows in
  both, which readers count once. The caller holds ``path``'s lock.

  Returns:
    The number of rows in the merged file (0 and nothing written if there are no parts).

  Raises:
    InputError: as :func:`smoothjax.results.reader.read_combined`, or the file cannot
      be written.
  """
  path = os.fspath(path)
  parts = part_paths(path)
  if not parts:
    return 0
  combined = read_combined(path)
  try:
    if combined is not None:  # (None: parts cut off in their header, nothing to keep)
      order = np.argsort(combined.parsed.idx, kind="stable")
      text = combined.header + "\n" + "".join(combined.parsed.lines[i] + "\n" for i in order)
      if combined.settings is not None:
        settings = json.dumps(combined.settings, indent=2, sort_keys=True) + "\n"
        _replace(settings_path(path), settings)
      _replace(path, text)
    for part in parts:
      # The caller holds path's lock, so no live job writes these parts: a part's lock
      # is a killed process's.
      for file in (part, settings_path(part), lock_path(part)):
        if os.path.lexists(file):
          os.remove(file)
  except OSError as e:
    raise write_error(path, e) from None
  return 0 if combined is None else len(combined.parsed.idx)


def _replace(path: str, text: str) -> None:
  """Writes ``text`` as the whole of ``path``, atomically (a crash leaves the old or the new)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _short(value: Any, other: Any = None) -> str:
  """``repr(value)``, shortened around where it differs from ``other`` if it is long.

  Fingerprints differ in their first digits and paths in their last parts: showing the
  first characters of both would print two identical-looking values.
  """
  text = repr(value)
  if len(text) <= 30 or not isinstance(value, str):
    return text
  if isinstance(other, str):
    first = next((i for i, (a, b) in enumerate(zip(value, other, strict=False)) if a != b), None)
    if first is None:
      first = min(len(value), len(other))
    if first > 12:
      return "'..." + value[first - 8 : first + 20] + ("...'" if first + 20 < len(value) else "'")
  return text[:22] + "...'"


def _empty_results(path: str, columns: Sequence[str]) -> Results:
  empty_int = np.zeros(0, np.int64)
  extra = {
    c: np.zeros(0, dtype=str if c in STRING_COLUMNS else np.float64)
    for c in columns
    if c not in REQUIRED_COLUMNS and c != "radius"
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


_HASH_CHUNK = 256


def check_inputs_unchanged(existing: Results | None, split, path: str, split_name: str) -> None:
  """Refuses to resume a result file whose rows were computed from other inputs.

  Re-hashes the input of every row already in ``path`` (its ``input_hash`` column)
  from ``split`` as it is now, so a dataset whose files were changed or replaced
  since is never mixed into one file. Each row's ``label`` must be the split's label
  of its input too: the hash covers the dataset's label, not the row's, so a row whose
  label was edited (and ``correct`` with it) would otherwise be kept.

  Args:
    existing: the rows already in the file (``ResultWriter.existing``), or None.
    split: the dataset split, with ``get(indices) -> (images, labels)`` and ``len``.
    path: the result file, for the message.
    split_name: the split's name, for the message.

  Raises:
    InputError: a row's input is missing from the split or hashes differently, or its
      label is not the split's.
  """
  if existing is None or not len(existing):
    return
  hashes = existing.extra[INPUT_HASH_COLUMN]
  too_far = existing.idx >= len(split)
  if too_far.any():
    raise InputError(
      f"{path} has a row for input {int(existing.idx[too_far][0])} but split "
      f"{split_name!r} has {len(split)} inputs, so the dataset changed; write into "
      "another --outfile"
    )
  for start in range(0, len(existing), _HASH_CHUNK):
    idx = existing.idx[start : start + _HASH_CHUNK]
    images, labels = split.get(idx)
    now = input_hashes(images, labels)
    rows = zip(idx, existing.label[start : start + _HASH_CHUNK], labels, strict=True)
    for i, written, label in rows:
      if int(written) != int(label):
        raise InputError(
          f"{path}: the row of input {int(i)} has label {int(written)} but split "
          f"{split_name!r} gives that input label {int(label)}, so the row was edited or comes "
          "from another dataset; write into another --outfile, or delete the row"
        )
    for i, before, after in zip(idx, hashes[start : start + _HASH_CHUNK], now, strict=True):
      if before != after:
        raise InputError(
          f"input {int(i)} of split {split_name!r} is not the one its row in {path} was "
          "computed from (the dataset's files were changed or replaced); write into another "
          "--outfile"
        )
