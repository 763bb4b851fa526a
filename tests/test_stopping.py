"""SIGTERM stops the jobs at a safe point: between two rows, two parts or two steps.

Real signals to this process, through the handler the programs install
(:func:`smoothjax.stopping.install`); the jobs run in-process on the tiny trained run.
The multi-process cases are in test_multiprocess_faults.py.
"""

import os
import signal

import pytest
from conftest import tiny_run

from smoothjax import stopping, training
from smoothjax.devices import parallel
from smoothjax.jobs import attack as attack_job
from smoothjax.jobs import generate
from smoothjax.results import parts as part_files
from smoothjax.results import shares


@pytest.fixture(autouse=True)
def sigterm_handler():
  """The programs' SIGTERM handler for the test; the previous one and no request after."""
  previous = signal.getsignal(signal.SIGTERM)
  stopping.reset()
  assert stopping.install()
  yield
  signal.signal(signal.SIGTERM, previous)
  stopping.reset()


def sigterm() -> None:
  os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_raises_at_once_outside_a_loop_and_at_the_safe_point_inside():
  with pytest.raises(stopping.Stopped) as e:
    sigterm()
    for _ in range(10**7):  # the handler runs between two bytecodes
      pass
  assert e.value.status == 143 and "rerun the same command to resume" in str(e.value)
  stopping.reset()
  done = []
  with pytest.raises(stopping.Stopped), stopping.deferred():
    for i in range(3):
      stopping.check()
      sigterm()
      for _ in range(10**5):
        pass
      done.append(i)  # the body in progress ends: no half-written row
  assert done == [0] and stopping.requested() and stopping.at_step(1)
  stopping.reset()
  assert not stopping.requested() and not stopping.at_step(2)


def test_attack_stops_after_the_batch_in_progress_and_releases_its_lock(
  tmp_path, tmp_path_factory, monkeypatch
):
  workdir = tiny_run(tmp_path_factory)
  out = tmp_path / "attack.tsv"
  write = shares.Share.write
  written = []

  def write_then_sigterm(self, row):
    write(self, row)
    written.append(row["idx"])
    if len(written) == 1:
      sigterm()  # mid-batch: the batch's other row is still written

  monkeypatch.setattr(shares.Share, "write", write_then_sigterm)
  options = attack_job.Options(
    workdir=workdir, outfile=str(out), skip=100, batch=2, eps=(0.5,), steps=2
  )
  with pytest.raises(stopping.Stopped, match="stopped by SIGTERM"):
    attack_job.run_attack(options)
  assert written == [0, 100]  # the first batch, whole
  assert not os.path.exists(f"{out}.lock")
  monkeypatch.setattr(shares.Share, "write", write)
  stopping.reset()
  summary = attack_job.run_attack(options)  # the same options resume
  assert summary["inputs"] == 10


def test_generate_stops_after_the_part_in_progress_and_releases_its_lock(
  tmp_path, tmp_path_factory, monkeypatch
):
  workdir = tiny_run(tmp_path_factory)
  outdir = tmp_path / "gen"
  write_part = part_files.write_part
  parts = []

  def write_then_sigterm(*args):
    parts.append(args[2])
    sigterm()
    return write_part(*args)

  monkeypatch.setattr(part_files, "write_part", write_then_sigterm)
  options = generate.Options(
    workdir=workdir, outdir=str(outdir), classes=(0, 1), per_class=2, m=0, steps=2, batch=1
  )
  with pytest.raises(stopping.Stopped, match="stopped by SIGTERM"):
    generate.run_generate(options)
  assert len(parts) == 1 and len(os.listdir(outdir / "parts")) == 1
  assert not (outdir / "generate.lock").exists() and not (outdir / "generated.npz").exists()
  monkeypatch.setattr(part_files, "write_part", write_part)
  stopping.reset()
  assert generate.run_generate(options)["overall"]["images"] == 4


def test_training_stops_after_the_step_in_progress_with_its_checkpoint(tmp_path, monkeypatch):
  from test_training import tiny_config

  put = parallel.put_process_batch
  steps = []

  def put_then_sigterm(*args, **kwargs):
    steps.append(len(steps))
    if len(steps) == 3:
      sigterm()  # during step 3 (0-based 2): it completes, then the loop stops
    return put(*args, **kwargs)

  monkeypatch.setattr(parallel, "put_process_batch", put_then_sigterm)
  workdir = str(tmp_path / "run")
  with pytest.raises(stopping.Stopped, match=r"after step 3 \(epoch 0.0[78]\), saved"):
    training.train_and_evaluate(tiny_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  assert len(steps) == 3 and not os.path.exists(os.path.join(workdir, "train.lock"))
