"""The programs end to end: train.py and certify.py as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
  IN_PROCESS_CASES,
  REPO_ROOT,
  assert_one_line_error,
  run,
  tiny_run,
  xla_flags,
)

from smoothjax import hashing, jobs, results, smoothing
from smoothjax.errors import InputError


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tiny_run(tmp_path_factory)


CERTIFY_ARGS = ("--n0=20", "--n=300", "--alpha=0.01", "--batch=128", "--skip=97")


def certify_rows(path):
  """File content without the wall-clock column."""
  with open(path) as f:
    lines = [ln.rstrip("\n").split("\t") for ln in f]
  drop = lines[0].index("time")
  return [[c for i, c in enumerate(ln) if i != drop] for ln in lines]


def certify_job(workdir, outfile, **options):
  """The certify job in this process (what certify.py runs) with CERTIFY_ARGS' settings."""
  settings = dict(n0=20, n=300, alpha=0.01, batch=128, skip=97) | options
  options = jobs.certify.Options(workdir=str(workdir), outfile=str(outfile), **settings)
  return jobs.certify.run(options)


def test_train_writes_a_restorable_workdir(workdir):
  assert (workdir / "config.json").exists() and (workdir / "dataset_info.json").exists()
  assert os.listdir(workdir / "checkpoints") == [str(4000 // 64)]  # one epoch of steps
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1


def test_certify_resume_gives_the_same_file(workdir, tmp_path, capsys):
  full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
  out = run("certify.py", f"--workdir={workdir}", f"--outfile={full}", *CERTIFY_ARGS, "--count=6")
  assert "| run | r = 0.00" in out.stdout and "ACR" in out.stdout
  assert (tmp_path / "full.tsv.png").stat().st_size > 1000
  # The job from Python writes what certify.py writes: the program resumes its file.
  options = jobs.certify.Options(
    workdir=workdir, outfile=str(part), n0=20, n=300, alpha=0.01, batch=128, skip=97, count=3
  )
  assert jobs.certify.run(options).idx.tolist() == [0, 97, 194]
  assert results.read_settings(part) == results.read_settings(full)
  # A run killed while writing a row leaves a partial last line.
  with open(part, "a") as f:
    f.write("291\t3\t")
  certify_job(workdir, part, count=6)
  assert "resuming: 3 of 6" in capsys.readouterr().out
  assert certify_rows(part) == certify_rows(full)
  res = results.read_results(full)
  np.testing.assert_array_equal(res.idx, [0, 97, 194, 291, 388, 485])
  assert set(res.predict) <= set(range(-1, 10))
  # Certified rows have radius sigma * Phi^-1(p_lower) and p_lower >= 1/2.
  from scipy.stats import norm

  ok = res.predict >= 0
  np.testing.assert_allclose(res.radius[ok], 0.25 * norm.ppf(res.extra["p_lower"][ok]), atol=2e-4)
  assert np.all(res.extra["count"] <= 300)
  settings = results.read_settings(full)
  assert (settings["compute_dtype"], settings["fold_batchnorm"]) == ("float32", True)
  # bfloat16 certifies the bfloat16 model: its own settings, nearly the same predictions.
  half = tmp_path / "half.tsv"
  certify_job(workdir, half, count=6, dtype="bfloat16", precision="highest")
  assert results.read_settings(half) == dict(
    settings, compute_dtype="bfloat16", precision="highest"
  )
  assert np.mean(results.read_results(half).predict == res.predict) >= 4 / 6


def test_certify_on_8_devices_writes_the_same_file(workdir, tmp_path):
  one, eight = tmp_path / "one.tsv", tmp_path / "eight.tsv"
  args = (f"--workdir={workdir}", *CERTIFY_ARGS, "--count=4", "--inputs_per_step=3")
  certify_job(workdir, one, count=4, inputs_per_step=3)
  run("certify.py", f"--outfile={eight}", *args, devices=8)
  assert certify_rows(one) == certify_rows(eight)
  assert len(certify_rows(one)) == 5


def test_certify_adaptive_resumes_matches_on_8_devices_and_reports_savings(
  workdir, tmp_path, capsys
):
  full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
  adaptive = dict(
    n0=20, n_max=3000, alpha=0.01, batch=128, skip=97, adaptive=True, radii=(0, 0.25, 0.5),
    first_look=50,
  )
  certify_job(workdir, full, **adaptive, count=6, inputs_per_step=4)
  out = capsys.readouterr().out
  assert "fixed-n CERTIFY with n = n_max = 3,000" in out, out
  assert "x fewer" in out and "stopped: " in out
  assert "n_max=3000)" in out  # the table names the budget
  assert "estimation samples per input: mean" in out
  res = results.read_results(full)
  samples, count = res.extra["samples"], res.extra["count"]
  assert np.all((samples >= 50) & (samples <= 3000)) and np.all(count <= samples)
  np.testing.assert_array_equal(res.extra["n"], 3000)
  assert set(res.extra["stop"]) <= set(smoothing.STOP_REASONS)
  spent = int(samples.sum()) + 20 * 6
  assert f"forward passes: {spent:,} on 6 inputs" in out
  settings = results.read_settings(full)
  assert settings["mode"] == "certify_adaptive" and settings["radii"] == [0.0, 0.25, 0.5]
  # Half by certify.py on 8 devices, resumed on one: the same rows.
  args = (
    f"--workdir={workdir}", "--n0=20", "--n_max=3000", "--alpha=0.01", "--batch=128",
    "--skip=97", "--adaptive", "--radii=0,0.25,0.5", "--first_look=50",
  )
  run("certify.py", f"--outfile={part}", *args, "--count=3", "--inputs_per_step=3", devices=8)
  certify_job(workdir, part, **adaptive, count=6, inputs_per_step=2)
  assert "resuming: 3 of 6" in capsys.readouterr().out
  assert certify_rows(part) == certify_rows(full)
  # Other goals, or fixed-n CERTIFY, never append to the file.
  before = full.read_bytes()
  with pytest.raises(InputError, match="radii"):
    certify_job(workdir, full, **adaptive | {"radii": (0, 0.5)})
  sequential_only = ("adaptive", "radii", "first_look", "n_max")
  fixed = {k: v for k, v in adaptive.items() if k not in sequential_only}
  with pytest.raises(InputError, match="has columns"):
    certify_job(workdir, full, **fixed, n=3000)
  assert full.read_bytes() == before


def test_certify_refuses_to_mix_settings(workdir, tmp_path):
  out = tmp_path / "mix.tsv"
  certify_job(workdir, out, count=1)
  with pytest.raises(InputError, match="sigma"):
    certify_job(workdir, out, count=2, sigma=0.5)
  assert len(out.read_text().splitlines()) == 2  # header + the one row, untouched


def test_predict_mode_and_analyze(workdir, tmp_path):
  pred = tmp_path / "pred.tsv"
  certify_job(workdir, pred, predict=True, n=200, skip=199, batch=100)
  lines = pred.read_text().splitlines()
  # Cohen et al.'s predict.py columns, then the hash of each input.
  assert lines[0].split("\t") == [*results.PREDICT_COLUMNS, "input_hash"]
  assert len(lines) == 1 + 6  # inputs 0, 199, ..., 995
  out = run("certify.py", "analyze", str(pred))
  row = [ln for ln in out.stdout.splitlines() if ln.startswith("| pred.tsv (gaussian:0.25, n=200)")]
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
  certify_job(workdir, ours, count=2)
  plot = tmp_path / "both.png"
  out = run("certify.py", "analyze", str(cohen), str(ours), f"--plot={plot}", "--format=markdown")
  cohen_row = [ln for ln in out.stdout.splitlines() if ln.startswith("| cohen_noise_0.25.tsv")][0]
  cells = [c.strip() for c in cohen_row.strip("|").split("|")]
  # r = 0: 2 of 4 correct; r = 0.5: both; r = 0.75: only radius 1.3; ACR (0.512 + 1.3) / 4.
  assert cells[1:5] == ["50.0", "50.0", "50.0", "25.0"]
  assert "0.453" in cells and "25.0" == cells[-1]
  assert any(ln.startswith("| ours.tsv") for ln in out.stdout.splitlines())
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_certify_missing_workdir(tmp_path):
  out = tmp_path / "x.tsv"
  proc = run("certify.py", f"--workdir={tmp_path / 'none'}", f"--outfile={out}", check=False)
  assert_one_line_error(proc, "no trained run")
  assert not out.exists()


# --------------------------------------------------------------------------
# Compatibility, fingerprints, locks, disk full, one-line errors.


def test_max_is_cohens_index_bound_and_rows_match_the_library(workdir, tmp_path):
  import jax

  from smoothjax import data as data_lib
  from smoothjax import noise, smoothing
  from smoothjax.workdir import checkpoints as checkpointing

  out = tmp_path / "cohen.tsv"
  # As Cohen et al.'s `if i == args.max: break`: indices 0, 97, 194, 291 (not 300 inputs).
  certify_job(workdir, out, max=300, sigma=1.0)
  res = results.read_results(out)
  assert res.idx.tolist() == [0, 97, 194, 291]
  model = checkpointing.restore_model(str(workdir))[0]
  images, labels = data_lib.load("embedded_mnist").split("test").get(res.idx)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(0), res.idx.astype(np.uint32))
  certs = smoothing.certify_batch(
    model, images, keys, noise=noise.Gaussian(1.0), n0=20, n=300, alpha=0.01, batch_size=128
  )
  assert res.predict.tolist() == [c.prediction for c in certs]
  np.testing.assert_allclose(res.extra["p_lower"], [c.p_lower for c in certs], atol=5e-7)
  # `count` holds the votes of the class that p_lower bounds, also when abstaining ...
  assert res.extra["count"].tolist() == [c.counts[c.top_class] for c in certs]
  # ... which differs from the largest count for at least one abstention here.
  assert any(c.prediction == -1 and c.top_class != np.argmax(c.counts) for c in certs)
  assert res.extra["input_hash"].tolist() == hashing.input_hashes(images, labels)


def test_two_processes_on_one_outfile(workdir, tmp_path):
  out = tmp_path / "shared.tsv"
  args = ("--n0=20", "--n=2000", "--alpha=0.01", "--batch=500", "--skip=50", "--count=12")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags())
  cmd = [sys.executable, "certify.py", f"--workdir={workdir}", f"--outfile={out}", *args]
  procs = [
    subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(2)
  ]
  outcomes = sorted(
    (p.wait(timeout=600), p.stderr.read().decode()) for p in procs
  )  # [(0, ...), (2, ...)]
  for p in procs:
    p.stdout.close()
    p.stderr.close()
  assert [code for code, _ in outcomes] == [0, 2], outcomes
  refused = [ln for ln in outcomes[1][1].splitlines() if ln.startswith("error: ")]
  assert len(refused) == 1 and f"--outfile {out} is in use by process" in refused[0]
  res = results.read_results(out)
  assert sorted(res.idx.tolist()) == list(range(0, 600, 50))  # Each row once.
  assert len(out.read_text().splitlines()) == 1 + 12
  assert not os.path.exists(f"{out}.lock")


