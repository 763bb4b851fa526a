"""Tests for the resumable result files and the reader of Cohen et al.'s format."""

from __future__ import annotations

import datetime
import errno
import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax import hashing, results
from smoothjax.errors import InputError
from smoothjax.results import (
  CERTIFY_COLUMNS,
  PREDICT_COLUMNS,
  ResultWriter,
  format_value,
  parse_time,
  read_results,
  settings_path,
)

COLUMNS = CERTIFY_COLUMNS + ("p_lower", "count", "n", "radius_l1")
SETTINGS = {"n0": 100, "n": 1000, "alpha": 0.001, "sigma": 0.25, "seed": 0}


def make_row(i: int) -> dict:
  label = i % 3
  predict = -1 if i % 4 == 3 else (label if i % 5 else (label + 1) % 3)
  return {
    "idx": i,
    "label": label,
    "predict": predict,
    "radius": 0.0 if predict == -1 else 0.1 * i + 0.01234,
    "correct": int(predict == label),
    "time": 1.5 + i,
    "p_lower": 0.5 + i / 100,
    "count": 900 + i,
    "n": 1000,
    "radius_l1": 0.0 if predict == -1 else 0.3 * i,
  }


def write_all(path, rows, **kwargs):
  with ResultWriter(path, COLUMNS, settings=SETTINGS, **kwargs) as w:
    for row in rows:
      if row["idx"] not in w.done:
        w.write(row)
    return set(w.done)


def test_new_file_has_header_and_settings(tmp_path):
  path = tmp_path / "sub" / "dir" / "certify.tsv"
  with ResultWriter(path, COLUMNS, settings=SETTINGS) as w:
    assert w.done == set()
  assert path.read_text() == "\t".join(COLUMNS) + "\n"
  assert json.loads(open(settings_path(path)).read()) == SETTINGS


def test_row_format_matches_cohen_columns(tmp_path):
  path = tmp_path / "c.tsv"
  with ResultWriter(path, COLUMNS) as w:
    w.write(
      {
        "idx": np.int64(7),
        "label": 3,
        "predict": np.int32(3),
        "radius": np.float32(0.5),
        "correct": True,
        "time": 1.234567,
        "p_lower": 0.69146246,
        "count": 990,
        "n": 1000,
        "radius_l1": jnp.asarray(1.0 / 3.0),
      }
    )
  line = path.read_text().splitlines()[1]
  # Cohen's radius with 4 decimals; per-norm radii (linf ones are small) with 6 digits.
  assert line == "7\t3\t3\t0.5000\t1\t0:00:01.234567\t0.691462\t990\t1000\t0.333333"
  assert str(datetime.timedelta(seconds=1.234567)) == "0:00:01.234567"


def test_resume_reads_done_and_appends(tmp_path):
  path = tmp_path / "c.tsv"
  rows = [make_row(i) for i in range(10)]
  assert write_all(path, rows[:6]) == set(range(6))
  with ResultWriter(path, COLUMNS, settings=SETTINGS) as w:
    assert w.done == set(range(6))
    with pytest.raises(ValueError, match="already"):
      w.write(rows[2])  # A duplicate row would double-count an input.
  assert write_all(path, rows) == set(range(10))
  uninterrupted = tmp_path / "u.tsv"
  write_all(uninterrupted, rows)
  assert path.read_bytes() == uninterrupted.read_bytes()
  assert list(read_results(path).idx) == list(range(10))


def test_truncated_last_line_is_rewritten(tmp_path):
  rows = [make_row(i) for i in range(8)]
  reference = tmp_path / "reference.tsv"
  write_all(reference, rows)
  full_lines = reference.read_bytes().split(b"\n")
  path = tmp_path / "killed.tsv"
  write_all(path, rows[:5])
  # Killed while writing row 5: part of its line, no newline.
  with open(path, "ab") as f:
    f.write(full_lines[6][:9])
  assert read_results(path).idx.tolist() == [0, 1, 2, 3, 4]
  with ResultWriter(path, COLUMNS, settings=SETTINGS) as w:
    assert w.done == {0, 1, 2, 3, 4}
    assert path.read_bytes().endswith(b"\n")
  write_all(path, rows)
  assert path.read_bytes() == reference.read_bytes()


