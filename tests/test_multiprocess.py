"""certify.py and attack.py as multi-process JAX jobs: processes on 127.0.0.1, one share each.

One test, so that the trained run is built once whatever the xdist split.
"""

import os
import shutil
import signal
import time

from conftest import run, run_processes, start_processes, train_tiny, wait_processes

from smoothjax import results

KEY_COLUMNS = ("idx", "label", "predict", "radius", "correct")


def rows(path, columns=KEY_COLUMNS):
  """The rows of a merged result file, as tuples of the given columns' text, in file order."""
  with open(path) as f:
    lines = [ln.rstrip("\n").split("\t") for ln in f]
  where = [lines[0].index(c) for c in columns]
  return [tuple(ln[i] for i in where) for ln in lines[1:]]


def data_lines(path) -> int:
  with open(path) as f:
    return max(sum(1 for line in f if line.endswith("\n")) - 1, 0)


def test_certify_and_attack_on_several_processes_match_one_and_survive_a_kill(tmp_path):
  workdir = tmp_path / "run"
  train_tiny(workdir)
  certify = ("certify.py", f"--workdir={workdir}", "--n0=20", "--n=1000", "--batch=500")
  select = ("--alpha=0.01", "--skip=25", "--max=1000")  # 40 inputs
  ref = tmp_path / "ref.tsv"
  run(*certify, *select, f"--outfile={ref}")
  reference = rows(ref)
  assert [int(r[0]) for r in reference] == list(range(0, 1000, 25))

  # Four processes: each certifies every fourth input into its part; process 0 merges.
  four = tmp_path / "four" / "out.tsv"
  outcomes = run_processes([*certify, *select, f"--outfile={four}"], 4, what="4-process certify")
  assert rows(four) == reference
  assert not results.part_paths(four) and not os.path.exists(f"{four}.lock")
  assert "certified accuracy" in outcomes[0][1]
  assert all("process 0 merged" in out for _, out, _ in outcomes[1:])
  assert results.read_settings(four) == results.read_settings(ref)

  # Two processes killed part-way: process 1 dies first (a lost host), then process 0.
  killed = tmp_path / "killed" / "out.tsv"
  procs = start_processes([*certify, *select, f"--outfile={killed}"], 2)
  parts = [results.part_path(killed, i, 2) for i in range(2)]
  deadline = time.time() + 300
  while time.time() < deadline and not all(os.path.exists(p) and data_lines(p) >= 3 for p in parts):
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.01)
  procs[1].send_signal(signal.SIGKILL)
  procs[0].send_signal(signal.SIGKILL)
  wait_processes(procs, what="killed certify", check=False)
  written = [data_lines(p) for p in parts]
  assert all(w >= 3 for w in written) and sum(written) < 40, written
  # Readers take the parts as one result meanwhile.
  partial = results.read_results(killed)
  assert len(partial) == len(set(partial.idx.tolist())) == sum(written)
  assert not os.path.exists(killed)
  kept = tmp_path / "kept"
  shutil.copytree(killed.parent, kept)

  # Everything restarted (two processes again): every row exactly once, sorted by idx.
  outcomes = run_processes([*certify, *select, f"--outfile={killed}"], 2, what="resumed certify")
  assert rows(killed) == reference
  assert not results.part_paths(killed)
  assert "resuming:" in outcomes[0][1] and "resuming:" in outcomes[1][1]

  # The killed run's parts merged by hand, then resumed by one process (another count).
  from smoothjax.cli import certify as certify_cli

  merged = kept / "out.tsv"
  certify_cli.merge_main([str(merged)])
  assert not [name for name in os.listdir(kept) if ".part-" in name]  # parts, their locks
  assert [int(r[0]) for r in rows(merged)] == sorted(int(r[0]) for r in rows(merged))
  assert len(rows(merged)) == sum(written)
  proc = run(*certify, *select, f"--outfile={merged}")
  assert f"resuming: {sum(written)} of 40" in proc.stdout
  assert sorted(rows(merged), key=lambda r: int(r[0])) == reference  # appended after the merge

  # attack.py: the same file on 2 processes as on 1 (rows keyed by dataset index).
  attack = ("attack.py", f"--workdir={workdir}", "--skip=100", "--eps=0.5,1", "--steps=3")
  one, two = tmp_path / "attack1.tsv", tmp_path / "attack2.tsv"
  run(*attack, f"--outfile={one}")
  run_processes([*attack, f"--outfile={two}"], 2, what="2-process attack")
  columns = ("idx", "label", "predict", "predict_eps0.5", "predict_eps1")
  assert rows(two, columns) == rows(one, columns) and len(rows(one, columns)) == 10