def test_resume_refuses_another_model_or_changed_data(workdir, tmp_path, monkeypatch):
  import jax
  from flax import nnx

  from smoothjax.data import sources
  from smoothjax.workdir import checkpoints

  out = tmp_path / "fp.tsv"
  certify_job(workdir, out, count=2)
  before = out.read_bytes()
  # The workdir retrained in place: same epoch and step, other parameters.
  restore = checkpoints.restore_model

  def retrained(*a, **k):
    model, *rest = restore(*a, **k)
    nnx.update(model, jax.tree.map(lambda p: p + 1e-3, nnx.state(model, nnx.Param)))
    return (model, *rest)

  with monkeypatch.context() as m:
    m.setattr(checkpoints, "restore_model", retrained)
    with pytest.raises(InputError, match="model_fingerprint.*retrained or replaced"):
      certify_job(workdir, out, count=3)
  # The dataset's files changed: one pixel of test input 97.
  get = sources.Split.get

  def changed(self, indices):
    images, labels = get(self, indices)
    images[np.asarray(indices) == 97, 0, 0, 0] += 1 / 255
    return images, labels

  with monkeypatch.context() as m:
    m.setattr(sources.Split, "get", changed)
    with pytest.raises(InputError, match="input 97 of split 'test' is not the one its row"):
      certify_job(workdir, out, count=3)
  assert out.read_bytes() == before