def test_header_cut_off_starts_afresh(tmp_path):
  path = tmp_path / "c.tsv"
  path.write_text("idx\tlab")
  assert write_all(path, [make_row(0)]) == {0}
  assert path.read_text().splitlines()[0] == "\t".join(COLUMNS)


def test_header_mismatch_is_input_error(tmp_path):
  path = tmp_path / "c.tsv"
  write_all(path, [make_row(0)])
  with pytest.raises(InputError, match="outfile"):
    ResultWriter(path, CERTIFY_COLUMNS, settings=SETTINGS)
  with pytest.raises(InputError, match="columns"):
    ResultWriter(path, PREDICT_COLUMNS)


def test_settings_mismatch_names_the_keys(tmp_path):
  path = tmp_path / "c.tsv"
  write_all(path, [make_row(0)])
  other = dict(SETTINGS, sigma=0.5, workdir="/tmp/x")
  with pytest.raises(InputError, match="sigma") as e:
    ResultWriter(path, COLUMNS, settings=other)
  message = str(e.value)
  assert "workdir" in message and "alpha" not in message and "\n" not in message
  # A file with no rows yet holds nothing to mix up: new settings replace the old.
  empty = tmp_path / "empty.tsv"
  ResultWriter(empty, COLUMNS, settings=SETTINGS).close()
  ResultWriter(empty, COLUMNS, settings=other).close()
  assert json.loads(open(settings_path(empty)).read())["sigma"] == 0.5
  # Tuples, lists and NumPy scalars that are equal are the same settings.
  tuple_settings = dict(SETTINGS, shape=(1, 2), n=np.int64(1000))
  path2 = tmp_path / "d.tsv"
  ResultWriter(path2, COLUMNS, settings=tuple_settings).close()
  ResultWriter(path2, COLUMNS, settings=dict(SETTINGS, shape=[1, 2])).close()


def test_rows_without_settings_file_are_refused(tmp_path):
  path = tmp_path / "c.tsv"
  with ResultWriter(path, COLUMNS) as w:
    w.write(make_row(0))
  with pytest.raises(InputError, match="settings"):
    ResultWriter(path, COLUMNS, settings=SETTINGS)


def test_existing_file_without_resume(tmp_path):
  path = tmp_path / "c.tsv"
  write_all(path, [make_row(0), make_row(1)])
  before = path.read_bytes()
  with pytest.raises(InputError, match="exists"):
    ResultWriter(path, COLUMNS, settings=SETTINGS, resume=False)
  assert path.read_bytes() == before
  with ResultWriter(path, COLUMNS, settings=SETTINGS, resume=False, overwrite=True) as w:
    assert w.done == set()
  assert path.read_text() == "\t".join(COLUMNS) + "\n"


def test_bad_rows_are_value_errors(tmp_path):
  path = tmp_path / "c.tsv"
  with ResultWriter(path, COLUMNS) as w:
    row = make_row(0)
    del row["time"]
    with pytest.raises(ValueError, match="time") as e:
      w.write(row)
    assert not isinstance(e.value, InputError)
    with pytest.raises(ValueError, match="unknown"):
      w.write(dict(make_row(0), extra=1))
    with pytest.raises(ValueError, match="integers"):
      w.write(dict(make_row(0), label=1.5))
    with pytest.raises(ValueError, match="tab"):
      w.write(dict(make_row(0), time="1\t2"))
  assert path.read_text() == "\t".join(COLUMNS) + "\n"


