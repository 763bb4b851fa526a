"""The noise families through the programs: train.py, certify.py, analyze, attack.py."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from conftest import assert_one_line_error, run, train_tiny

from smoothjax import jobs, results
from smoothjax import noise as noise_lib
from smoothjax.errors import InputError

DIM = 28 * 28
ARGS = ("--n0=20", "--n=400", "--alpha=0.01", "--batch=200", "--skip=199")


def train_laplace(root):
  workdir = root / "laplace" / "run"
  train_tiny(workdir, "--config.noise=laplace", "--config.noise_sd=0.5")
  return workdir


def _certify(workdir, out, *extra, check=True):
  return run("certify.py", f"--workdir={workdir}", f"--outfile={out}", *ARGS, *extra, check=check)


def _certify_job(workdir, out, **options) -> str:
  """certify.py's job with ``ARGS``, in this process; returns what it printed."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    jobs.certify.run(
      jobs.certify.Options(
        workdir=str(workdir),
        outfile=str(out),
        n0=20,
        n=400,
        alpha=0.01,
        batch=200,
        skip=199,
        **options,
      )
    )
  return printed.getvalue()


def certifier(laplace_workdir, root):
  """``certified(spec) -> (path, stdout)``: the workdir certified under ``spec``, once."""
  root, done = root / "certified", {}

  def get(spec):
    if spec not in done:
      name = (spec or "laplace").split(":")[0] + f"_{len(done)}"
      out = root / f"{name}.tsv"
      done[spec] = (out, _certify_job(laplace_workdir, out, noise=spec))
    return done[spec]

  return get


