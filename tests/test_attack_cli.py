"""attack.py end to end: accuracy under FGSM and PGD, resume, SmoothAdv + PREDICT, bad flags."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import matplotlib.image
import numpy as np
import pytest
from conftest import (
  assert_one_line_error,
  assert_one_line_outcome,
  run,
  run_program_cases,
  tiny_run,
)

from smoothjax import analysis, results
from smoothjax.analysis import pictures
from smoothjax.errors import InputError
from smoothjax.jobs import attack as attack_job


def rows_without_time(path):
  with open(path) as f:
    lines = [ln.rstrip("\n").split("\t") for ln in f]
  drop = lines[0].index("time")
  return [[c for i, c in enumerate(ln) if i != drop] for ln in lines]


# 40 test digits, 4 of each class: every 25th index.
INPUTS = ("--skip=25",)
EPS = "--eps=0,0.5,1.5"


def attack_pgd_and_fgsm(workdir, root):
  """The same inputs attacked by PGD and FGSM in l2; the PGD run also draws the picture."""
  out = root / "attacks"
  pgd, fgsm, png = out / "pgd.tsv", out / "fgsm.tsv", out / "pgd.png"
  pgd_run = run(
    "attack.py",
    f"--workdir={workdir}",
    f"--outfile={pgd}",
    *INPUTS,
    EPS,
    "--steps=10",
    "--batch=16",
    f"--examples={png}",
  )
  # The same job from Python (attack.py's program boundary is tested on the PGD run).
  fgsm_out = attack_in_process(workdir, fgsm, skip=25, eps=(0, 0.5, 1.5), attack="fgsm")
  return pgd, fgsm, png, pgd_run.stdout, fgsm_out


def attack_in_process(workdir, outfile, **options) -> str:
  """attack.py's job in this process; returns what it printed."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    attack_job.run(attack_job.Options(workdir=str(workdir), outfile=str(outfile), **options))
  return printed.getvalue()


def check_output_columns_and_settings(pgd_and_fgsm, workdir):
  pgd, *_ = pgd_and_fgsm
  header = pgd.read_text().splitlines()[0].split("\t")
  assert header == [
    "idx",
    "label",
    "predict",
    "correct",
    "predict_eps0",
    "correct_eps0",
    "predict_eps0.5",
    "correct_eps0.5",
    "predict_eps1.5",
    "correct_eps1.5",
    "time",
    "input_hash",
  ]
  res = results.read_results(pgd)
  np.testing.assert_array_equal(res.idx, np.arange(0, 1000, 25))
  np.testing.assert_array_equal(res.correct, res.predict == res.label)
  for eps in ("0", "0.5", "1.5"):
    np.testing.assert_array_equal(
      res.extra[f"correct_eps{eps}"], res.extra[f"predict_eps{eps}"] == res.label
    )
  settings = json.loads((pgd.parent / "pgd.tsv.settings.json").read_text())
  assert settings["attack"] == "pgd" and settings["norm"] == "l2" and settings["steps"] == 10
  assert settings["eps"] == [0.0, 0.5, 1.5] and settings["smoothed"] is False
  assert settings["workdir"] == str(workdir) and settings["epoch"] == 1
  assert not (pgd.parent / "pgd.tsv.lock").exists()  # released at the end