def test_round_trip(tmp_path):
  path = tmp_path / "c.tsv"
  rows = [make_row(i) for i in range(12)]
  write_all(path, rows)
  r = read_results(path)
  assert r.idx.tolist() == [row["idx"] for row in rows]
  assert r.label.tolist() == [row["label"] for row in rows]
  assert r.predict.tolist() == [row["predict"] for row in rows]
  assert r.correct.tolist() == [row["correct"] for row in rows]
  np.testing.assert_allclose(r.radius, [row["radius"] for row in rows], atol=5e-5)
  np.testing.assert_allclose(r.extra["p_lower"], [row["p_lower"] for row in rows], atol=5e-7)
  np.testing.assert_allclose(r.extra["radius_l1"], [row["radius_l1"] for row in rows], atol=5e-5)
  np.testing.assert_array_equal(r.extra["time"], [row["time"] for row in rows])
  np.testing.assert_array_equal(r.extra["count"], [row["count"] for row in rows])
  assert r.has_radius and len(r) == 12 and r.path == os.fspath(path)


COHEN_CERTIFY = (
  "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
  "0\t3\t3\t0.512\t1\t0:00:01.234567\n"
  "20\t8\t-1\t0.0\t0\t0:00:02.500000\n"
  "40\t0\t5\t1.23e-05\t0\t1 day, 0:00:03\n"
  "60\t7\t7\t0.937\t1\t0:01:00.000001\n"
)
COHEN_PREDICT = (
  "idx\tlabel\tpredict\tcorrect\ttime\n0\t3\t3\t1\t0:00:00.120000\n20\t8\t-1\t0\t0:00:00.110000\n"
)


def test_reads_cohen_certify_output(tmp_path):
  path = tmp_path / "cohen_certify.tsv"
  path.write_text(COHEN_CERTIFY + "80\t2\t2\t0.3")  # A cut-off last line is ignored.
  r = read_results(path)
  assert r.idx.tolist() == [0, 20, 40, 60]
  assert r.label.tolist() == [3, 8, 0, 7]
  assert r.predict.tolist() == [3, -1, 5, 7]
  assert r.correct.tolist() == [1, 0, 0, 1]
  np.testing.assert_array_equal(r.radius, [0.512, 0.0, 1.23e-05, 0.937])
  np.testing.assert_allclose(r.extra["time"], [1.234567, 2.5, 86403.0, 60.000001], rtol=1e-12)
  assert r.idx.dtype == np.int64 and r.radius.dtype == np.float64


def test_reads_cohen_predict_output(tmp_path):
  path = tmp_path / "cohen_predict.tsv"
  path.write_text(COHEN_PREDICT)
  r = read_results(path)
  assert r.predict.tolist() == [3, -1] and r.correct.tolist() == [1, 0]
  assert np.isnan(r.radius).all() and r.radius.shape == (2,) and not r.has_radius
  np.testing.assert_allclose(r.extra["time"], [0.12, 0.11])


def test_parse_time_inverts_timedelta_str():
  for seconds in [0.0, 1.234567, 59.999999, 3725.5, 90061.000001, 3 * 86400 + 7]:
    assert parse_time(str(datetime.timedelta(seconds=seconds))) == pytest.approx(seconds, abs=1e-6)
    assert format_value("time", seconds) == str(datetime.timedelta(seconds=seconds))


def test_read_errors(tmp_path):
  with pytest.raises(InputError, match="does not exist"):
    read_results(tmp_path / "missing.tsv")
  bad = tmp_path / "bad.tsv"
  bad.write_text("index\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\n")
  with pytest.raises(InputError, match="idx"):
    read_results(bad)
  ragged = tmp_path / "ragged.tsv"
  ragged.write_text(COHEN_CERTIFY + "1\t2\n")
  with pytest.raises(InputError, match="line 6"):
    read_results(ragged)
  empty = tmp_path / "empty.tsv"
  empty.write_text("")
  with pytest.raises(InputError, match="header"):
    read_results(empty)


# --------------------------------------------------------------------------
# Validation, duplicates, paths and damaged files (issue 7).

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
GOOD_ROW = "0\t3\t3\t0.5\t1\t0:00:01\n"