def check_training_records_and_evaluates_under_its_noise(laplace_workdir):
  config = json.loads((laplace_workdir / "config.json").read_text())
  assert config["noise"] == "laplace" and config["noise_sd"] == 0.5 and config["mode"] == "noise"
  metrics = json.loads((laplace_workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert metrics["noise"] == "laplace:0.5" and 0.3 < metrics["test_accuracy_noisy"] <= 1.0


FAMILIES = [None, "uniform:0.5", "expinf:0.5:k=1:j=0", "gaussian:0.5", "expinf:lambda=0.002:k=2"]


def check_certify_writes_radii_in_every_norm(certified, spec):
  out, stdout = certified(spec)
  noise = noise_lib.parse(spec or "laplace:0.5", dim=DIM)
  settings = results.read_settings(str(out))
  assert settings["noise"] == noise.spec and settings["noise_norm"] == noise.norm
  assert settings["noise_scale"] == pytest.approx(noise.sigma, rel=1e-12)
  header = out.read_text().splitlines()[0].split("\t")
  assert header[:6] == list(results.CERTIFY_COLUMNS)
  assert [c for c in header if c.startswith("radius_")] == ["radius_l1", "radius_l2", "radius_linf"]
  assert f"against radius in {noise.norm}" in stdout
  res = results.read_results(str(out))
  assert len(res.idx) == 6
  ok = res.predict >= 0
  assert ok.sum() >= 3  # the tiny model certifies most of these digits
  p = res.extra["p_lower"][ok]
  for norm in noise_lib.NORMS:
    column = res.extra[f"radius_{norm}"]
    np.testing.assert_array_equal(column[~ok], 0.0)
    # p_lower is written with 6 decimals: compare radii computed from it.
    expected = noise.radius(p, norm, dim=DIM)
    np.testing.assert_allclose(column[ok], expected, rtol=2e-3, atol=1e-6)
  # `radius` is Cohen's column, in the family's primary norm.
  np.testing.assert_allclose(res.radius, res.extra[f"radius_{noise.norm}"], atol=5e-5)


def check_resuming_with_another_noise_is_refused(laplace_workdir, tmp_path):
  out = tmp_path / "r.tsv"
  _certify_job(laplace_workdir, out, count=1)
  before = out.read_text()
  proc = _certify(laplace_workdir, out, "--count=2", "--noise=uniform:0.5", check=False)
  assert_one_line_error(proc, "noise: 'laplace:0.5' in file vs 'uniform:0.5' now")
  assert out.read_text() == before
  # The same noise written out in full is the same setting.
  _certify_job(laplace_workdir, out, count=2, noise="laplace:0.5")
  assert len(out.read_text().splitlines()) == 3


BAD_NOISE = [
  # The flags alone are wrong: refused before the workdir is read.
  (dict(noise="laplace:-1"), "--noise laplace:-1: sigma must be a finite number > 0"),
  (dict(noise="uniform:0.5", sigma=0.25), "sets its own scale, and sigma 0.25 is also given"),
  # Wrong only for these inputs (d = 784): refused once the dataset is known.
  (dict(noise="expinf:0.5:j=783"), "j < d - 1 = 783"),
]


def check_bad_noise_is_one_line_and_writes_nothing(laplace_workdir, tmp_path):
  # The job's errors; certify.py prints each as its one line (test_cli.py's table).
  for options, message in BAD_NOISE:
    out = tmp_path / "sub" / "bad.tsv"
    with pytest.raises(InputError) as e:
      _certify_job(laplace_workdir, out, **options)
    assert message in str(e.value) and "\n" not in str(e.value), e.value
    assert not (tmp_path / "sub").exists()
  # And certify.py's one line for the last.
  proc = _certify(
    laplace_workdir, tmp_path / "sub" / "bad.tsv", "--noise=expinf:0.5:j=783", check=False
  )
  assert_one_line_error(proc, BAD_NOISE[-1][1])
  assert not (tmp_path / "sub").exists()


def check_analyze_in_a_chosen_norm_mixes_families(certified, tmp_path):
  lap, gauss, uni = (certified(s)[0] for s in (None, "gaussian:0.5", "uniform:0.5"))
  plot = tmp_path / "l1.png"
  out = run("certify.py", "analyze", str(lap), str(gauss), str(uni), "--norm=l1", f"--plot={plot}")
  assert "certified accuracy (%) against radius in l1" in out.stdout
  rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| ")]
  names = [r.split("|")[1].strip() for r in rows[1:]]
  assert names == [
    f"{lap.name} (laplace:0.5, n=400)",
    f"{gauss.name} (gaussian:0.5, n=400)",
    f"{uni.name} (uniform:0.5, n=400)",
  ]
  assert plot.stat().st_size > 1000
  # The table's ACR column is the mean l1 radius of correct certificates.
  for path, row in zip((lap, gauss, uni), rows[1:], strict=True):
    res = results.read_results(str(path))
    radius = np.where(res.predict == res.label, res.extra["radius_l1"], 0.0)
    acr = float(row.split("|")[-3])
    assert acr == pytest.approx(radius.mean(), abs=6e-4)
  # Without --norm, mixed primary norms are said to be mixed.
  out = run("certify.py", "analyze", str(lap), str(gauss), "--plot=")
  assert "against radius in each file's primary norm" in out.stdout
  # linf: the radii are small, the table's radii shrink with them.
  out = run("certify.py", "analyze", str(uni), "--norm=linf", "--plot=")
  header = [ln for ln in out.stdout.splitlines() if ln.startswith("| run")][0]
  assert "r = 0.000" in header or "r = 0.0000" in header


def test_analyze_in_a_norm_a_file_lacks_says_so(tmp_path, capsys):
  cohen = tmp_path / "cohen.tsv"
  cohen.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.52\t1\t0:00:01\n")
  jobs.certify.report([str(cohen)], None, norm="l2")  # what certify.py analyze runs
  assert "against radius in l2" in capsys.readouterr().out
  with pytest.raises(InputError, match="has no radius_l1 column and its radius column is in l2"):
    jobs.certify.report([str(cohen)], None, norm="l1")


def check_smoothed_attack_uses_the_runs_noise_in_l1(laplace_workdir, tmp_path):
  out = tmp_path / "adv.tsv"
  proc = run(
    "attack.py",
    f"--workdir={laplace_workdir}",
    f"--outfile={out}",
    "--smoothed",
    "--norm=l1",
    "--eps=1.0,4.0",
    "--m=4",
    "--steps=3",
    "--n=100",
    "--alpha=0.01",
    "--batch=200",
    "--count=4",
    "--skip=250",
  )
  settings = results.read_settings(str(out))
  assert settings["noise"] == "laplace:0.5" and settings["norm"] == "l1"
  assert "laplace sigma=0.5" in proc.stdout
  lines = out.read_text().splitlines()
  assert len(lines) == 5
  res = results.read_results(str(out))
  for eps in ("1", "4"):
    assert set(res.extra[f"correct_eps{eps}"]) <= {0, 1}


def test_noise_families_end_to_end(tmp_path):
  """One test, so that the Laplace run is trained once whatever the xdist split."""
  workdir = train_laplace(tmp_path)
  check_training_records_and_evaluates_under_its_noise(workdir)
  certified = certifier(workdir, tmp_path)
  for spec in FAMILIES:
    check_certify_writes_radii_in_every_norm(certified, spec)
  check_analyze_in_a_chosen_norm_mixes_families(certified, tmp_path)
  check_resuming_with_another_noise_is_refused(workdir, tmp_path / "resume")
  check_bad_noise_is_one_line_and_writes_nothing(workdir, tmp_path / "bad")
  check_smoothed_attack_uses_the_runs_noise_in_l1(workdir, tmp_path / "attack")