def test_disk_full_during_certify_is_one_line_and_rerunning_resumes(
  workdir, tmp_path, capsys, monkeypatch
):
  import errno

  from smoothjax.cli import common

  out = tmp_path / "full.tsv"
  append = results.ResultWriter._append
  calls = []

  def full_disk(self, text):
    calls.append(text)
    if len(calls) == 3:
      append(self, text[:7])  # Part of the row reaches the disk.
      raise OSError(errno.ENOSPC, "No space left on device")
    append(self, text)

  with monkeypatch.context() as m:
    m.setattr(results.ResultWriter, "_append", full_disk)
    with pytest.raises(SystemExit) as e:  # the programs' main, as certify.py runs it
      common.run_main(lambda argv: certify_job(workdir, out, count=5))(["certify.py"])
  assert e.value.code == 2
  errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
  assert len(errors) == 1 and f"the disk is full writing {out}" in errors[0], errors
  assert "rerun the same command" in errors[0]
  assert len(results.read_results(out)) == 2 and not out.read_text().endswith("\n")
  assert not os.path.exists(f"{out}.lock")
  certify_job(workdir, out, count=5)
  assert "resuming: 2 of 5" in capsys.readouterr().out
  assert results.read_results(out).idx.tolist() == [0, 97, 194, 291, 388]


