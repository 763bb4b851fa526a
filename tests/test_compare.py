"""compare.py end to end: attack and certification of several runs, one table, resume."""

from __future__ import annotations

import csv
import os

import pytest
from conftest import STANDARD, assert_one_line_outcome, run, run_program_cases, tiny_run

from smoothjax import analysis, results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("compare")
  workdirs = {}
  # The session's tiny runs (read only), by name.
  workdirs["standard"] = root / "standard"
  workdirs["standard"].symlink_to(tiny_run(tmp_path_factory, *STANDARD), target_is_directory=True)
  workdirs["gaussian"] = root / "gaussian"
  workdirs["gaussian"].symlink_to(tiny_run(tmp_path_factory), target_is_directory=True)
  return root, workdirs


ARGS = (
  "--n0=20",
  "--n=200",
  "--alpha=0.01",
  "--batch=200",
  "--skip=100",
  "--steps=3",
  "--eps_l2=1.0",
  "--eps_linf=0.1",
  "--radii=0,0.25",
)


def test_compare_end_to_end(runs):
  """One test, so that the trained runs are built once whatever the xdist split."""
  check_compare_writes_one_table_from_the_programs_files(runs)
  check_bad_input_is_one_line_and_writes_nothing(runs)


def check_compare_writes_one_table_from_the_programs_files(runs):
  root, workdirs = runs
  out = root / "out"
  proc = run(
    "compare.py",
    f"--workdirs={workdirs['standard']},{workdirs['gaussian']}",
    f"--outdir={out}",
    "--sigma=0.25",
    *ARGS,
  )
  assert "comparison.md" in proc.stdout
  with open(out / "comparison.csv") as f:
    table = list(csv.reader(f))
  header, rows = table[0], table[1:]
  assert [r[0] for r in rows] == ["standard", "gaussian"]
  assert header[:6] == ["run", "mode", "noise", "trained sigma", "certified sigma", "clean"]
  for row in rows:
    folder = out / row[0]
    pgd = analysis.attacks.summarize(folder / "attack_pgd_l2.tsv")
    fgsm = analysis.attacks.summarize(folder / "attack_fgsm_linf.tsv")
    assert pgd["inputs"] == 10  # indices 0, 100, ..., 900
    assert float(row[5]) == pytest.approx(100 * pgd["clean_accuracy"], abs=0.05)
    assert float(row[header.index("pgd l2 1")]) == pytest.approx(100 * pgd["accuracy"][0], abs=0.05)
    assert float(row[header.index("fgsm linf 0.1")]) == pytest.approx(
      100 * fgsm["accuracy"][0], abs=0.05
    )
    cert = results.read_results(folder / "certify_sigma0.25.tsv")
    assert float(row[-1]) == pytest.approx(analysis.acr(cert), abs=5e-4)
    assert float(row[header.index("cert r=0")]) == pytest.approx(
      100 * analysis.certified_accuracy(cert, 0.0), abs=0.05
    )
  assert rows[0][4] == "0.25" and rows[1][3] == "0.25" and rows[1][2] == "gaussian"
  assert os.path.getsize(out / "comparison.png") > 10_000

  # Rerunning finds every file complete: nothing is recomputed, the table is the same.
  before = {p: os.path.getmtime(p) for p in out.glob("*/*.tsv")}
  run(
    "compare.py",
    f"--workdirs={workdirs['standard']},{workdirs['gaussian']}",
    f"--outdir={out}",
    "--sigma=0.25",
    *ARGS,
  )
  with open(out / "comparison.csv") as f:
    assert list(csv.reader(f)) == table
  assert {p: os.path.getmtime(p) for p in out.glob("*/*.tsv")} == before


BAD_INPUTS = [
  (("--workdirs={missing}",), "no trained run"),
  (("--workdirs={standard}",), "pass --sigma"),
  (("--workdirs={standard}", "--sigma=-1"), "--sigma"),
  (("--workdirs={standard}", "--sigma=0.25", "--eps_l2=a"), "--eps_l2"),
  (("--workdirs={standard}", "--sigma=0.25", "--eps_linf=-0.1"), "--eps_linf"),
  (("--workdirs={standard}", "--sigma=0.25", "--eps_l2=0.5,0.50"), "lists 0.5 twice"),
  (("--workdirs={standard}", "--sigma=0.25", "--attacks=cw"), "--attacks"),
  (("--workdirs={standard}", "--sigma=0.25", "--n=0"), "--n "),
  (("--workdirs={standard}", "--sigma=0.25", "--alpha=2"), "--alpha"),
  (("--workdirs={standard},{standard}", "--sigma=0.25"), "distinct"),
  (("--workdirs={standard}", "--same_sigma"), "--same_sigma needs --sigma"),
]

def check_bad_input_is_one_line_and_writes_nothing(runs):
  root, workdirs = runs
  out = root / "bad"
  names = {"missing": root / "nope", **workdirs}
  cases = [[*(a.format(**names) for a in args), f"--outdir={out}"] for args, _ in BAD_INPUTS]
  outcomes = run_program_cases("compare", cases, root)
  for (_, message), outcome in zip(BAD_INPUTS, outcomes, strict=True):
    assert_one_line_outcome(outcome, message)
    assert not out.exists()
