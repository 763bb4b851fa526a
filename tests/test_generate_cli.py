"""generate.py as a user runs it: outputs, the judge's summary, resume, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import zipfile

import numpy as np
import pytest
from conftest import STANDARD, assert_one_line_error, run, run_processes, tiny_run

from smoothjax.errors import InputError
from smoothjax.jobs import generate
from smoothjax.results import parts as part_files

STEPS = ["--steps=4", "--eps=3.0"]


def make_workdirs(root, tmp_path_factory):
  run_dir, judge = str(root / "run"), str(root / "judge")
  # A copy of the session's tiny run (Gaussian noise, sigma 0.25): generate.py caches its
  # seed Gaussians in the workdir.
  shutil.copytree(tiny_run(tmp_path_factory), run_dir)
  shutil.copytree(tiny_run(tmp_path_factory, *STANDARD), judge)  # trained without noise
  return root, run_dir, judge


def generate_first(workdirs):
  root, run_dir, judge = workdirs
  outdir = str(root / "out")
  proc = run(
    "generate.py",
    f"--workdir={run_dir}",
    f"--outdir={outdir}",
    "--classes=1,7",
    "--per_class=3",
    "--m=4",
    f"--judge={judge}",
    "--show_seeds",
    *STEPS,
  )
  return outdir, proc


def load(outdir):
  with np.load(os.path.join(outdir, "generated.npz")) as f:
    return {k: f[k] for k in f.files}


def check_outputs(generated):
  outdir, proc = generated
  arrays = load(outdir)
  assert arrays["images"].shape == (6, 28, 28, 1) and arrays["seeds"].shape == (6, 28, 28, 1)
  assert list(arrays["targets"]) == [1, 1, 1, 7, 7, 7] and list(arrays["index"]) == [0, 1, 2] * 2
  assert arrays["images"].min() >= 0 and arrays["images"].max() <= 1
  l2 = np.linalg.norm((arrays["images"] - arrays["seeds"]).reshape(6, -1), axis=1)
  np.testing.assert_allclose(arrays["l2"], l2, rtol=1e-5)
  assert np.all(l2 <= 3.0 + 1e-4) and np.all(l2 > 0)
  assert np.all((arrays["confidence"] >= 0) & (arrays["confidence"] <= 1))
  with open(os.path.join(outdir, "summary.json")) as f:
    summary = json.load(f)
  overall = summary["overall"]
  accuracy = np.mean(arrays["judge_predictions"] == arrays["targets"])
  assert overall["judge_accuracy"] == pytest.approx(accuracy)
  assert overall["l2_to_seed"] == pytest.approx(l2.mean(), rel=1e-5)
  assert set(summary["per_class"]) == {"1", "7"}
  assert "| all | 6 |" in proc.stdout and "judge acc" in proc.stdout
  with open(os.path.join(outdir, "grid.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(outdir, "settings.json")) as f:
    settings = json.load(f)
  assert settings["noise"] == "gaussian:0.25" and settings["m"] == 4


def check_resume_and_independence(generated, workdirs):
  root, run_dir, judge = workdirs
  outdir, _ = generated
  first = load(outdir)
  copy = str(root / "more")
  shutil.copytree(outdir, copy)
  # The job from Python resumes what generate.py wrote.
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    generate.run(
      generate.Options(
        workdir=run_dir, outdir=copy, classes=(1, 7), per_class=4, m=4, steps=4, eps=3.0
      )
    )
  assert "resuming: 6 of 8 images" in printed.getvalue()
  more = load(copy)
  assert list(more["targets"]) == [1] * 4 + [7] * 4
  np.testing.assert_array_equal(more["images"][[0, 1, 2, 4, 5, 6]], first["images"])
  # Alone, in other batches, on 2 processes of 2 devices (each its share), the images of
  # class 7 come out the same.
  alone = str(root / "alone")
  args = [f"--workdir={run_dir}", f"--outdir={alone}", "--classes=7", "--per_class=3", "--m=4"]
  outcomes = run_processes(
    ["generate.py", *args, "--batch=2", *STEPS], 2, devices=2, what="2-process generate"
  )
  assert "| all | 3 |" in outcomes[0][1] and "process 0 writes" in outcomes[1][1]
  assert sorted(os.listdir(os.path.join(alone, "parts"))) == [
    "part-0-of-2-000000.npz",
    "part-1-of-2-000000.npz",
  ]
  np.testing.assert_allclose(load(alone)["images"], first["images"][3:], rtol=1e-5, atol=1e-5)


def check_real_seeds_in_linf(workdirs):
  root, run_dir, _ = workdirs
  outdir = str(root / "linf")
  options = generate.Options(
    workdir=run_dir,
    outdir=outdir,
    classes=(0,),
    per_class=2,
    m=0,
    seed_dist="real",
    norm="linf",
    eps=0.2,
    steps=3,
    loss="tcm",
  )
  summary = generate.run_generate(options)
  assert summary["overall"]["images"] == 2 and "judge_accuracy" not in summary["overall"]
  arrays = load(outdir)
  assert np.abs(arrays["images"] - arrays["seeds"]).max() <= 0.2 + 1e-6
  # Real seeds are test digits.
  from smoothjax import data

  test_images, _ = data.load("embedded_mnist").split("test").get(np.arange(1000))
  for seed in arrays["seeds"]:
    assert np.any(np.all(np.isclose(test_images, seed), axis=(1, 2, 3)))


def check_other_settings_refused(generated, workdirs):
  _, run_dir, _ = workdirs
  outdir, _ = generated
  before = os.listdir(os.path.join(outdir, "parts"))
  proc = run(
    "generate.py",
    f"--workdir={run_dir}",
    f"--outdir={outdir}",
    "--classes=1,7",
    "--per_class=3",
    "--m=4",
    "--loss=tcm",
    *STEPS,
    check=False,
  )
  assert_one_line_error(proc, "other settings (loss 'ce' -> 'tcm')")
  assert os.listdir(os.path.join(outdir, "parts")) == before


def other_dataset_judge(root, judge) -> str:
  """A copy of the judge whose config names another dataset."""
  other = str(root / "other_dataset")
  if not os.path.exists(other):
    shutil.copytree(judge, other)
    with open(os.path.join(other, "config.json")) as f:
      config = json.load(f)
    config["dataset"] = "fashion_mnist"
    with open(os.path.join(other, "config.json"), "w") as f:
      json.dump(config, f)
  return other


PROGRAM_ERRORS = [
  (["--loss=hinge"], "unknown --loss 'hinge'"),
  (["--judge=OTHER"], "a judge must classify the same dataset"),
]
OPTION_ERRORS = [
  ({"classes": (3, 10)}, "class 10 is out of range"),
  ({"seed_dist": "gan"}, "unknown --seed_dist"),
  ({"per_class": 0}, "--per_class must be >= 1"),
  ({"judge": "MISSING"}, "nowhere"),
  ({"seed_factor": 3}, "must divide the image size 28x28"),
  ({"norm": "l1"}, "unknown --norm"),
  ({"m": 4, "sigma": -1.0}, "--sigma must be a finite number > 0"),
  ({"judge": "SELF"}, "the generating run itself"),
]


def check_bad_input(workdirs, tmp_path):
  """One-line errors through the program, InputErrors in process; nothing written."""
  root, run_dir, judge = workdirs
  other = other_dataset_judge(root, judge)
  outdir = tmp_path / "bad"
  for args, message in PROGRAM_ERRORS:
    args = [a.replace("OTHER", other) for a in args]
    proc = run("generate.py", f"--workdir={run_dir}", f"--outdir={outdir}", *args, check=False)
    assert_one_line_error(proc, message)
    assert not outdir.exists()
  paths = {"MISSING": str(tmp_path / "nowhere"), "SELF": run_dir}
  for options, message in OPTION_ERRORS:
    options = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(InputError, match=message):
      generate.run_generate(generate.Options(workdir=run_dir, outdir=str(outdir), **options))
    assert not outdir.exists()


@pytest.mark.slow  # End-to-end runs (deselected by -m "not slow").
def test_generate_end_to_end(tmp_path_factory):
  """One test, so that the trained runs are built once whatever the xdist split."""
  root = tmp_path_factory.mktemp("generate")
  workdirs = make_workdirs(root, tmp_path_factory)
  generated = generate_first(workdirs)
  check_outputs(generated)
  check_resume_and_independence(generated, workdirs)
  check_real_seeds_in_linf(workdirs)
  check_other_settings_refused(generated, workdirs)
  check_bad_input(workdirs, tmp_path_factory.mktemp("bad"))


def test_parse_classes():
  assert generate.parse_classes("0, 3,7") == (0, 3, 7) and generate.parse_classes("") is None
  with pytest.raises(InputError, match="comma-separated"):
    generate.parse_classes("a")


@pytest.mark.parametrize("name", ["eps", "step_size", "sigma"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_infinite_settings_are_refused_as_not_finite(tmp_path, name, value):
  options = generate.Options(workdir="w", outdir=str(tmp_path / "out"), **{name: value})
  with pytest.raises(InputError, match=f"^--{name} must be a finite number > 0, got "):
    generate.check_options(options)


def test_a_copy_of_the_generating_run_is_no_judge(tmp_path, tmp_path_factory):
  run_dir, copy, outdir = tmp_path / "run", tmp_path / "judge", tmp_path / "out"
  shutil.copytree(tiny_run(tmp_path_factory), run_dir)  # (generating would write into it)
  shutil.copytree(run_dir, copy)
  options = generate.Options(
    workdir=str(run_dir),
    outdir=str(outdir),
    judge=str(copy),
    classes=(0,),
    per_class=1,
    m=0,
    steps=1,
    seed_dist="uniform",
  )
  with pytest.raises(InputError, match="holds the same parameters as the generating run") as e:
    generate.run_generate(options)
  assert "\n" not in str(e.value) and str(copy) in str(e.value)
  assert not outdir.exists()


# Parts: the finished batches in OUTDIR/parts, read back when resuming.

SETTINGS = {"program": "generate", "m": 4, "steps": 4, "eps": 3.0, "seed": 0}


def part_arrays(classes=(1, 1, 7), index=(0, 1, 0)):
  count = len(classes)
  rng = np.random.default_rng(sum(index))
  return {
    "images": rng.random((count, 4, 4, 1), dtype=np.float32),
    "seeds": rng.random((count, 4, 4, 1), dtype=np.float32),
    "targets": np.asarray(classes, np.int64),
    "index": np.asarray(index, np.int64),
    "confidence": rng.random(count, dtype=np.float32),
  }


def parts_dir(root, settings=SETTINGS):
  """An outdir opened with ``settings`` (as a run opens it); returns its parts folder."""
  root.mkdir(parents=True, exist_ok=True)
  part_files.check_settings(str(root), settings)
  (root / "parts").mkdir(exist_ok=True)
  return root / "parts"


def test_a_part_records_its_settings_and_is_read_back(tmp_path):
  parts = parts_dir(tmp_path / "out")
  arrays = part_arrays()
  assert (
    part_files.write_part(str(parts), "part-", 0, arrays, part_files.settings_digest(SETTINGS)) == 1
  )
  with np.load(parts / "part-000000.npz") as f:
    assert str(f["settings_digest"]) == part_files.settings_digest(SETTINGS)
  done = part_files.read_parts(str(parts), part_files.settings_digest(SETTINGS))
  assert sorted(done) == [(1, 0), (1, 1), (7, 0)]
  np.testing.assert_array_equal(done[(1, 1)]["images"], arrays["images"][1])
  assert len(part_files.settings_digest(SETTINGS)) == 64
  assert part_files.settings_digest(dict(reversed(SETTINGS.items()))) == part_files.settings_digest(
    SETTINGS
  )


def test_parts_of_other_settings_are_set_aside_not_merged(tmp_path, capsys):
  other = dict(SETTINGS, m=8)
  foreign_parts = parts_dir(tmp_path / "other")
  part_files.write_part(
    str(foreign_parts), "part-", 0, part_arrays(), part_files.settings_digest(SETTINGS)
  )
  parts = parts_dir(tmp_path / "out", other)
  mine = part_files.settings_digest(other)
  part_files.write_part(str(parts), "part-", 0, part_arrays(classes=(3,), index=(0,)), mine)
  shutil.copy(foreign_parts / "part-000000.npz", parts / "part-000001.npz")
  np.savez(parts / "part-000002.npz", **part_arrays(classes=(4,), index=(0,)))  # no digest
  (parts / "part-000003.npz.tmp.npz").write_bytes(b"being written")  # another process's
  done = part_files.read_parts(str(parts), part_files.settings_digest(other))
  assert sorted(done) == [(3, 0)]  # only the part of these settings
  assert sorted(os.listdir(parts)) == [
    "part-000000.npz",
    "part-000001.npz.foreign",
    "part-000002.npz.foreign",
    "part-000003.npz.tmp.npz",
  ]
  notes = capsys.readouterr().err.splitlines()
  assert len(notes) == 2 and all(n.startswith("note: set aside the foreign part") for n in notes)
  assert str(parts / "part-000001.npz") in notes[0] and "other settings" in notes[0]
  assert str(parts / "part-000002.npz") in notes[1] and "no settings digest" in notes[1]
  # The next run neither reads nor reports them again.
  assert sorted(part_files.read_parts(str(parts), part_files.settings_digest(other))) == [(3, 0)]
  assert capsys.readouterr().err == ""


def flip_payload_byte(path, member):
  """Flips the last byte of ``member``'s data in the (uncompressed) npz ``path``."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(member)
  data = bytearray(open(path, "rb").read())
  header = data[info.header_offset : info.header_offset + 30]
  start = info.header_offset + 30 + int.from_bytes(header[26:28], "little")
  start += int.from_bytes(header[28:30], "little")
  data[start + info.compress_size - 1] ^= 0xFF
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "crc", "garbage", "empty"])
def test_damaged_parts_are_set_aside_and_generated_again(tmp_path, capsys, damage):
  parts = parts_dir(tmp_path / "out")
  digest = part_files.settings_digest(SETTINGS)
  part_files.write_part(str(parts), "part-", 0, part_arrays(classes=(3,), index=(0,)), digest)
  part_files.write_part(str(parts), "part-", 1, part_arrays(), digest)
  path = parts / "part-000001.npz"
  if damage == "truncated":
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  elif damage == "crc":
    flip_payload_byte(path, "images.npy")
    with np.load(path) as f, pytest.raises(zipfile.BadZipFile, match="CRC"):
      f["images"]
  elif damage == "garbage":
    path.write_bytes(b"not an npz archive")
  else:
    path.write_bytes(b"")
  done = part_files.read_parts(str(parts), digest)
  assert sorted(done) == [(3, 0)]
  assert sorted(os.listdir(parts)) == ["part-000000.npz", "part-000001.npz.damaged"]
  (note,) = capsys.readouterr().err.splitlines()
  assert note.startswith(f"note: set aside the damaged part {path} as part-000001.npz.damaged")
  assert note.endswith("its images are generated again")
  # Damaged again after a rerun: the earlier damaged file is kept beside it.
  part_files.write_part(str(parts), "part-", 1, part_arrays(), digest)
  path.write_bytes(b"")
  assert sorted(part_files.read_parts(str(parts), digest)) == [(3, 0)]
  assert "part-000001.npz.damaged.1" in os.listdir(parts)


@pytest.mark.parametrize(
  "change,problem",
  [
    (dict(targets=np.asarray([1, 7], np.int64)), "different lengths"),
    (dict(index=np.asarray([0.0, 1.0, 0.0])), "not integers"),
    (dict(targets=np.asarray([1.0, 1.0, 7.0])), "not integers"),
    (dict(seeds=np.zeros((3, 4, 4, 3), np.float32)), "not one batch of images"),
    (dict(confidence=np.zeros((3, 2), np.float32)), "one value per image"),
  ],
)
def test_a_part_whose_arrays_do_not_fit_together_is_damaged(tmp_path, capsys, change, problem):
  parts = parts_dir(tmp_path / "out")
  part_files.write_part(
    str(parts), "part-", 0, {**part_arrays(), **change}, part_files.settings_digest(SETTINGS)
  )
  assert part_files.read_parts(str(parts), part_files.settings_digest(SETTINGS)) == {}
  assert os.listdir(parts) == ["part-000000.npz.damaged"]
  (note,) = capsys.readouterr().err.splitlines()
  assert "damaged part" in note and problem in note