@pytest.mark.parametrize(
  "row,problem",
  [
    ("5\t1\t-1\t2.0\t0\t0:00:01", "an abstention (predict -1) has radius 2.0, not 0"),
    ("5\t1\t-1\t0.0\t1\t0:00:01", "an abstention (predict -1) is marked correct"),
    ("5\t1\t1\t-0.5\t1\t0:00:01", "radius -0.5 is negative"),
    ("5\t1\t1\tnan\t1\t0:00:01", "radius nan is not a finite number"),
    ("5\t1\t1\tinf\t1\t0:00:01", "radius inf is not a finite number"),
    ("5\t1\t2\t0.5\t1\t0:00:01", "correct is 1 but predict 2 and label 1 say 0"),
    ("5\t1\t1\t0.5\t0\t0:00:01", "correct is 0 but predict 1 and label 1 say 1"),
    ("5\t1\t1\t0.5\t2\t0:00:01", "correct is 2, not 0 or 1"),
    ("5\t1\t-2\t0.0\t0\t0:00:01", "predict -2 is below -1"),
    ("-5\t1\t1\t0.5\t1\t0:00:01", "idx -5 is negative"),
    ("5\t-1\t-1\t0.0\t0\t0:00:01", "label -1 is negative"),
    ("5\t1\tone\t0.5\t1\t0:00:01", "predict 'one' is not a number"),
  ],
)
def test_inconsistent_rows_are_refused_naming_file_and_line(tmp_path, row, problem):
  path = tmp_path / "edited.tsv"
  path.write_text(HEADER + GOOD_ROW + row + "\n")
  with pytest.raises(InputError) as e:
    read_results(path)
  message = str(e.value)
  assert message.startswith(f"{path} line 3: {problem}"), message
  assert "\n" not in message


@pytest.mark.parametrize(
  "row,problem",
  [
    ("5\t1\t-1\t1\t0:00:01", "an abstention (predict -1) is marked correct"),
    ("5\t1\t2\t1\t0:00:01", "correct is 1 but predict 2"),
  ],
)
def test_inconsistent_prediction_rows_are_refused(tmp_path, row, problem):
  path = tmp_path / "pred.tsv"
  path.write_text(COHEN_PREDICT + row + "\n")
  with pytest.raises(InputError, match=re.escape(f"line 4: {problem}")):
    read_results(path)


def test_writer_never_writes_an_inconsistent_row(tmp_path):
  path = tmp_path / "c.tsv"
  with ResultWriter(path, COLUMNS) as w:
    for bad in [
      dict(make_row(3), radius=0.5),  # make_row(3) abstains
      dict(make_row(1), radius=float("nan")),
      dict(make_row(1), radius=float("inf")),
      dict(make_row(1), correct=0),
    ]:
      with pytest.raises(ValueError, match="inconsistent row"):
        w.write(bad)
  assert path.read_text() == "\t".join(COLUMNS) + "\n"


def test_verbatim_duplicates_count_once_with_a_note(tmp_path, capsys):
  path = tmp_path / "dup.tsv"
  # Same row twice, only the time differs (two runs of one input).
  path.write_text(COHEN_CERTIFY + "20\t8\t-1\t0.0\t0\t0:00:09\n")
  r = read_results(path)
  assert r.idx.tolist() == [0, 20, 40, 60]
  assert "repeats 1 row(s) verbatim" in capsys.readouterr().err


def test_conflicting_duplicates_are_refused_naming_idx_and_lines(tmp_path):
  path = tmp_path / "mixed.tsv"
  path.write_text(COHEN_CERTIFY + "20\t8\t8\t0.3\t1\t0:00:01\n")
  with pytest.raises(InputError, match=r"two different rows for idx 20 \(lines 3 and 6\)"):
    read_results(path)


