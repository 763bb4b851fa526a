"""Result files: paths, the resumable TSV writer, the reader, and multi-process shares.

* :mod:`~smoothjax.results.paths`: output paths checked before a run, companions
  (``PATH.settings.json``, ``PATH.lock``, parts), one-line write errors.
* :mod:`~smoothjax.results.writer`: :class:`ResultWriter`, resumable TSV files in the
  format of Cohen et al.'s ``certify.py``; merging parts.
* :mod:`~smoothjax.results.reader`: reading ours and Cohen et al.'s files
  (:func:`read_results`, :class:`Results`).
* :mod:`~smoothjax.results.shares`: one part file per process of a multi-process job.
* :mod:`~smoothjax.results.parts`: the npz parts of a folder of generated images.
"""

from smoothjax.results import parts, paths, reader, shares, writer
from smoothjax.results.paths import (
  check_output_path,
  lock_path,
  part_path,
  part_paths,
  read_regular_file,
  settings_path,
  write_error,
)
from smoothjax.results.reader import (
  ABSTAIN,
  CERTIFY_COLUMNS,
  INPUT_HASH_COLUMN,
  INT_COLUMNS,
  PREDICT_COLUMNS,
  RADIUS_COLUMNS,
  REQUIRED_COLUMNS,
  STRING_COLUMNS,
  Combined,
  Parsed,
  Results,
  parse,
  parse_int,
  parse_time,
  read_combined,
  read_results,
  read_settings,
  row_problem,
)
from smoothjax.results.writer import (
  ResultWriter,
  check_inputs_unchanged,
  format_value,
  merge_parts,
  settings_mismatch,
)

__all__ = [
  "parts",
  "ABSTAIN",
  "CERTIFY_COLUMNS",
  "check_inputs_unchanged",
  "check_output_path",
  "Combined",
  "format_value",
  "INPUT_HASH_COLUMN",
  "INT_COLUMNS",
  "lock_path",
  "merge_parts",
  "parse",
  "parse_int",
  "parse_time",
  "Parsed",
  "part_path",
  "part_paths",
  "paths",
  "PREDICT_COLUMNS",
  "RADIUS_COLUMNS",
  "read_combined",
  "read_regular_file",
  "read_results",
  "read_settings",
  "reader",
  "REQUIRED_COLUMNS",
  "Results",
  "ResultWriter",
  "row_problem",
  "settings_mismatch",
  "settings_path",
  "shares",
  "STRING_COLUMNS",
  "write_error",
  "writer",
]
