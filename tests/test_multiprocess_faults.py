"""certify.py when a process of its job is stopped, killed or started with other settings.

SIGTERM (one process or every one) stops the whole job at its next safe point, with exit
status 143, released locks and one line saying how to resume; ``kill -9`` of one process
ends the other with one line naming it (exit status 3) once JAX's runtime misses its
heartbeats; processes started with different settings all refuse before any work.
"""

import os
import signal
import time

import pytest
from conftest import (
  _child_env,
  popen_python,
  run,
  start_processes,
  tiny_run,
  wait_processes,
)

from smoothjax import results

# 40 inputs of 20,000 samples each: long enough to be stopped part-way.
CERTIFY = ("certify.py", "--n0=20", "--n=20000", "--batch=500", "--alpha=0.01")
SELECT = ("--skip=25", "--max=1000")
SELECTED = list(range(0, 1000, 25))
# 12 inputs for the kill tests, which resume what is left.
FEW = ("--skip=25", "--max=300")


def data_lines(path) -> int:
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return max(sum(1 for line in f if line.endswith("\n")) - 1, 0)


def error_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if line.startswith("error: ")]


def wait_for_rows(procs, paths, least: int = 1, timeout: float = 300) -> None:
  """Waits until every file in ``paths`` holds ``least`` rows (fails if a process ends)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if all(data_lines(p) >= least for p in paths):
      return
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.05)
  for p in procs:
    p.kill()
  outcomes = [(p.wait(), *p.communicate()) for p in procs]
  pytest.fail(f"the processes wrote no rows before the signal: {outcomes}")


@pytest.fixture
def workdir(tmp_path_factory):
  return tiny_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def _shared_compilation_cache(tmp_path_factory, monkeypatch):
  cache = tmp_path_factory.getbasetemp() / "faults_jax_cache"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def assert_locks_released(folder) -> None:
  assert not [name for name in os.listdir(folder) if name.endswith(".lock")], os.listdir(folder)


@pytest.mark.parametrize("victims", [(1,), (0, 1)], ids=["one", "both"])
def test_sigterm_stops_every_process_of_a_job(tmp_path, workdir, victims):
  out = tmp_path / "out.tsv"
  args = [*CERTIFY, f"--workdir={workdir}", *SELECT, f"--outfile={out}"]
  procs = start_processes(args, 2)
  wait_for_rows(procs, [results.part_path(out, i, 2) for i in range(2)])
  sent = time.time()
  for i in victims:
    procs[i].send_signal(signal.SIGTERM)
  outcomes = wait_processes(procs, what="certify stopped by SIGTERM", check=False, timeout=120)
  took = time.time() - sent
  report = "\n".join(f"--- {i}: {code}\n{err}" for i, (code, _, err) in enumerate(outcomes))
  assert [code for code, _, _ in outcomes] == [143, 143], report
  assert took < 60, report  # at the next input, not at the end of the share
  for i, (_, _, err) in enumerate(outcomes):
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, report
    assert "rerun the same command on every process to resume" in lines[0], report
    if i in victims:
      assert "stopped by SIGTERM" in lines[0], report
    else:
      assert "process 1 of 2 was stopped by SIGTERM" in lines[0], report
  assert_locks_released(tmp_path)
  written = sum(data_lines(results.part_path(out, i, 2)) for i in range(2))
  assert 2 <= written < len(SELECTED)


@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "coordinator"])
def test_a_killed_process_ends_the_other_with_one_line_and_the_rerun_resumes(
  tmp_path, workdir, victim, monkeypatch
):
  monkeypatch.setenv("SMOOTHJAX_HEARTBEAT_TIMEOUT", "4")
  out = tmp_path / "out.tsv"
  args = [*CERTIFY, f"--workdir={workdir}", *FEW, f"--outfile={out}"]
  procs = start_processes(args, 2)
  wait_for_rows(procs, [results.part_path(out, i, 2) for i in range(2)])
  procs[victim].send_signal(signal.SIGKILL)
  outcomes = wait_processes(procs, what="certify with a killed process", check=False, timeout=120)
  survivor = 1 - victim
  code, _, err = outcomes[survivor]
  assert code == 3, (code, err)
  assert "Fatal Python error" not in err and "Traceback" not in err, err
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and len(error_lines(err)) == 1, err
  assert f"process {victim} of 2" in last and "rerun the same command" in last, last
  assert not os.path.exists(results.lock_path(results.part_path(out, survivor, 2)))
  if victim == 1:
    # The same command (here on one process) resumes: every selected input exactly once
    # (test_multiprocess.py resumes a killed 4-process job on 2, row for row).
    run(*args)
    res = results.read_results(out)
    assert sorted(res.idx.tolist()) == list(range(0, 300, 25))
    assert not results.part_paths(out)


def test_processes_started_with_other_settings_all_refuse_before_any_work(tmp_path, workdir):
  out = tmp_path / "out.tsv"
  args = [CERTIFY[0], f"--workdir={workdir}", *SELECT, f"--outfile={out}", "--n0=20"]
  # Process 0 with --n=1000, process 1 with --n=300.
  procs = start_processes(args, 2, extra=[["--n=1000"], ["--n=300"]])
  outcomes = wait_processes(procs, what="certify with other settings", check=False, timeout=300)
  for code, _, err in outcomes:
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, outcomes
    assert "different settings" in lines[0] and "n: 1000 on process 0 vs 300" in lines[0], lines
    assert "same command line" in lines[0], lines
  assert not [name for name in os.listdir(tmp_path) if name.startswith("out.tsv")]


def test_sigterm_stops_a_single_process_run_and_releases_its_lock(tmp_path, workdir):
  out = tmp_path / "out.tsv"
  args = [*CERTIFY, f"--workdir={workdir}", *SELECT, f"--outfile={out}"]
  procs = [popen_python(args, _child_env())]
  wait_for_rows(procs, [out])
  procs[0].send_signal(signal.SIGTERM)
  ((code, _, err),) = wait_processes(procs, what="certify stopped", check=False, timeout=120)
  assert code == 143 and error_lines(err) == [
    "error: stopped by SIGTERM; rerun the same command to resume"
  ], err
  assert_locks_released(tmp_path)
  assert 1 <= data_lines(out) < len(SELECTED)


def test_sigterm_to_one_process_of_a_training_job_stops_both_at_one_checkpointed_step(tmp_path):
  workdir = tmp_path / "run"
  args = [
    "train.py",
    "--config=default",
    f"--workdir={workdir}",
    "--config.model=cnn_tiny",
    "--config.num_epochs=20",
    "--config.progress=False",
  ]
  procs = start_processes(args, 2)
  first_epoch = workdir / "checkpoints" / "62"  # 62 steps of 64 digits an epoch
  deadline = time.time() + 300
  while not first_epoch.exists() and time.time() < deadline:
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  outcomes = wait_processes(procs, what="training stopped by SIGTERM", check=False, timeout=120)
  report = "\n".join(
    f"--- {i}: {code}\n{out}\n{err}" for i, (code, out, err) in enumerate(outcomes)
  )
  assert [code for code, _, _ in outcomes] == [143, 143], report
  lines = [error_lines(err) for _, _, err in outcomes]
  assert all(len(ln) == 1 for ln in lines) and lines[0] == lines[1], report  # the same step
  step = int(lines[0][0].split("after step ")[1].split()[0])
  assert 62 < step < 20 * 62 and "rerun the same command on every process" in lines[0][0]
  assert (workdir / "checkpoints" / str(step)).is_dir(), os.listdir(workdir / "checkpoints")
  assert not (workdir / "train.lock").exists()