def test_resume_removes_verbatim_duplicates_and_refuses_conflicts(tmp_path):
  path = tmp_path / "c.tsv"
  write_all(path, [make_row(i) for i in range(4)])
  clean = path.read_bytes()
  lines = clean.decode().splitlines(keepends=True)
  path.write_text("".join(lines + [lines[2]]))  # Row of idx 1 appended again.
  with ResultWriter(path, COLUMNS, settings=SETTINGS) as w:
    assert w.done == {0, 1, 2, 3}
    assert w.existing.idx.tolist() == [0, 1, 2, 3]
  assert path.read_bytes() == clean  # Rewritten with each row once.
  conflicting = lines[2].replace("\t0.1123\t", "\t0.9000\t")
  assert conflicting != lines[2]
  path.write_text("".join(lines + [conflicting]))
  before = path.read_bytes()
  with pytest.raises(InputError, match=r"idx 1 \(lines 3 and 6\)"):
    ResultWriter(path, COLUMNS, settings=SETTINGS)
  assert path.read_bytes() == before


def test_crlf_header_is_reported_as_windows_line_endings(tmp_path):
  path = tmp_path / "c.tsv"
  write_all(path, [make_row(0)])
  path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
  with pytest.raises(InputError, match=r"Windows line endings \(CRLF\)") as e:
    ResultWriter(path, COLUMNS, settings=SETTINGS)
  assert str(e.value).count("idx") == 0  # No column lists that look identical.
  assert read_results(path).idx.tolist() == [0]  # Readers accept CRLF files.


@pytest.mark.parametrize(
  "make,kind", [(os.mkfifo, "a FIFO"), (os.mkdir, "a directory")], ids=["fifo", "directory"]
)
def test_non_regular_files_are_refused_without_blocking(tmp_path, make, kind):
  path = tmp_path / "special"
  make(path)
  with pytest.raises(InputError, match=f"is {kind}"):
    read_results(path)
  with pytest.raises(InputError, match=f"is {kind}"):
    ResultWriter(path, COLUMNS, settings=SETTINGS)
  assert not os.path.exists(settings_path(path))


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_devices_are_refused(device):
  if not os.path.exists(device):
    pytest.skip(f"no {device}")
  with pytest.raises(InputError, match="is a device"):
    read_results(device)
  with pytest.raises(InputError, match="is a device"):
    ResultWriter(device, COLUMNS)


def test_binary_data_is_not_a_result_file(tmp_path):
  path = tmp_path / "plot.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n")
  with pytest.raises(InputError, match="binary data"):
    read_results(path)
  latin1 = tmp_path / "latin1.tsv"
  latin1.write_bytes(HEADER.encode() + "0\t3\t3\t0.5\t1\t\xe9t\xe9\n".encode("latin-1"))
  with pytest.raises(InputError, match="not UTF-8 text"):
    read_results(latin1)


