"""Training as a 2-process JAX job (jax.distributed on 127.0.0.1, gloo): each process reads only
its rows, the result equals a 1-process run of the same global batch, and a job killed after a
mid-epoch checkpoint resumes to the same parameters.

One check costs three launches: the 2-process job (a workdir locked by another job, TFDS mock
data, the embedded digits killed after a mid-epoch checkpoint) beside a 1-process run of the
embedded digits on 2 CPU devices, then the 2-process job resuming.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

import jax
import numpy as np
from conftest import REPO_ROOT, popen_python, start_processes, wait_processes, xla_flags
from flax import nnx

from smoothjax import data
from smoothjax.workdir import checkpoints as checkpointing

DRIVER = r'''
"""Trains the runs given as JSON in argv[1], as one process of a (multi-process) JAX job."""

import json
import os
import sys

from smoothjax.devices import parallel

parallel.initialize_distributed()

import jax
import numpy as np

from smoothjax.configs import default
from smoothjax import data, training
from smoothjax.errors import InputError
from smoothjax.training import loop
from smoothjax.workdir import checkpoints as checkpointing

jax.config.update("jax_debug_key_reuse", True)
spec = json.loads(sys.argv[1])
# The launches of one test share compiled programs: most of a tiny run's time is compiling.
jax.config.update("jax_compilation_cache_dir", spec["cache"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


class Recording(data.Split):
  """The training split, appending the indices of every read to a file of this process."""

  def __init__(self, inner, path):
    self.inner, self.path = inner, path

  def __len__(self):
    return len(self.inner)

  def get(self, indices, transform=None):
    with open(self.path, "a") as f:
      f.write(" ".join(map(str, np.asarray(indices).tolist())) + "\n")
    return self.inner.get(indices, transform)


real_load, real_save, real_restore_data = (
  data.load, checkpointing.Checkpointer.save, checkpointing.Checkpointer.restore_data
)


def restore_data(self, step, iterator):
  restored = real_restore_data(self, step, iterator)
  print(f"INPUT STATE RESTORED {step} {restored}", flush=True)
  return restored


checkpointing.Checkpointer.restore_data = restore_data


def train(run):
  config = default.get_config()
  config.update(model="cnn_tiny", num_epochs=1, schedule="step", progress=False)
  config.update(**run["config"])
  reads = f"{run['workdir']}.reads{jax.process_index()}"

  def load(*args, **kwargs):
    dataset = real_load(*args, **kwargs)
    splits = dict(dataset.splits, train=Recording(dataset.splits["train"], reads))
    return data.Dataset(dataset.info, splits)

  def save(self, step, *args, **kwargs):
    real_save(self, step, *args, **kwargs)
    if step == run.get("exit_after_save"):
      self.manager.wait_until_finished()
      print(f"KILLED after checkpoint {step}", flush=True)
      os._exit(3)  # as if killed: no cleanup, no further step

  loop.data_lib.load, checkpointing.Checkpointer.save = load, save
  try:
    training.train_and_evaluate(config, run["workdir"])
  except InputError as e:
    print(f"REFUSED {e}", flush=True)


for run in spec["runs"]:
  if run.get("tfds"):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=run["tfds"]):
      train(run)
  else:
    train(run)
'''

# Mock TFDS MNIST: 2000 examples, 1 step of 2000. The 4000 embedded digits: 2 steps of 2000, a
# checkpoint after each; the 2-process job is killed after the mid-epoch one (step 1). The same
# shapes everywhere, so that each launch compiles its programs once.
TFDS = dict(tfds=2000, config=dict(dataset="mnist", batch_size=2000, eval_batch_size=1000))
EMBEDDED = dict(config=dict(batch_size=2000, eval_batch_size=1000, checkpoint_every_steps=1))
SEED = 0  # smoothjax/configs/default.py's


def spec(root, name, *, kill=None, locked=False, tfds=True):
  runs = [dict(EMBEDDED, workdir=f"{root}/{name}_embedded", exit_after_save=kill)]
  if tfds:
    runs.insert(0, dict(TFDS, workdir=f"{root}/{name}_tfds"))
    runs[0]["config"] = dict(TFDS["config"], data_dir=f"{root}/tfds_data")
  if locked:
    runs.insert(0, dict(EMBEDDED, workdir=f"{root}/locked"))
  return json.dumps({"cache": f"{root}/jax_cache", "runs": runs})


def start_one_process(args, devices):
  """Starts ``python ARGS`` alone (no jax.distributed) on ``devices`` CPU devices."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SMOOTHJAX_"))}
  env.update(
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO_ROOT,
    XLA_FLAGS=xla_flags(devices),
  )
  return [popen_python(args, env)]


