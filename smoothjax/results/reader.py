"""Reading result files: ours, and those of Cohen et al.'s certify.py and predict.py.

Certification writes one row per test input with the columns of Cohen,
Rosenfeld & Kolter (2019), ``locuslab/smoothing``: ``idx label predict radius
correct time`` (their ``predict.py`` writes the same without ``radius``).
Extra columns such as ``p_lower``, ``count``, ``n`` or ``radius_l1`` may follow.
A prediction of -1 means the smoothed classifier abstained.

Every reader (:func:`read_results` and a resuming
:class:`smoothjax.results.ResultWriter`) parses a file with :func:`parse`, which
refuses what would make the numbers wrong: a row inconsistent with itself (an
abstention with a radius or marked correct, a radius that is negative or not
finite, ``correct`` disagreeing with ``predict == label``) and two different rows
for one ``idx``. Rows repeated verbatim (the ``time`` column aside) are counted
once, with a note on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smoothjax.errors import InputError
from smoothjax.results import paths as outputs
from smoothjax.smoothing.certificates import ABSTAIN

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
# A digest of the input a row was computed from (see smoothjax.hashing.input_hashes).
INPUT_HASH_COLUMN = "input_hash"

# Certified radii in each norm (smoothjax.noise.NORMS), beside `radius` in the primary one.
RADIUS_COLUMNS = {"l1": "radius_l1", "l2": "radius_l2", "linf": "radius_linf"}

# Columns every result file has; `radius` is missing from prediction files.
REQUIRED_COLUMNS = ("idx", "label", "predict", "correct")
INT_COLUMNS = ("idx", "label", "predict", "correct")
# Read as text even when every value looks like a number (a hex digest may).
STRING_COLUMNS = (INPUT_HASH_COLUMN,)
# str(datetime.timedelta): "0:00:01.234567", "1 day, 2:03:04", "3 days, 0:00:00.5".
_TIMEDELTA_RE = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


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


def parse_int(text: str) -> int:
  """An integer cell; ``3.0`` reads as 3."""
  try:
    return int(text)
  except ValueError:
    value = float(text)  # Tolerate "3.0" from tools that write every number as a float.
    if not value.is_integer():
      raise
    return int(value)


@dataclasses.dataclass(frozen=True)
class Parsed:
  """What :func:`parse` found in a file: its rows, their text and where they end."""

  results: Results | None  # None for a writer's file without the standard columns.
  idx: np.ndarray
  lines: list[str]  # The kept rows' text, duplicates removed.
  duplicates: int  # Rows dropped as verbatim repeats.
  end: int  # Byte offset just past the last complete line.


def row_problem(values: Mapping[str, Any]) -> str | None:
  """What is inconsistent in one row (None if nothing); ``values`` holds the parsed cells."""
  idx, label, predict, correct = (values.get(c) for c in INT_COLUMNS)
  if idx is not None and idx < 0:
    return f"idx {idx} is negative"
  if label is not None and label < 0:
    return f"label {label} is negative"
  if predict is not None and predict < ABSTAIN:
    return f"predict {predict} is below -1 (the abstention)"
  if correct is not None and correct not in (0, 1):
    return f"correct is {correct}, not 0 or 1"
  for column in ("radius", *RADIUS_COLUMNS.values()):
    radius = values.get(column)
    if radius is None:
      continue
    if not math.isfinite(radius):
      return f"{column} {radius} is not a finite number"
    if radius < 0:
      return f"{column} {radius} is negative"
    if predict == ABSTAIN and radius != 0:
      return f"an abstention (predict -1) has {column} {radius}, not 0"
  if predict == ABSTAIN and correct == 1:
    return "an abstention (predict -1) is marked correct"
  if None not in (label, predict, correct) and correct != int(predict == label):
    return (
      f"correct is {correct} but predict {predict} and label {label} say {int(predict == label)}"
    )
  return None


def parse(path: str, data: bytes, *, expected: Sequence[str] | None, advice: str) -> Parsed:
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
  missing = [c for c in REQUIRED_COLUMNS if c not in columns]
  if missing and expected is None:
    raise InputError(
      f"{path} lacks the columns {missing} (found {columns}); expected a certify or "
      "predict result file with a tab-separated header"
    )
  if len(set(columns)) != len(columns):
    raise InputError(f"{path} has a column named twice in its header {columns}")
  time_col = columns.index("time") if "time" in columns else None
  float_columns = [c for c in columns if c == "radius" or c in RADIUS_COLUMNS.values()]
  parsers = {c: parse_int for c in INT_COLUMNS} | {c: float for c in float_columns}
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
    problem = row_problem(values)
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
    idx = as_array("idx", parse_int, np.int64)
    return Parsed(results=None, idx=idx, lines=kept_lines, duplicates=duplicates, end=end)

  ints = {c: as_array(c, parse_int, np.int64) for c in REQUIRED_COLUMNS}
  if "radius" in columns:
    radius = as_array("radius", float, np.float64)
  else:
    radius = np.full(len(kept), np.nan)
  extra = {}
  for c in columns:
    if c in REQUIRED_COLUMNS or c == "radius":
      continue
    try:
      if c in STRING_COLUMNS:
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
  return Parsed(results=results, idx=results.idx, lines=kept_lines, duplicates=duplicates, end=end)


def read_results(path: str | os.PathLike) -> Results:
  """Reads a result file: ours, or Cohen et al.'s certify.py or predict.py output.

  A last line without a newline (a run killed mid-write) is ignored; rows
  repeated verbatim are counted once (with a note on stderr). A result written by
  several processes is read as one: ``path`` (if it exists) with its part files
  ``path.part-I-of-N`` (see :func:`read_combined`).

  Args:
    path: the TSV file, with a header line naming at least ``idx label predict
      correct`` (and ``radius`` for certification results).

  Returns:
    The rows as :class:`Results`, in file order (parts after ``path``).

  Raises:
    InputError: the file is missing or not a regular file, lacks a required
      column, has a malformed or inconsistent row, or two different rows for
      one ``idx``. The message names the file and line.
  """
  combined = read_combined(path)
  if combined is None:
    raise InputError(f"the parts of {path} hold no rows yet; rerun the job that writes them")
  return combined.parsed.results


@dataclasses.dataclass(frozen=True)
class Combined:
  """A result file read together with its parts (:func:`read_combined`)."""

  parsed: Parsed  # The rows of every file, each idx once; `lines` hold their text.
  header: str  # The header line the files share.
  files: list[str]  # The files read: the result file if it exists, then its parts.
  settings: dict | None  # The settings they share (None: no settings file).


_READ_ADVICE = "fix or delete that line, or recompute the file"


def read_combined(path: str | os.PathLike, *, exclude: Sequence[str] = ()) -> Combined | None:
  """Reads result file ``path`` and its part files as one result.

  Each file is checked on its own (so messages name the file and line); then the
  rows of all of them are checked together: one idx in two files must be the same
  row (the ``time`` column aside), as after a merge that stopped before removing the
  parts. The files must share their header and their settings.

  Args:
    path: the result file; it need not exist if it has parts, or if ``exclude`` is
      given (a writer that reads the others before creating its own file).
    exclude: files to leave out (a writer reads the others beside its own part).

  Returns:
    The rows, or None if no file is left or every file left is a part cut off in its
    header line.

  Raises:
    InputError: as :func:`read_results`; also parts with another header or other
      settings (or a settings file missing beside one of them while another has one),
      and two different rows for one idx in two files.
  """
  path = os.fspath(path)
  excluded = {os.path.abspath(p) for p in exclude}
  parts = outputs.part_paths(path)
  files = [path] if os.path.lexists(path) or not (parts or excluded) else []
  files = [f for f in files + parts if os.path.abspath(f) not in excluded]
  header, settings_of, lines, chunks = None, None, [], []
  for file in files:
    data = outputs.read_regular_file(file, "result file", "pass a result file (TSV)")
    if parts and data.rfind(b"\n") < 0:
      continue  # A part killed while writing its header holds no rows.
    parsed = parse(file, data, expected=None, advice=_READ_ADVICE)
    head = data[: data.index(b"\n")].decode("utf-8").rstrip("\r")
    if header is None:
      header, first = head, file
    elif head.split("\t") != header.split("\t"):
      raise InputError(
        f"{file} has the columns {head.split(chr(9))} but {first} has {header.split(chr(9))}, "
        "so they are not parts of one result; move one of them away"
      )
    settings = read_settings(file)
    if settings_of is None:
      settings_of = (file, settings)
    elif (settings is None) != (settings_of[1] is None):
      bare, other = (file, settings_of[0]) if settings is None else (settings_of[0], file)
      raise InputError(
        f"the settings file {outputs.settings_path(bare)} of {bare} is missing, so its rows "
        f"cannot be trusted to match those of {other}; move {bare} away, or delete it to "
        "recompute its rows"
      )
    elif settings != settings_of[1]:
      raise InputError(
        f"{file} and {settings_of[0]} were written with other settings, so they are not parts "
        "of one result; move one of them away"
      )
    chunks.append(parsed)
    lines.extend(parsed.lines)
  if len(chunks) == 1:
    return Combined(chunks[0], header, files, settings_of[1])
  if not chunks:
    return None
  text = (header + "\n" + "".join(line + "\n" for line in lines)).encode("utf-8")
  parsed = parse(f"{path} (with its parts)", text, expected=None, advice=_READ_ADVICE)
  if parsed.results is not None:
    parsed = dataclasses.replace(parsed, results=dataclasses.replace(parsed.results, path=path))
  return Combined(parsed, header, files, settings_of[1])


def read_settings(path: str | os.PathLike) -> dict | None:
  """The settings stored beside result file ``path``; None if there are none.

  For a result that exists only as part files (``path.part-I-of-N``), the settings
  of its first part (:func:`read_combined` checks that the parts agree).

  Raises:
    InputError: the settings file exists but is not a JSON object. Deleting it
      alone would leave rows of unknown settings, so the message says to
      delete the result file with it (or to choose another output).
  """
  sidecar = outputs.settings_path(path)
  if not os.path.lexists(sidecar):
    parts = [] if os.path.lexists(path) else outputs.part_paths(path)
    if parts and os.path.lexists(outputs.settings_path(parts[0])):
      return read_settings(parts[0])
    return None
  damaged = (
    f"delete both it and {os.fspath(path)} (their rows cannot be resumed without it), "
    "or choose another --outfile"
  )
  try:
    data = outputs.read_regular_file(sidecar, "settings file", damaged)
    stored = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise InputError(f"settings file {sidecar} is damaged ({e}); {damaged}") from None
  if not isinstance(stored, dict):
    raise InputError(
      f"settings file {sidecar} holds {type(stored).__name__} {str(stored)[:40]}, not the "
      f"settings of a run; {damaged}"
    )
  return stored