def test_output_under_a_file_or_read_only_is_refused(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(InputError, match="is a file, not a folder"):
    ResultWriter(blocker / "sub" / "c.tsv", COLUMNS)
  assert results.check_output_path(tmp_path / "new" / "c.tsv") == str(tmp_path / "new" / "c.tsv")
  existing = tmp_path / "ro.tsv"
  existing.write_text("\t".join(COLUMNS) + "\n")
  if os.geteuid() == 0:
    # root writes read-only files anyway: make access() answer as for a user.
    monkeypatch.setattr(os, "access", lambda p, mode: False)
  else:
    existing.chmod(0o444)
  with pytest.raises(InputError, match="is read-only"):
    ResultWriter(existing, COLUMNS)


@pytest.mark.parametrize("content", ["[1, 2]", "{corrupt", "\x00\x01"])
def test_damaged_settings_file_says_to_delete_both_files(tmp_path, content):
  path = tmp_path / "c.tsv"
  write_all(path, [make_row(0)])
  with open(settings_path(path), "w") as f:
    f.write(content)
  with pytest.raises(InputError) as e:
    ResultWriter(path, COLUMNS, settings=SETTINGS)
  message = str(e.value)
  assert f"delete both it and {path}" in message and "\n" not in message
  # The advice works: with both files gone the run starts afresh.
  os.remove(path)
  os.remove(settings_path(path))
  assert write_all(path, [make_row(0)]) == {0}


def test_settings_never_hold_nan(tmp_path):
  path = tmp_path / "c.tsv"
  with pytest.raises(ValueError, match="NaN"):
    ResultWriter(path, COLUMNS, settings=dict(SETTINGS, sigma=float("nan")))
  assert not path.exists() and not os.path.exists(settings_path(path))


def test_settings_mismatch_hint(tmp_path):
  path = tmp_path / "c.tsv"
  write_all(path, [make_row(0)])
  hint = "the checkpoint holds other parameters (retrained?)"
  with pytest.raises(InputError, match=r"retrained\?\); rerun with the same settings"):
    ResultWriter(path, COLUMNS, settings=dict(SETTINGS, seed=1), hints={"seed": hint})


class _FullDisk:
  """Stands in for the open file: takes part of a line, then fails like a full disk."""

  def __init__(self, file):
    self._file = file

  def write(self, text):
    self._file.write(text[:5])
    self._file.flush()
    raise OSError(errno.ENOSPC, "No space left on device")

  def __getattr__(self, name):
    return getattr(self._file, name)


def test_disk_full_is_one_line_and_rerunning_resumes(tmp_path):
  path = tmp_path / "c.tsv"
  rows = [make_row(i) for i in range(4)]
  reference = tmp_path / "reference.tsv"
  write_all(reference, rows)
  with ResultWriter(path, COLUMNS, settings=SETTINGS) as w:
    w.write(rows[0])
    w._file = _FullDisk(w._file)
    with pytest.raises(InputError) as e:
      w.write(rows[1])
    with pytest.raises(ValueError, match="closed"):
      w.write(rows[2])  # Nothing is appended after a half-written row.
  message = str(e.value)
  assert message.startswith(f"the disk is full writing {path}") and "resumes" in message
  assert not path.read_text().endswith("\n")  # Part of row 1 reached the file.
  assert write_all(path, rows) == {0, 1, 2, 3}
  assert path.read_bytes() == reference.read_bytes()


def test_input_hashes_and_fingerprint():
  rng = np.random.default_rng(0)
  images = rng.random((3, 4, 4, 1), dtype=np.float32)
  labels = np.array([1, 2, 3])
  hashes = hashing.input_hashes(images, labels)
  assert len(set(hashes)) == 3 and all(len(h) == 16 for h in hashes)
  assert hashing.input_hashes(images.copy(), labels.copy()) == hashes
  changed = images.copy()
  changed[1, 0, 0, 0] += 1e-6
  changed_hashes = hashing.input_hashes(changed, labels)
  assert changed_hashes[0] == hashes[0] and changed_hashes[1] != hashes[1]
  assert hashing.input_hashes(images, [1, 0, 3])[1] != hashes[1]
  tree = {"a": np.arange(3.0), "b": {"c": np.ones((2, 2), np.float32)}}
  same = {"b": {"c": np.ones((2, 2), np.float32)}, "a": np.arange(3.0)}
  assert hashing.fingerprint(tree) == hashing.fingerprint(same)
  assert hashing.fingerprint(tree).startswith("sha256:")
  other = {"a": np.arange(3.0), "b": {"c": np.full((2, 2), 1.0 + 2**-20, np.float32)}}
  assert hashing.fingerprint(other) != hashing.fingerprint(tree)
  assert hashing.fingerprint({"a": np.arange(3.0)}) != hashing.fingerprint(tree)


def split_of(labels):
  """A dataset split of random 4x4 images with ``labels``."""
  from smoothjax import data

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (len(labels), 4, 4, 1), dtype=np.uint8)
  return data.ArraySplit(images, np.asarray(labels, np.int64))