def params_of(workdir):
  model, _, _, _ = checkpointing.restore_model(workdir)
  return jax.tree.leaves(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model))))


def assert_same_params(a, b):
  for x, y in zip(params_of(a), params_of(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def reads(path):
  with open(path) as f:
    return [[int(i) for i in line.split()] for line in f]


def rows_of(n, batch_size, steps_per_epoch, steps, rows):
  """The split indices of rows ``rows`` of the global batches of ``steps``."""
  out = []
  for step in steps:
    epoch, b = divmod(step, steps_per_epoch)
    order = data.permutation(n, SEED, epoch)
    out.append(order[b * batch_size + rows[0] : b * batch_size + rows[1]].tolist())
  return out


def test_two_processes_read_their_rows_equal_one_process_and_resume_after_a_kill(tmp_path):
  root = str(tmp_path)
  os.makedirs(f"{root}/locked")
  holder = {"pid": os.getpid(), "host": socket.gethostname()}
  holder["started"] = datetime.datetime.now(datetime.UTC).isoformat()
  with open(f"{root}/locked/train.lock", "w") as f:
    json.dump(holder, f)  # another job (this test) trains there
  driver = tmp_path / "driver.py"
  driver.write_text(DRIVER)
  # The 1-process run (a third process) beside the 2-process job: both wait on one another's
  # compiles and barriers less than on the CPUs.
  one = start_one_process([driver, spec(root, "one", tfds=False)], devices=2)
  job = start_processes([driver, spec(root, "two", kill=1, locked=True)], 2)
  outcomes = wait_processes(job, what="2-process job", check=False)
  wait_processes(one, what="1-process run on 2 devices")

  # A workdir locked by another job is refused on both processes, and nothing is written.
  (code0, out0, err0), (code1, out1, err1) = outcomes
  report = f"process 0 ({code0}):\n{out0}\n{err0[-3000:]}\nprocess 1 ({code1}):\n{out1}\n{err1}"
  refused = [[ln for ln in out.splitlines() if ln.startswith("REFUSED")] for _, out, _ in outcomes]
  assert len(refused[0]) == 1 and f"process {os.getpid()}" in refused[0][0], report
  assert len(refused[1]) == 1 and "process 0 of this job could not take" in refused[1][0], report
  assert sorted(os.listdir(f"{root}/locked")) == ["train.lock"]

  # Killed after the checkpoint of step 1, with each process's input state in it.
  assert code0 == 3 and "KILLED after checkpoint 1" in out0, report
  assert code1 != 0, report  # killed too (or taken down by process 0)
  saved = os.listdir(f"{root}/two_embedded/checkpoints/1/data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(saved), saved

  job = start_processes([driver, spec(root, "two", tfds=False)], 2)
  (code0, out0, err0), (code1, out1, err1) = wait_processes(job, what="resumed 2-process job")
  assert "resuming from step 1" in out0 and "epoch   1/1" in out0, out0
  assert "INPUT STATE RESTORED 1 True" in out0 and "INPUT STATE RESTORED 1 True" in out1
  assert "epoch" not in out1 and "resuming" not in out1, out1  # process 0 alone reports
  with open(f"{root}/two_embedded/metrics.jsonl") as f:
    assert [json.loads(line)["epoch"] for line in f] == [1]  # written once, by process 0

  # Each process read exactly its half of every global batch, in order; one process all of it.
  for p in (0, 1):
    half = (p * 1000, (p + 1) * 1000)
    assert reads(f"{root}/two_tfds.reads{p}") == rows_of(2000, 2000, 1, [0], half)
    got = reads(f"{root}/two_embedded.reads{p}")
    # The killed job read step 0 and read ahead step 1 (maybe); the resumed one step 1.
    killed, resumed = got[:-1], got[-1:]
    assert killed in (rows_of(4000, 2000, 2, [0], half), rows_of(4000, 2000, 2, [0, 1], half))
    assert resumed == rows_of(4000, 2000, 2, [1], half)
  assert reads(f"{root}/one_embedded.reads0") == rows_of(4000, 2000, 2, [0, 1], (0, 2000))

  # The same parameters as the 1-process run of the same global batches.
  assert_same_params(f"{root}/two_embedded", f"{root}/one_embedded")