def check_pgd_lowers_accuracy_more_than_fgsm_and_eps_0_is_clean(pgd_and_fgsm):
  pgd, fgsm, _, pgd_out, fgsm_out = pgd_and_fgsm
  p, f = analysis.attacks.summarize(pgd), analysis.attacks.summarize(fgsm)
  assert p["inputs"] == f["inputs"] == 40 and p["eps"] == f["eps"] == [0.0, 0.5, 1.5]
  # The same base classifier on the same inputs: the same clean predictions.
  assert p["clean_accuracy"] == f["clean_accuracy"] > 0.6
  res = results.read_results(pgd)
  # eps = 0 leaves every input as it is.
  for r in (res, results.read_results(fgsm)):
    np.testing.assert_array_equal(r.extra["predict_eps0"], r.predict)
  assert p["accuracy"][0] == p["clean_accuracy"]
  # An l2 radius of 1.5 fools a one-epoch model on most digits; PGD at least as often as FGSM.
  assert p["accuracy"][2] < p["clean_accuracy"] - 0.2
  assert p["accuracy"][1] <= f["accuracy"][1] and p["accuracy"][2] <= f["accuracy"][2]
  assert p["accuracy"][2] < f["accuracy"][2]
  assert p["accuracy"][1] >= p["accuracy"][2]
  # The table printed at the end shows the same numbers.
  line = next(ln for ln in pgd_out.splitlines() if ln.startswith("| pgd.tsv"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[1:] == ["40"] + [f"{100 * a:.1f}" for a in [p["clean_accuracy"], *p["accuracy"]]]
  assert "| fgsm.tsv (fgsm l2) |" in fgsm_out


def check_examples_picture(pgd_and_fgsm):
  *_, png, pgd_out, _ = pgd_and_fgsm
  assert f"examples: {png}" in pgd_out
  image = matplotlib.image.imread(png)
  # Three rows (clean, adversarial, perturbation) of the first 8 inputs, at 100 dpi.
  rows, cols = 3 * pictures.ROW_INCHES * 100, 8 * pictures.COLUMN_INCHES * 100
  assert image.shape[:2] == (round(rows), round(cols))


def check_resume_after_a_kill_gives_the_same_file(workdir, pgd_and_fgsm, tmp_path):
  pgd, *_ = pgd_and_fgsm
  part = tmp_path / "part.tsv"
  lines = pgd.read_text().splitlines(keepends=True)
  # Killed after 7 rows, in the middle of writing the 8th.
  part.write_text("".join(lines[:8]) + lines[8][:9])
  (tmp_path / "part.tsv.settings.json").write_text(
    (pgd.parent / "pgd.tsv.settings.json").read_text()
  )
  # Another batch size: rows depend only on the seed and the dataset index.
  out = attack_in_process(workdir, part, skip=25, eps=(0, 0.5, 1.5), steps=10, batch=5)
  assert "resuming: 7 of 40" in out
  assert rows_without_time(part) == rows_without_time(pgd)


def check_resume_refuses_rows_of_other_inputs(workdir, pgd_and_fgsm, tmp_path):
  """A row whose input hash differs from the input now at its index (changed data)."""
  pgd, *_ = pgd_and_fgsm
  copy = tmp_path / "changed.tsv"
  lines = pgd.read_text().splitlines(keepends=True)
  cells = lines[3].rstrip("\n").split("\t")
  cells[-1] = "0" * len(cells[-1])
  lines[3] = "\t".join(cells) + "\n"
  copy.write_text("".join(lines[:10]))
  (tmp_path / "changed.tsv.settings.json").write_text(
    (pgd.parent / "pgd.tsv.settings.json").read_text()
  )
  before = copy.read_text()
  proc = run(
    "attack.py",
    f"--workdir={workdir}",
    f"--outfile={copy}",
    *INPUTS,
    EPS,
    "--steps=10",
    check=False,
  )
  idx = lines[3].split("\t")[0]
  assert_one_line_error(proc, f"input {idx} of split 'test' is not the one")
  assert copy.read_text() == before


def check_8_devices_write_the_same_file(workdir, tmp_path):
  one, eight = tmp_path / "one.tsv", tmp_path / "eight.tsv"
  args = (f"--workdir={workdir}", "--skip=100", "--eps=1", "--steps=5", "--batch=6")
  attack_in_process(workdir, one, skip=100, eps=(1.0,), steps=5, batch=6)
  run("attack.py", f"--outfile={eight}", *args, devices=8)  # batches of 8, padded
  assert rows_without_time(one) == rows_without_time(eight)
  assert len(rows_without_time(one)) == 1 + 10


def check_refuses_to_mix_settings(workdir, pgd_and_fgsm, tmp_path):
  pgd, *_ = pgd_and_fgsm
  copy = tmp_path / "copy.tsv"
  copy.write_text(pgd.read_text())
  (tmp_path / "copy.tsv.settings.json").write_text(
    (pgd.parent / "pgd.tsv.settings.json").read_text()
  )
  with pytest.raises(InputError, match="steps") as e:
    attack_in_process(workdir, copy, skip=25, eps=(0, 0.5, 1.5), steps=5, max=1000)
  assert "\n" not in str(e.value)  # attack.py's one line (resume refused: the case above)
  assert copy.read_text() == pgd.read_text()


def check_linf_pgd_stays_below_clean(workdir, tmp_path):
  out = tmp_path / "linf.tsv"
  with jax.debug_key_reuse(False):  # the checker misreads a scan over keys under vmap
    attack_in_process(
      workdir, out, skip=25, count=20, norm="linf", eps=(0.1,), steps=10, restarts=2
    )
  s = analysis.attacks.summarize(out)
  np.testing.assert_array_equal(results.read_results(out).idx, np.arange(0, 500, 25))
  assert s["accuracy"][0] < s["clean_accuracy"] - 0.2


def check_smoothed_attack_then_predict(workdir, tmp_path):
  out, png = tmp_path / "smoothed.tsv", tmp_path / "smoothed.png"
  printed = attack_in_process(
    workdir,
    out,
    smoothed=True,
    m=8,
    n=64,
    alpha=0.05,
    steps=4,
    eps=(0, 2),
    skip=100,
    max=600,
    batch=32,  # 4 inputs per step
    examples=str(png),
  )
  res = results.read_results(out)
  np.testing.assert_array_equal(res.idx, [0, 100, 200, 300, 400, 500])
  assert set(res.predict) <= set(range(-1, 10))
  # eps = 0 runs PREDICT on the clean point with the same keys: the same answers.
  np.testing.assert_array_equal(res.extra["predict_eps0"], res.predict)
  s = analysis.attacks.summarize(out)
  assert s["accuracy"][1] < s["clean_accuracy"]
  settings = s["settings"]
  assert settings["smoothed"] is True and settings["attack"] == "smoothadv"
  assert (settings["m"], settings["n"], settings["alpha"], settings["sigma"]) == (8, 64, 0.05, 0.25)
  assert "abstain (clean)" in printed
  assert matplotlib.image.imread(png).shape[:2] == (
    round(3 * pictures.ROW_INCHES * 100),
    round(6 * pictures.COLUMN_INCHES * 100),
  )


def test_bad_flags_and_paths_are_one_line_and_write_nothing(tmp_path, tmp_path_factory):
  """attack.py's entry point on each case (one child process): exit 2, one line, no file."""
  workdir = tiny_run(tmp_path_factory)
  out = tmp_path / "out" / "bad.tsv"
  missing = [f"--workdir={tmp_path / 'none'}", f"--outfile={out}"]
  cases = [
    ([*missing, "--eps=-0.5"], "--eps"),  # every flag is checked before the model is restored
    ([*missing, "--norm=l3"], "unknown --norm"),
    ([*missing, "--smoothed", "--m=0"], "--m"),
    (missing, "no trained run"),
    ([f"--workdir={workdir}", f"--outfile={tmp_path}"], "is a directory"),
  ]
  outcomes = run_program_cases("attack", [argv for argv, _ in cases], tmp_path)
  for (_, pattern), outcome in zip(cases, outcomes, strict=True):
    assert_one_line_outcome(outcome, pattern)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
  "change,pattern",
  [
    (dict(eps=(-0.5,)), "--eps values must be finite and >= 0"),
    (dict(eps=(float("nan"),)), "--eps"),
    (dict(eps=()), "at least one radius"),
    (dict(eps=(0.5, 0.5)), "twice"),
    (dict(steps=0), "--steps must be >= 1"),
    (dict(norm="l3"), "unknown --norm"),
    (dict(attack="cw"), "unknown --attack"),
    (dict(restarts=0), "--restarts"),
    (dict(step_size=0.0), "--step_size"),
    (dict(batch=0), "--batch"),
    (dict(skip=0), "--skip"),
    (dict(max=-2), "--max"),
    (dict(count=0), "--count"),
    (dict(smoothed=True, m=0), "--m must be >= 1"),
    (dict(smoothed=True, n=0), "--n"),
    (dict(smoothed=True, alpha=1.5), "--alpha"),
    (dict(smoothed=True, sigma=-1.0), "--sigma"),
    (dict(smoothed=True, attack="fgsm"), "--smoothed"),
    (dict(smoothed=True, restarts=3), "--restarts"),
    (dict(workdir=""), "--workdir is required"),
  ],
)
def test_bad_settings_are_refused_before_the_model_is_restored(tmp_path, change, pattern):
  out = tmp_path / "out" / "bad.tsv"
  options = attack_job.Options(**{"workdir": str(tmp_path / "none"), "outfile": str(out), **change})
  with pytest.raises(InputError, match=pattern) as e:
    attack_job.run_attack(options)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["step_size", "sigma"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_infinite_settings_are_refused_as_not_finite(tmp_path, name, value):
  options = attack_job.Options(
    workdir=str(tmp_path / "none"), outfile=str(tmp_path / "o.tsv"), smoothed=True, **{name: value}
  )
  with pytest.raises(InputError, match=f"^--{name} must be a finite number > 0, got "):
    attack_job.check_options(options)


@pytest.mark.parametrize(
  "text,expected",
  [("0.25,0.5,1.0", (0.25, 0.5, 1.0)), ("0", (0.0,)), (" 1 , 2/255 ", None), ("0.5,,1", None)],
)
def test_parse_eps(text, expected):
  if expected is None:
    with pytest.raises(InputError, match="--eps"):
      attack_job.parse_eps(text)
  else:
    assert attack_job.parse_eps(text) == expected


def check_max_is_an_index_bound(workdir, tmp_path):
  out = tmp_path / "x.tsv"
  printed = attack_in_process(workdir, out, max=1, skip=5, attack="fgsm", eps=(1.0,))
  assert "| x.tsv" in printed
  assert list(results.read_results(out).idx) == [0]  # --max is an index bound
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tsv", "x.tsv.settings.json"]


def test_summarize_and_table_on_a_hand_written_file(tmp_path):
  path = tmp_path / "hand.tsv"
  path.write_text(
    "idx\tlabel\tpredict\tcorrect\tpredict_eps0.5\tcorrect_eps0.5\tpredict_eps1\tcorrect_eps1\ttime\n"
    "0\t3\t3\t1\t3\t1\t5\t0\t0:00:01\n"
    "7\t1\t1\t1\t-1\t0\t-1\t0\t0:00:01\n"
    "9\t2\t-1\t0\t2\t1\t4\t0\t0:00:01\n"
    "12\t4\t4\t1\t4\t1\t4\t1\t0:00:01\n"
  )
  s = analysis.attacks.summarize(path)
  assert s["inputs"] == 4 and s["eps"] == [0.5, 1.0] and s["settings"] == {}
  assert s["clean_accuracy"] == 0.75 and s["accuracy"] == [0.75, 0.25]
  assert s["clean_abstain_rate"] == 0.25 and s["abstain_rate"] == [0.25, 0.25]
  text = analysis.attacks.table({"hand": s})
  assert text.splitlines()[0] == "| run | inputs | clean | eps = 0.5 | eps = 1 | abstain (clean) |"
  assert text.splitlines()[2] == "| hand | 4 | 75.0 | 75.0 | 25.0 | 25.0 |"
  empty = tmp_path / "empty.tsv"
  empty.write_text(path.read_text().splitlines()[0] + "\n")
  with pytest.raises(InputError, match="no result rows"):
    analysis.attacks.summarize(empty)


def test_attack_end_to_end(tmp_path, tmp_path_factory):
  """One test, so that the attacks are built once whatever the xdist split."""
  workdir = tiny_run(tmp_path_factory)
  pgd_and_fgsm = attack_pgd_and_fgsm(workdir, tmp_path)

  def fresh(name):
    folder = tmp_path / name
    folder.mkdir()
    return folder

  check_output_columns_and_settings(pgd_and_fgsm, workdir)
  check_pgd_lowers_accuracy_more_than_fgsm_and_eps_0_is_clean(pgd_and_fgsm)
  check_examples_picture(pgd_and_fgsm)
  check_resume_after_a_kill_gives_the_same_file(workdir, pgd_and_fgsm, fresh("kill"))
  check_resume_refuses_rows_of_other_inputs(workdir, pgd_and_fgsm, fresh("other_inputs"))
  check_8_devices_write_the_same_file(workdir, fresh("devices"))
  check_refuses_to_mix_settings(workdir, pgd_and_fgsm, fresh("mix"))
  check_linf_pgd_stays_below_clean(workdir, fresh("linf"))
  check_smoothed_attack_then_predict(workdir, fresh("smoothed"))
  check_max_is_an_index_bound(workdir, fresh("max"))