@pytest.mark.parametrize("part", [False, True])
def test_a_row_whose_label_was_edited_is_refused(tmp_path, part):
  split = split_of([1, 0, 2])
  images, labels = split.get(np.arange(3))
  hashes = hashing.input_hashes(images, labels)
  path = tmp_path / "c.tsv"
  written = results.part_path(path, 1, 2) if part else str(path)
  columns = CERTIFY_COLUMNS + (results.INPUT_HASH_COLUMN,)
  with ResultWriter(written, columns, settings=SETTINGS) as w:
    for i, (label, predict) in enumerate([(1, 1), (0, 3), (2, 2)]):
      row = dict(idx=i, label=label, predict=predict, radius=0.5, time=1.0, input_hash=hashes[i])
      w.write(dict(row, correct=int(predict == label)))
  results.check_inputs_unchanged(read_results(written), split, written, "test")
  # Input 1 (label 0, predicted 3) edited into a correct row, its input_hash kept.
  text = open(written).read()
  assert "\n1\t0\t3\t0.5000\t0\t" in text
  open(written, "w").write(text.replace("\n1\t0\t3\t0.5000\t0\t", "\n1\t3\t3\t0.5000\t1\t"))
  edited = read_results(written)
  assert edited.correct.tolist() == [1, 1, 1]  # consistent with itself: the reader keeps it
  with pytest.raises(InputError) as e:
    results.check_inputs_unchanged(edited, split, written, "test")
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"{written}: the row of input 1 has label 3")
  assert "gives that input label 0" in message and "edited or comes from another dataset" in message
  assert message.endswith("write into another --outfile, or delete the row")


def test_settings_mismatch_shows_where_long_values_differ(tmp_path):
  path = tmp_path / "r.tsv"
  old = {"workdir": "/data/experiments/runs/mnist/sigma025/seed0"}
  new = {"workdir": "/data/experiments/runs/mnist/sigma050/seed0"}
  with results.ResultWriter(path, results.CERTIFY_COLUMNS, settings=old) as w:
    w.write(dict(idx=0, label=1, predict=1, radius=0.5, correct=1, time=0.1))
  with pytest.raises(InputError) as e:
    results.ResultWriter(path, results.CERTIFY_COLUMNS, settings=new)
  assert "sigma025" in str(e.value) and "sigma050" in str(e.value)


# --------------------------------------------------------------------------
# Results written by several processes: part files beside the result file.


def write_parts(path, count, rows, settings=SETTINGS):
  """Each process i of count writes rows[i::count] into its part, as results.shares does."""
  for i in range(count):
    part = results.part_path(path, i, count)
    with ResultWriter(part, COLUMNS, settings=settings) as w:
      for row in rows[i::count]:
        w.write(row)


def test_part_paths_find_only_parts_ordered_by_count_and_index(tmp_path):
  path = tmp_path / "c.tsv"
  write_parts(path, 3, [make_row(i) for i in range(6)])
  write_parts(path, 2, [make_row(i) for i in range(6, 8)])
  (tmp_path / "c.tsv.part-x-of-2").write_text("not a part")
  (tmp_path / "d.tsv.part-0-of-2").write_text("another result's part")
  names = [os.path.basename(p) for p in results.part_paths(path)]
  assert names == [f"c.tsv.part-{i}-of-{n}" for n, i in ((2, 0), (2, 1), (3, 0), (3, 1), (3, 2))]
  assert results.part_paths(tmp_path / "none.tsv") == []


def test_parts_read_as_one_result_then_merge_sorted_and_removed(tmp_path, capsys):
  path = tmp_path / "c.tsv"
  rows = [make_row(i) for i in range(10)]
  write_all(path, rows[:3])  # rows a single-process run wrote first
  write_parts(path, 2, rows[3:8])
  write_parts(path, 3, rows[8:])  # resumed on three processes
  res = read_results(path)
  assert sorted(res.idx.tolist()) == list(range(10)) and res.path == str(path)
  assert results.read_settings(path) == SETTINGS
  # A part killed while writing its header holds no rows and is skipped.
  (tmp_path / "c.tsv.part-2-of-3").write_text("idx\tlab")
  assert len(read_results(path)) == 10
  assert results.merge_parts(path) == 10
  assert sorted(os.listdir(tmp_path)) == ["c.tsv", "c.tsv.settings.json"]
  uninterrupted = tmp_path / "u.tsv"
  write_all(uninterrupted, rows)
  assert path.read_bytes() == uninterrupted.read_bytes()  # sorted by idx, one header
  assert json.loads(open(settings_path(path)).read()) == SETTINGS
  assert results.merge_parts(path) == 0  # nothing left to merge
  # Only parts (no result file yet): settings and rows come from them.
  only = tmp_path / "only.tsv"
  write_parts(only, 2, rows)
  assert results.read_settings(only) == SETTINGS and len(read_results(only)) == 10
  assert capsys.readouterr().err == ""


