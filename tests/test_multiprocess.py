"""certify.py and attack.py as multi-process JAX jobs: processes on 127.0.0.1, one share each.

One test, so that the trained run is built once whatever the xdist split.
"""

import os
import shutil
import signal
import time

from conftest import run_processes, start_processes, tiny_run, wait_processes

from smoothjax import jobs, results

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


def test_certify_and_attack_on_several_processes_match_one_and_survive_a_kill(
  tmp_path, tmp_path_factory, monkeypatch
):
  # The launches share one compilation cache: the same programs, compiled once per kind.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  workdir = tiny_run(tmp_path_factory)
  certify = ("certify.py", f"--workdir={workdir}", "--n0=20", "--n=1000", "--batch=500")
  select = ("--alpha=0.01", "--skip=25", "--max=1000")  # 40 inputs
  ref = tmp_path / "ref.tsv"
  # The one-process reference from the job in this process (what certify.py runs).
  jobs.certify.run(
    jobs.certify.Options(
      workdir=str(workdir), outfile=str(ref), n0=20, n=1000, batch=500, alpha=0.01, skip=25,
      max=1000,
    )
  )
  reference = rows(ref)
  assert [int(r[0]) for r in reference] == list(range(0, 1000, 25))

  # Four processes killed part-way: process 1 dies first (a lost host), then the others.
  killed = tmp_path / "killed" / "out.tsv"
  procs = start_processes([*certify, *select, f"--outfile={killed}"], 4)
  parts = [results.part_path(killed, i, 4) for i in range(4)]
  deadline = time.time() + 600
  started = False
  while time.time() < deadline and not any(p.poll() is not None for p in procs):
    if all(os.path.exists(p) and data_lines(p) >= 2 for p in parts):
      started = True
      break
    time.sleep(0.01)
  for i in (1, 0, 2, 3):
    procs[i].send_signal(signal.SIGKILL)
  outcomes = wait_processes(procs, what="killed certify", check=False)
  if not started:
    report = "\n".join(
      f"--- process {i} ({code}):\n{out}\n{err}" for i, (code, out, err) in enumerate(outcomes)
    )
    raise AssertionError(f"the 4 processes had not each written 2 rows before the kill:\n{report}")
  written = [data_lines(p) for p in parts]
  assert all(w >= 2 for w in written) and sum(written) < 40, written
  # Readers take the parts as one result meanwhile.
  partial = results.read_results(killed)
  assert len(partial) == len(set(partial.idx.tolist())) == sum(written)
  assert not os.path.exists(killed)
  kept = tmp_path / "kept"
  shutil.copytree(killed.parent, kept)

  # Everything restarted, on two processes: the parts of four are read, never repeated;
  # the merged file equals the one-process file row for row.
  outcomes = run_processes([*certify, *select, f"--outfile={killed}"], 2, what="resumed certify")
  assert rows(killed) == reference
  assert not results.part_paths(killed) and not os.path.exists(f"{killed}.lock")
  assert "resuming:" in outcomes[0][1] and "resuming:" in outcomes[1][1]
  assert "certified accuracy" in outcomes[0][1] and "process 0 merged" in outcomes[1][1]
  assert results.read_settings(killed) == results.read_settings(ref)

  # The killed run's parts merged by hand: its rows, sorted by idx.
  from smoothjax.cli import certify as certify_cli

  merged = kept / "out.tsv"
  certify_cli.merge_main([str(merged)])
  assert not [name for name in os.listdir(kept) if ".part-" in name]  # parts, their locks
  assert [int(r[0]) for r in rows(merged)] == sorted(int(r[0]) for r in rows(merged))
  assert len(rows(merged)) == sum(written)
  assert set(rows(merged)) <= set(reference)

  # attack.py: the same file on 2 processes as on 1 (rows keyed by dataset index).
  attack = ("attack.py", f"--workdir={workdir}", "--skip=100", "--eps=0.5,1", "--steps=3")
  one, two = tmp_path / "attack1.tsv", tmp_path / "attack2.tsv"
  jobs.attack.run(
    jobs.attack.Options(
      workdir=str(workdir), outfile=str(one), skip=100, eps=(0.5, 1.0), steps=3
    )
  )
  run_processes([*attack, f"--outfile={two}"], 2, what="2-process attack")
  columns = ("idx", "label", "predict", "predict_eps0.5", "predict_eps1")
  assert rows(two, columns) == rows(one, columns) and len(rows(one, columns)) == 10
