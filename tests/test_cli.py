"""The programs end to end: train.py and certify.py as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from smoothjax import results


def run(script, *args, check=True, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO_ROOT, script), *map(str, args)],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO_ROOT,
    timeout=600,
  )
  if check and proc.returncode != 0:
    pytest.fail(f"{script} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def assert_one_line_error(proc, pattern):
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr
  error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
  assert len(error_lines) == 1, proc.stderr
  assert pattern in error_lines[0], error_lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cli") / "run"
  run(
    "train.py",
    "--config=configs/default.py",
    f"--workdir={workdir}",
    "--config.model=cnn_tiny",
    "--config.num_epochs=1",
    "--config.progress=False",
  )
  return workdir


CERTIFY_ARGS = ("--n0=20", "--n=300", "--alpha=0.01", "--batch=128", "--skip=97")


def certify_rows(path):
  """File content without the wall-clock column."""
  with open(path) as f:
    lines = [ln.rstrip("\n").split("\t") for ln in f]
  drop = lines[0].index("time")
  return [[c for i, c in enumerate(ln) if i != drop] for ln in lines]


def test_train_writes_a_restorable_workdir(workdir):
  assert (workdir / "config.json").exists() and (workdir / "dataset_info.json").exists()
  assert os.listdir(workdir / "checkpoints") == [str(4000 // 64)]  # one epoch of steps
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1


def test_certify_resume_gives_the_same_file(workdir, tmp_path):
  full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
  out = run("certify.py", f"--workdir={workdir}", f"--outfile={full}", *CERTIFY_ARGS, "--max=6")
  assert "| run | r = 0.00" in out.stdout and "ACR" in out.stdout
  assert (tmp_path / "full.tsv.png").stat().st_size > 1000
  run("certify.py", f"--workdir={workdir}", f"--outfile={part}", *CERTIFY_ARGS, "--max=3")
  # A run killed while writing a row leaves a partial last line.
  with open(part, "a") as f:
    f.write("291\t3\t")
  out = run("certify.py", f"--workdir={workdir}", f"--outfile={part}", *CERTIFY_ARGS, "--max=6")
  assert "resuming: 3 of 6" in out.stdout
  assert certify_rows(part) == certify_rows(full)
  res = results.read_results(full)
  np.testing.assert_array_equal(res.idx, [0, 97, 194, 291, 388, 485])
  assert set(res.predict) <= set(range(-1, 10))
  # Certified rows have radius sigma * Phi^-1(p_lower) and p_lower >= 1/2.
  from scipy.stats import norm

  ok = res.predict >= 0
  np.testing.assert_allclose(res.radius[ok], 0.25 * norm.ppf(res.extra["p_lower"][ok]), atol=2e-4)
  assert np.all(res.extra["count"] <= 300)


def test_certify_on_8_devices_writes_the_same_file(workdir, tmp_path):
  one, eight = tmp_path / "one.tsv", tmp_path / "eight.tsv"
  args = (f"--workdir={workdir}", *CERTIFY_ARGS, "--max=4", "--inputs_per_step=3")
  run("certify.py", f"--outfile={one}", *args)
  run("certify.py", f"--outfile={eight}", *args, devices=8)
  assert certify_rows(one) == certify_rows(eight)
  assert len(certify_rows(one)) == 5


def test_certify_refuses_to_mix_settings(workdir, tmp_path):
  out = tmp_path / "mix.tsv"
  run("certify.py", f"--workdir={workdir}", f"--outfile={out}", *CERTIFY_ARGS, "--max=1")
  proc = run(
    "certify.py",
    f"--workdir={workdir}",
    f"--outfile={out}",
    *CERTIFY_ARGS,
    "--max=2",
    "--sigma=0.5",
    check=False,
  )
  assert_one_line_error(proc, "sigma")
  assert len(out.read_text().splitlines()) == 2  # header + the one row, untouched


def test_predict_mode_and_analyze(workdir, tmp_path):
  pred = tmp_path / "pred.tsv"
  run(
    "certify.py",
    f"--workdir={workdir}",
    f"--outfile={pred}",
    "--predict",
    "--n=200",
    "--alpha=0.01",
    "--skip=199",
    "--batch=100",
  )
  lines = pred.read_text().splitlines()
  assert lines[0].split("\t") == list(results.PREDICT_COLUMNS)
  assert len(lines) == 1 + 6  # inputs 0, 199, ..., 995
  out = run("certify.py", "analyze", str(pred))
  row = [ln for ln in out.stdout.splitlines() if ln.startswith("| pred.tsv (sigma=0.25, n=200)")]
  assert row and "| - |" in row[0]  # no radii in a predict file
  # A file in the format of Cohen et al.'s certify.py beside one of ours.
  cohen = tmp_path / "cohen_noise_0.25.tsv"
  cohen.write_text(
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "0\t3\t3\t0.512\t1\t0:00:01.234567\n"
    "20\t8\t-1\t0.0\t0\t0:00:01.200000\n"
    "40\t1\t1\t1.3\t1\t0:00:01.100000\n"
    "60\t5\t2\t0.9\t0\t0:00:01.000000\n"
  )
  ours = tmp_path / "ours.tsv"
  run("certify.py", f"--workdir={workdir}", f"--outfile={ours}", *CERTIFY_ARGS, "--max=2")
  plot = tmp_path / "both.png"
  out = run("certify.py", "analyze", str(cohen), str(ours), f"--plot={plot}", "--format=markdown")
  cohen_row = [ln for ln in out.stdout.splitlines() if ln.startswith("| cohen_noise_0.25.tsv")][0]
  cells = [c.strip() for c in cohen_row.strip("|").split("|")]
  # r = 0: 2 of 4 correct; r = 0.5: both; r = 0.75: only radius 1.3; ACR (0.512 + 1.3) / 4.
  assert cells[1:5] == ["50.0", "50.0", "50.0", "25.0"]
  assert "0.453" in cells and "25.0" == cells[-1]
  assert any(ln.startswith("| ours.tsv") for ln in out.stdout.splitlines())
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
  "override,pattern",
  [
    ("--config.dataset=not_a_dataset", "not_a_dataset"),
    ("--config.model=resnet9000", "unknown model"),
    ("--config.noise_sd=-0.5", "noise_sd"),
    ("--config.batch_size=0", "batch_size"),
    ("--config.mode=magic", "unknown training mode"),
  ],
)
def test_train_bad_input_is_one_line_and_writes_nothing(tmp_path, override, pattern):
  workdir = tmp_path / "w"
  proc = run(
    "train.py", "--config=configs/default.py", f"--workdir={workdir}", override, check=False
  )
  assert_one_line_error(proc, pattern)
  assert not workdir.exists()


@pytest.mark.parametrize(
  "args,pattern",
  [
    (("--alpha=1.5",), "--alpha"),
    (("--n0=0",), "--n0"),
    (("--n=0",), "--n"),
    (("--sigma=-1",), "--sigma"),
    (("--skip=0",), "--skip"),
  ],
)
def test_certify_bad_input_is_one_line_and_writes_nothing(workdir, tmp_path, args, pattern):
  out = tmp_path / "bad.tsv"
  proc = run("certify.py", f"--workdir={workdir}", f"--outfile={out}", *args, check=False)
  assert_one_line_error(proc, pattern)
  assert not out.exists()


def test_certify_missing_workdir(tmp_path):
  out = tmp_path / "x.tsv"
  proc = run("certify.py", f"--workdir={tmp_path / 'none'}", f"--outfile={out}", check=False)
  assert_one_line_error(proc, "no trained run")
  assert not out.exists()