def test_a_merge_cut_short_leaves_rows_that_count_once(tmp_path, capsys):
  path = tmp_path / "c.tsv"
  rows = [make_row(i) for i in range(6)]
  write_parts(path, 2, rows)
  write_all(path, rows)  # the merged file written, the parts not yet removed
  assert sorted(read_results(path).idx.tolist()) == list(range(6))
  assert "counted once" in capsys.readouterr().err
  assert results.merge_parts(path) == 6 and not results.part_paths(path)


def test_parts_that_disagree_are_refused(tmp_path):
  path = tmp_path / "c.tsv"
  write_parts(path, 2, [make_row(i) for i in range(4)])
  other = dict(make_row(2), predict=make_row(2)["label"], correct=1, radius=0.5)
  write_parts(path, 1, [other])
  with pytest.raises(InputError, match="two different rows for idx 2"):
    read_results(path)
  os.remove(results.part_path(path, 0, 1))
  write_parts(path, 1, [make_row(9)], settings=dict(SETTINGS, seed=1))
  with pytest.raises(InputError, match="other settings, so they are not parts of one result"):
    read_results(path)
  os.remove(results.part_path(path, 0, 1))
  with ResultWriter(results.part_path(path, 0, 1), CERTIFY_COLUMNS, settings=SETTINGS) as w:
    w.write({k: v for k, v in make_row(9).items() if k in CERTIFY_COLUMNS})
  with pytest.raises(InputError, match="columns .* not parts of one result"):
    read_results(path)
  with pytest.raises(InputError, match="missing.tsv does not exist"):
    results.read_combined(tmp_path / "missing.tsv")
  # A process of a fresh job reads the others before creating its own part: none yet.
  own = results.part_path(tmp_path / "missing.tsv", 0, 2)
  assert results.read_combined(tmp_path / "missing.tsv", exclude=[own]) is None


def test_a_share_refused_by_the_other_files_writes_nothing(tmp_path):
  from smoothjax.results import shares

  path = tmp_path / "c.tsv"
  write_parts(path, 2, [make_row(i) for i in range(4)])
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(InputError, match=r"c.tsv.part-0-of-2 was written with other settings \(n: "):
    with shares.open_share(str(path), COLUMNS, settings=dict(SETTINGS, n=2000)):
      pass
  assert sorted(os.listdir(tmp_path)) == before  # no result file, settings or lock
  # The same settings: the parts' rows are done, and the end merges them.
  with shares.open_share(str(path), COLUMNS, settings=SETTINGS) as share:
    assert share.done == set(range(4)) and list(share.todo(range(6))) == [4, 5]
    share.write(make_row(4))
  assert sorted(read_results(path).idx.tolist()) == list(range(5))
  assert results.part_paths(path) == [] and not os.path.exists(f"{path}.lock")


@pytest.mark.parametrize("bare", ["part", "file"])
def test_a_missing_settings_file_is_named_not_called_other_settings(tmp_path, bare):
  path = tmp_path / "c.tsv"
  rows = [make_row(i) for i in range(6)]
  write_all(path, rows[:2])
  write_parts(path, 2, rows[2:])
  missing = results.part_path(path, 1, 2) if bare == "part" else str(path)
  os.remove(settings_path(missing))
  other = str(path) if bare == "part" else results.part_path(path, 0, 2)
  with pytest.raises(InputError) as e:
    read_results(path)
  message = str(e.value)
  assert message == (
    f"the settings file {missing}.settings.json of {missing} is missing, so its rows cannot be "
    f"trusted to match those of {other}; move {missing} away, or delete it to recompute its rows"
  )