def test_demo_runs_train_then_certify(tmp_path):
  """The README's first command, small: demo.py trains, certifies, tables and plots."""
  out = tmp_path / "demo"
  proc = run("demo.py", f"--outdir={out}", "--epochs=1", "--n=100", "--skip=100")
  assert "| certify_sigma0.25_n100_epochs1.tsv (gaussian:0.25, n=100) |" in proc.stdout
  assert len(results.read_results(out / "certify_sigma0.25_n100_epochs1.tsv")) == 10
  assert (out / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_names_certificates_by_model_and_samples():
  import importlib.util

  spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO_ROOT, "demo.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  # A rerun with more epochs or samples certifies into a new file instead of being refused.
  names = {demo.certify_name(n, e) for n in (10_000, 20_000) for e in (6, 10)}
  assert len(names) == 4 and all(name.endswith(".tsv") for name in names)
  assert demo.certify_name(10_000, 6) == "certify_sigma0.25_n10000_epochs6.tsv"


# The bad-input table: every flag of certify.py, analyze and demo.py. All cases run in one
# child process (flags reset between cases) to keep the table fast.
_DRIVER = (
  """
import contextlib, importlib.util, io, json, os, sys
from absl import flags
from smoothjax.cli import certify, common

spec = importlib.util.spec_from_file_location("demo", os.path.join(sys.argv[3], "demo.py"))
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)

def never(cmd):
  raise RuntimeError("demo.py ran " + cmd[1] + " despite a bad argument")

demo._run = never

def call(case):
  prog, argv = case
  if prog == "demo":
    demo.main(argv)
  else:
    flags.FLAGS.unparse_flags()
    common.run_main(certify.main)(common.parse_flags(["certify.py", *argv]))
"""
  + IN_PROCESS_CASES
)

_CERTIFY = "certify"
BAD_INPUTS = [
  # certify.py: after --workdir={wd} --outfile={case}/sub/out.tsv and a small run's flags.
  ("workdir-missing", _CERTIFY, ["--workdir={case}/none"], "no trained run"),
  ("workdir-is-a-file", _CERTIFY, ["--workdir={fx}/file.txt"], "file.txt"),
  ("workdir-unset", _CERTIFY, ["--workdir="], "--workdir is required"),
  ("outfile-unset", _CERTIFY, ["--outfile="], "--outfile is required"),
  ("outfile-directory", _CERTIFY, ["--outfile={fx}/folder"], "is a directory"),
  ("outfile-under-a-file", _CERTIFY, ["--outfile={fx}/file.txt/o.tsv"], "is a file, not a folder"),
  ("outfile-fifo", _CERTIFY, ["--outfile={fx}/fifo"], "is a FIFO"),
  ("outfile-dev-null", _CERTIFY, ["--outfile=/dev/null"], "is a device"),
  ("outfile-dev-full", _CERTIFY, ["--outfile=/dev/full"], "is a device"),
  ("outfile-damaged-settings", _CERTIFY, ["--outfile={fx}/damaged.tsv"], "delete both it and"),
  ("n0-zero", _CERTIFY, ["--n0=0"], "--n0 and --n must be >= 1"),
  ("n-zero", _CERTIFY, ["--n=0"], "--n0 and --n must be >= 1"),
  ("n-int32", _CERTIFY, ["--n=2147483647"], "lower --n"),
  ("n-times-inputs", _CERTIFY, ["--n=100000", "--inputs_per_step=30000"], "lower --inputs_per"),
  ("alpha-zero", _CERTIFY, ["--alpha=0"], "--alpha must be in (0, 1)"),
  ("alpha-large", _CERTIFY, ["--alpha=1.5"], "--alpha must be in (0, 1)"),
  ("alpha-nan", _CERTIFY, ["--alpha=nan"], "--alpha must be in (0, 1)"),
  ("batch-zero", _CERTIFY, ["--batch=0"], "--batch must be >= 1"),
  ("inputs-zero", _CERTIFY, ["--inputs_per_step=0"], "--inputs_per_step must be >= 1"),
  ("skip-zero", _CERTIFY, ["--skip=0"], "--skip must be >= 1"),
  ("max-zero", _CERTIFY, ["--max=0"], "--max 0 selects no inputs"),
  ("max-negative", _CERTIFY, ["--max=-2"], "--max must be a dataset index"),
  ("count-zero", _CERTIFY, ["--count=0"], "--count must be >= 1"),
  ("split", _CERTIFY, ["--split=nope"], "has no split 'nope'"),
  ("sigma-negative", _CERTIFY, ["--sigma=-1"], "--sigma -1.0"),
  ("sigma-zero", _CERTIFY, ["--sigma=0"], "--sigma 0.0"),
  ("sigma-inf", _CERTIFY, ["--sigma=inf"], "--sigma inf"),
  ("sigma-nan", _CERTIFY, ["--sigma=nan"], "--sigma nan"),
  ("sigma-overflows", _CERTIFY, ["--sigma=1e39"], "--sigma 1e+39"),
  ("seed-negative", _CERTIFY, ["--seed=-1"], "--seed must be in [0, 2^32)"),
  ("seed-too-large", _CERTIFY, ["--seed=4294967296"], "--seed must be in [0, 2^32)"),
  ("epoch-negative", _CERTIFY, ["--epoch=-1"], "--epoch must be >= 0"),
  ("epoch-missing", _CERTIFY, ["--epoch=99"], "no checkpoint at the end of epoch 99"),
  ("predict-n0", _CERTIFY, ["--predict", "--n0=5"], "--n0 has no effect with --predict"),
  ("predict-plot", _CERTIFY, ["--predict", "--plot={case}/p.png"], "--plot has no effect"),
  ("predict-radius", _CERTIFY, ["--predict", "--max_radius=1"], "--max_radius has no effect"),
  ("plot-directory", _CERTIFY, ["--plot={fx}/folder"], "--plot {fx}/folder is a directory"),
  ("plot-under-a-file", _CERTIFY, ["--plot={fx}/file.txt/p.png"], "is a file, not a folder"),
  ("plot-is-outfile", _CERTIFY, ["--plot={case}/sub/out.tsv"], "--plot names the --outfile"),
  ("format", _CERTIFY, ["--format=html"], "flag --format=html"),
  ("max-radius-zero", _CERTIFY, ["--max_radius=0"], "--max_radius must be a finite number > 0"),
  ("max-radius-negative", _CERTIFY, ["--max_radius=-1"], "--max_radius must be a finite"),
  ("max-radius-inf", _CERTIFY, ["--max_radius=inf"], "--max_radius must be a finite"),
  ("max-radius-nan", _CERTIFY, ["--max_radius=nan"], "--max_radius must be a finite"),
  ("unknown-flag", _CERTIFY, ["--foo=1"], "Unknown command line flag 'foo'"),
  ("dtype", _CERTIFY, ["--dtype=float16"], "flag --dtype=float16"),
  ("precision", _CERTIFY, ["--precision=fp64"], "flag --precision=fp64"),
  ("bad-integer", _CERTIFY, ["--n=abc"], "flag --n=abc"),
  ("stray-argument", _CERTIFY, ["stray"], "unexpected arguments"),
  ("noise-sd-negative", _CERTIFY, ["--workdir={negative_sd}"], "noise_sd"),
  # certify.py --adaptive
  ("seq-flag-alone", _CERTIFY, ["--radii=0,0.5"], "--radii is a setting of sequential CERT"),
  ("seq-predict", _CERTIFY, ["--adaptive", "--predict", "--radii=0"], "a mode of CERTIFY"),
  ("seq-no-goal", _CERTIFY, ["--adaptive"], "--adaptive needs a goal to stop at"),
  ("seq-two-goals", _CERTIFY, ["--adaptive", "--radii=0", "--target_radius=1"], "pass one of"),
  ("seq-radii-text", _CERTIFY, ["--adaptive", "--radii=a,b"], "--radii must be numbers"),
  ("seq-radius-negative", _CERTIFY, ["--adaptive", "--target_radius=-1"], "finite numbers >= 0"),
  ("seq-tolerance-nan", _CERTIFY, ["--adaptive", "--tolerance=nan"], "--tolerance must be"),
  ("seq-n-and-n-max", _CERTIFY, ["--adaptive", "--radii=0", "--n_max=99"], "drop --n"),
  ("seq-growth", _CERTIFY, ["--adaptive", "--radii=0", "--growth=1"], "--growth must be"),
  ("seq-futility", _CERTIFY, ["--adaptive", "--radii=0", "--futility=0"], "--futility must be"),
  ("seq-first-look", _CERTIFY, ["--adaptive", "--radii=0", "--first_look=0"], "--first_look"),
  # certify.py analyze FILE...
  ("analyze-nothing", _CERTIFY, ["analyze"], "analyze needs one or more result files"),
  ("analyze-missing", _CERTIFY, ["analyze", "{case}/none.tsv"], "does not exist"),
  ("analyze-binary", _CERTIFY, ["analyze", "{fx}/binary.png"], "holds binary data"),
  ("analyze-fifo", _CERTIFY, ["analyze", "{fx}/fifo"], "is a FIFO"),
  ("analyze-directory", _CERTIFY, ["analyze", "{fx}/folder"], "is a directory"),
  ("analyze-inf-radius", _CERTIFY, ["analyze", "{fx}/inf.tsv"], "line 3: radius inf is not a"),
  ("analyze-abstain-radius", _CERTIFY, ["analyze", "{fx}/abstain.tsv"], "has radius 2.0, not 0"),
  ("analyze-conflict", _CERTIFY, ["analyze", "{fx}/conflict.tsv"], "two different rows for idx 0"),
  ("analyze-empty", _CERTIFY, ["analyze", "{fx}/empty.tsv"], "no result rows"),
  ("analyze-plot-dir", _CERTIFY, ["analyze", "{fx}/good.tsv", "--plot={fx}/folder"], "directory"),
  ("analyze-plot-input", _CERTIFY, ["analyze", "{fx}/good.tsv", "--plot={fx}/good.tsv"], "one of"),
  ("analyze-max-radius", _CERTIFY, ["analyze", "{fx}/good.tsv", "--max_radius=0"], "--max_radius"),
  ("analyze-format", _CERTIFY, ["analyze", "{fx}/good.tsv", "--format=html"], "--format=html"),
  ("analyze-certify-flag", _CERTIFY, ["analyze", "{fx}/good.tsv", "--n=5"], "--n has no effect"),
  ("analyze-adaptive", _CERTIFY, ["analyze", "{fx}/good.tsv", "--adaptive"], "--adaptive has no"),
  # demo.py
  ("demo-outdir-file", "demo", ["--outdir={fx}/file.txt"], "is a file, not a folder"),
  ("demo-outdir-under-file", "demo", ["--outdir={fx}/file.txt/d"], "is a file, not a folder"),
  ("demo-n-zero", "demo", ["--n=0"], "--n must be >= 1"),
  ("demo-n-text", "demo", ["--n=abc"], "argument --n: invalid int value"),
  ("demo-skip-zero", "demo", ["--skip=0"], "--skip must be >= 1"),
  ("demo-epochs-zero", "demo", ["--epochs=0"], "--epochs must be >= 1"),
  ("demo-unknown", "demo", ["--bogus"], "unrecognized arguments: --bogus"),
]
GOOD_TSV = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t0:00:01\n"


@pytest.fixture(scope="module")
def bad_input_outcomes(workdir, tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_inputs")
  fx = root / "fixtures"
  fx.mkdir()
  (fx / "file.txt").write_text("x")
  (fx / "folder").mkdir()
  os.mkfifo(fx / "fifo")
  (fx / "binary.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n")
  (fx / "good.tsv").write_text(GOOD_TSV)
  (fx / "inf.tsv").write_text(GOOD_TSV + "1\t2\t2\tinf\t1\t0:00:01\n")
  (fx / "abstain.tsv").write_text(GOOD_TSV + "1\t2\t-1\t2.0\t0\t0:00:01\n")
  (fx / "conflict.tsv").write_text(GOOD_TSV + "0\t3\t3\t0.7\t1\t0:00:01\n")
  (fx / "empty.tsv").write_text(GOOD_TSV.splitlines(keepends=True)[0])
  header = "\t".join(
    [
      *results.CERTIFY_COLUMNS,
      "p_lower",
      "count",
      "n",
      *results.RADIUS_COLUMNS.values(),
      "input_hash",
    ]
  )
  row = "0\t3\t3\t0.5\t1\t0:00:01\t0.9\t45\t50\t0.5\t0.5\t0.02\tab12"
  (fx / "damaged.tsv").write_text(header + "\n" + row + "\n")
  (fx / "damaged.tsv.settings.json").write_text("[1, 2]")
  negative_sd = root / "negative_sd"
  shutil.copytree(workdir, negative_sd)
  config = json.loads((negative_sd / "config.json").read_text())
  config["noise_sd"] = -0.5
  (negative_sd / "config.json").write_text(json.dumps(config))
  before = {p: p.read_bytes() for p in fx.iterdir() if p.is_file() and p.name != "fifo"}
  cases = []
  for name, prog, argv, _ in BAD_INPUTS:
    case = root / name
    case.mkdir()
    subs = dict(case=case, fx=fx, wd=workdir, negative_sd=negative_sd)
    argv = [a.format(**subs) for a in argv]
    if prog == _CERTIFY and argv[:1] != ["analyze"]:
      base = [f"--workdir={workdir}", f"--outfile={case}/sub/out.tsv", "--n=50", "--count=1"]
      argv = base + argv
    elif prog == "demo" and not any(a.startswith("--outdir") for a in argv):
      argv = [f"--outdir={case}/d", *argv]
    cases.append((prog, argv))
  (root / "cases.json").write_text(json.dumps(cases))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT, XLA_FLAGS=xla_flags())
  proc = subprocess.run(
    [sys.executable, "-c", _DRIVER, root / "cases.json", root / "outcomes.json", REPO_ROOT],
    capture_output=True,
    text=True,
    env=env,
    cwd=root,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr
  outcomes = json.loads((root / "outcomes.json").read_text())
  after = {p: p.read_bytes() for p in fx.iterdir() if p.is_file() and p.name != "fifo"}
  return root, fx, outcomes, before, after


@pytest.mark.parametrize(
  "index,case", list(enumerate(BAD_INPUTS)), ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad_input_outcomes, index, case):
  root, fx, outcomes, before, after = bad_input_outcomes
  name, _, _, pattern = case
  outcome = outcomes[index]
  assert outcome["code"] == 2, outcome
  assert "Traceback" not in outcome["stderr"]
  lines = [ln for ln in outcome["stderr"].splitlines() if ln.startswith("error: ")]
  assert len(lines) == 1, outcome["stderr"]
  assert pattern.format(fx=fx) in lines[0], lines[0]
  assert os.listdir(root / name) == []  # No outfile, settings, lock, plot or folder.
  assert after == before  # The inputs are left as they were.
  assert sorted(os.listdir(fx)) == sorted(
    [p.name for p in before] + ["fifo", "folder"]
  )  # No lock or settings file beside them either.


def test_internal_errors_are_one_line_with_status_1_and_debug_shows_the_traceback(
  capsys, monkeypatch
):
  from smoothjax.cli import common

  def broken(argv):
    raise KeyError("boom")

  def user(argv):
    raise FileNotFoundError(2, "No such file or directory", "/no/such/file")

  for env, main, status, expected in [
    ("", broken, 1, "error: internal error: KeyError: 'boom' (set SMOOTHJAX_DEBUG=1"),
    ("", user, 2, "error: No such file or directory (/no/such/file); check the path"),
    ("1", broken, 1, "error: internal error: KeyError: 'boom'"),
  ]:
    monkeypatch.setenv("SMOOTHJAX_DEBUG", env)
    with pytest.raises(SystemExit) as e:
      common.run_main(main)(["prog"])
    assert e.value.code == status
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(expected), err
    assert ("Traceback" in err) == (env == "1")


def test_helpshort_lists_each_programs_own_flags():
  for program, flag in (
    ("train.py", "--workdir"),
    ("certify.py", "--alpha"),
    ("attack.py", "--eps"),
    ("generate.py", "--per_class"),
    ("compare.py", "--workdirs"),
  ):
    proc = run(program, "--helpshort", check=False)  # absl exits 1 after help
    assert f"  {flag}:" in proc.stdout + proc.stderr, (program, proc.stdout[:500])
