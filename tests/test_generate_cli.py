"""generate.py as a user runs it: outputs, the judge's summary, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, run, run_processes, tiny_run, train_tiny

# End-to-end runs (deselected by -m "not slow").
pytestmark = pytest.mark.slow

STEPS = ["--steps=4", "--eps=3.0"]


def make_workdirs(root, tmp_path_factory):
  run_dir, judge = str(root / "run"), str(root / "judge")
  # A copy of the session's tiny run (Gaussian noise, sigma 0.25): generate.py caches its
  # seed Gaussians in the workdir.
  shutil.copytree(tiny_run(tmp_path_factory), run_dir)
  train_tiny(judge, "--config.seed=1", "--config.mode=standard", "--config.noise_sd=0.0")
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
  proc = run(
    "generate.py",
    f"--workdir={run_dir}",
    f"--outdir={copy}",
    "--classes=1,7",
    "--per_class=4",
    "--m=4",
    *STEPS,
  )
  assert "resuming: 6 of 8 images" in proc.stdout
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
  from smoothjax.cli import generate

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
  ({"m": 4, "sigma": -1.0}, "--sigma must be > 0"),
  ({"judge": "SELF"}, "the generating run itself"),
]


def check_bad_input(workdirs, tmp_path):
  """One-line errors through the program, InputErrors in process; nothing written."""
  from smoothjax.cli import generate
  from smoothjax.errors import InputError

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
  from smoothjax.cli import generate
  from smoothjax.errors import InputError

  assert generate.parse_classes("0, 3,7") == (0, 3, 7) and generate.parse_classes("") is None
  with pytest.raises(InputError, match="comma-separated"):
    generate.parse_classes("a")
