"""Tests for smoothjax.workdir.checkpoints: checksums, damaged checkpoints, run files, restore."""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from smoothjax import data as data_lib
from smoothjax import models
from smoothjax.errors import InputError
from smoothjax.workdir import checkpoints as checkpointing
from smoothjax.workdir.checkpoints import CheckpointDamaged

INFO = data_lib.DatasetInfo(
  "embedded_mnist", 10, (28, 28, 1), (0.13,), (0.31,), {"train": 4000, "test": 1000}
)
CONFIG = {"model": "cnn_tiny", "dataset": "embedded_mnist", "noise_sd": 0.25, "data_dir": ""}
STEPS = (10, 20, 30)  # one checkpoint at the end of each of epochs 1, 2 and 3

# When TensorStore fails to read a damaged file, orbax leaves read coroutines un-awaited.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _config():
  import ml_collections

  return ml_collections.ConfigDict(CONFIG)


def _states(seed: int):
  """(model state, optimizer state) of a tiny CNN and its SGD optimiser."""
  model = models.from_config(_config(), INFO, seed=seed)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  return nnx.state(model), nnx.state(optimizer)


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """A workdir with checkpoints at steps 10, 20 and 30 of different weights."""
  import ml_collections

  workdir = str(tmp_path_factory.mktemp("pristine") / "run")
  checkpointing.save_run_files(workdir, ml_collections.ConfigDict(CONFIG), INFO)
  ckpt = checkpointing.Checkpointer(workdir)
  for seed, step in enumerate(STEPS):
    model_state, opt_state = _states(seed)
    ckpt.save(
      step, model_state, opt_state, {"epoch": step // 10, "step": step, "steps_per_epoch": 10}
    )
  ckpt.close()
  return workdir


@pytest.fixture
def workdir(pristine, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(pristine, copy)
  return copy


def _item(workdir, step, item="model"):
  return os.path.join(workdir, "checkpoints", str(step), item)


def _largest_data_file(workdir, step, item="model"):
  files = glob.glob(os.path.join(_item(workdir, step, item), "ocdbt.process_0", "d", "*"))
  return max(files, key=os.path.getsize)


def _overwrite_bytes(workdir, step):
  # 32 bytes in the middle of the weights: orbax and TensorStore read them without complaint.
  path = _largest_data_file(workdir, step)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x7f" * 32)


def _truncate(workdir, step):
  path = _largest_data_file(workdir, step)
  os.truncate(path, os.path.getsize(path) // 2)


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)


# ----------------------------------------------------------------------------
# Checksums.


def test_round_trip_verifies_and_hides_the_checksums(workdir):
  model_state, opt_state = _states(2)
  ckpt = checkpointing.Checkpointer(workdir, create=False)
  restored_model, restored_opt, meta = ckpt.restore(30, model_state, opt_state)
  ckpt.close()
  _equal(restored_model, model_state)
  _equal(restored_opt, opt_state)
  assert meta == {"epoch": 3, "step": 30, "steps_per_epoch": 10}
  with open(os.path.join(_item(workdir, 30, "meta"), "metadata")) as f:
    saved = json.load(f)[checkpointing.CHECKSUMS]
  assert saved == {
    "model": checkpointing.state_checksum(model_state),
    "optimizer": checkpointing.state_checksum(opt_state),
  }
  assert saved["model"].startswith("sha256:") and saved["model"] != saved["optimizer"]


def test_checksum_sees_every_byte_path_dtype_and_shape():
  state = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.int32)}
  base = checkpointing.state_checksum(state)
  assert checkpointing.state_checksum({"b": state["b"], "a": state["a"]}) == base
  flipped = {**state, "a": state["a"].copy()}
  flipped["a"][1, 2] = 1e-45
  changed = [
    flipped,
    {**state, "a": state["a"].reshape(3, 2)},
    {**state, "a": state["a"].astype(np.int32)},
    {"c": state["a"], "b": state["b"]},
  ]
  assert len({base, *(checkpointing.state_checksum(s) for s in changed)}) == 5


def test_overwritten_bytes_are_caught_by_the_checksum(workdir):
  _overwrite_bytes(workdir, 30)
  model_state, opt_state = _states(0)
  ckpt = checkpointing.Checkpointer(workdir, create=False)
  with pytest.raises(CheckpointDamaged, match="model state does not match the checksum") as error:
    ckpt.restore(30, model_state, opt_state)
  ckpt.close()
  assert error.value.step == 30 and error.value.directory == os.path.join(workdir, "checkpoints")
  assert "checkpoint 30 in " + error.value.directory in str(error.value)
  assert "\n" not in str(error.value)


def test_restore_latest_falls_back_and_sets_damaged_checkpoints_aside(workdir, capsys):
  _overwrite_bytes(workdir, 30)
  shutil.rmtree(_item(workdir, 20, "optimizer"))
  model_state, opt_state = _states(0)
  ckpt = checkpointing.Checkpointer(workdir)
  step, restored_model, restored_opt, meta = ckpt.restore_latest(model_state, opt_state)
  assert step == 10 and meta["step"] == 10
  _equal(restored_model, _states(0)[0])
  err = capsys.readouterr().err
  assert "skipping damaged checkpoint 30" in err and "checksum" in err
  assert "skipping damaged checkpoint 20" in err and "optimizer item is missing" in err
  assert ckpt.all_steps() == [10]
  assert sorted(os.listdir(os.path.join(workdir, checkpointing.DAMAGED_DIR))) == ["20", "30"]
  # Training goes on from step 10: orbax saves steps 20 and 30 again (it skips any step
  # not newer than its latest checkpoint, so the damaged ones had to go).
  ckpt.save(20, *_states(5), {"epoch": 2, "step": 20, "steps_per_epoch": 10})
  ckpt.close()
  ckpt = checkpointing.Checkpointer(workdir, create=False)
  assert ckpt.latest_step() == 20
  _equal(ckpt.restore(20, model_state)[0], _states(5)[0])
  ckpt.close()


def test_restore_latest_with_nothing_intact_or_nothing_at_all(workdir, tmp_path):
  for step in STEPS:
    _truncate(workdir, step)
  ckpt = checkpointing.Checkpointer(workdir)
  with pytest.raises(CheckpointDamaged, match=r"no intact checkpoint is left") as error:
    ckpt.restore_latest(*_states(0))
  assert error.value.step == 30 and "[20, 10]" in str(error.value)
  ckpt.close()
  empty = checkpointing.Checkpointer(str(tmp_path / "empty"))
  assert empty.restore_latest(*_states(0)) is None
  empty.close()


def test_checkpoints_without_checksums_are_accepted_unverified(tmp_path):
  # What Checkpointer.save wrote before checksums existed.
  model_state, opt_state = _states(3)
  directory = str(tmp_path / "old" / "checkpoints")
  manager = ocp.CheckpointManager(directory, item_names=("model", "optimizer", "meta"))
  meta = {"epoch": 1, "step": 10, "steps_per_epoch": 10}
  manager.save(
    10,
    args=ocp.args.Composite(
      model=ocp.args.StandardSave(model_state),
      optimizer=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(meta),
    ),
  )
  manager.wait_until_finished()
  manager.close()
  ckpt = checkpointing.Checkpointer(str(tmp_path / "old"), create=False)
  step, restored, _, restored_meta = ckpt.restore_latest(model_state)
  ckpt.close()
  assert step == 10 and restored_meta == meta
  _equal(restored, model_state)


def test_restore_names_missing_steps(workdir):
  ckpt = checkpointing.Checkpointer(workdir, create=False)
  with pytest.raises(InputError, match=r"no checkpoint of step 15 .* have steps \[10, 20, 30\]"):
    ckpt.restore(15, _states(0)[0])
  ckpt.close()


# ----------------------------------------------------------------------------
# restore_model on damaged checkpoints: one line naming the checkpoint, never a traceback.

DAMAGE = {
  "overwritten bytes": (_overwrite_bytes, "does not match the checksum"),
  "truncated data file": (_truncate, "cannot be read"),
  "deleted data files": (
    lambda w, s: [
      os.remove(p) for p in glob.glob(os.path.join(_item(w, s), "ocdbt.process_0", "d", "*"))
    ],
    "cannot be read",
  ),
  "deleted model item": (lambda w, s: shutil.rmtree(_item(w, s)), "model item is missing"),
  "deleted meta item": (lambda w, s: shutil.rmtree(_item(w, s, "meta")), "meta item"),
  "empty OCDBT manifest": (
    lambda w, s: _write(os.path.join(_item(w, s), "manifest.ocdbt"), ""),
    "cannot be read",
  ),
  "corrupt item metadata": (
    lambda w, s: _write(os.path.join(_item(w, s), "_METADATA"), "{not json"),
    "metadata cannot be read",
  ),
  "corrupt sharding metadata": (
    lambda w, s: _write(os.path.join(_item(w, s), "_sharding"), "{not json"),
    "cannot be read",
  ),
  "corrupt meta JSON": (
    lambda w, s: _write(os.path.join(_item(w, s, "meta"), "metadata"), "{not json"),
    "meta item cannot be read",
  ),
  "meta JSON a list": (
    lambda w, s: _write(os.path.join(_item(w, s, "meta"), "metadata"), "[1, 2]"),
    "not a JSON object",
  ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_restore_model_names_a_damaged_checkpoint_and_falls_back(workdir, damage, capsys):
  edit, match = DAMAGE[damage]
  edit(workdir, 30)
  before = sorted(os.listdir(workdir))
  with pytest.raises(CheckpointDamaged, match=match) as error:
    checkpointing.restore_model(workdir, epoch=3)
  message = str(error.value)
  assert "\n" not in message and f"checkpoint 30 in {workdir}/checkpoints" in message
  # Without an epoch: a warning, and the newest intact checkpoint; the workdir is untouched.
  model, _, _, meta = checkpointing.restore_model(workdir)
  assert meta["step"] == 20 and "skipping damaged checkpoint 30" in capsys.readouterr().err
  _equal(nnx.state(model), _states(1)[0])
  assert sorted(os.listdir(workdir)) == before
  # The other epochs are still there.
  assert checkpointing.restore_model(workdir, epoch=1)[3]["step"] == 10


# ----------------------------------------------------------------------------
# restore_model on bad run files: one line saying which file and what is wrong.


def _edit_json(name, edit):
  def apply(workdir):
    path = os.path.join(workdir, name)
    with open(path) as f:
      obj = json.load(f)
    _write(path, json.dumps(edit(obj)))

  return apply


def _raw(name, text):
  return lambda workdir: _write(os.path.join(workdir, name), text)


BAD_RUN_FILES = {
  "config not JSON": (_raw("config.json", '{"model": '), "cannot read .*config.json as JSON"),
  "config a list": (_raw("config.json", "[1, 2]"), "config.json holds a JSON list"),
  "config string noise_sd": (
    _edit_json("config.json", lambda c: {**c, "noise_sd": "0.25"}),
    "'noise_sd' must be a number >= 0, got '0.25'",
  ),
  "config negative noise_sd": (
    _edit_json("config.json", lambda c: {**c, "noise_sd": -0.5}),
    "'noise_sd' must be a number >= 0, got -0.5",
  ),
  "config lacks model": (
    _edit_json("config.json", lambda c: {k: v for k, v in c.items() if k != "model"}),
    "lacks 'model'",
  ),
  "config unknown model": (
    _edit_json("config.json", lambda c: {**c, "model": "vgg"}),
    "'model' is 'vgg'",
  ),
  "config another model": (
    _edit_json("config.json", lambda c: {**c, "model": "cnn"}),
    r"model state of checkpoint 30 .* does not fit .*config.json",
  ),
  "config deleted": (lambda w: os.remove(os.path.join(w, "config.json")), "no trained run"),
  "info deleted": (lambda w: os.remove(os.path.join(w, "dataset_info.json")), "is missing"),
  "info not JSON": (_raw("dataset_info.json", "\x00\x01"), "cannot read .*dataset_info.json"),
  "info a string": (_raw("dataset_info.json", '"mnist"'), "holds a JSON str"),
  "info lacks keys": (
    _edit_json("dataset_info.json", lambda i: {k: v for k, v in i.items() if k != "std"}),
    "lacks std",
  ),
  "info string num_classes": (
    _edit_json("dataset_info.json", lambda i: {**i, "num_classes": "10"}),
    "'num_classes' must be an integer",
  ),
  "info bad image_shape": (
    _edit_json("dataset_info.json", lambda i: {**i, "image_shape": [28, 28]}),
    "'image_shape' must be",
  ),
  "info zero std": (
    _edit_json("dataset_info.json", lambda i: {**i, "std": [0]}),
    "'std' must be a list of positive numbers",
  ),
  "info channels disagree": (
    _edit_json("dataset_info.json", lambda i: {**i, "mean": [0.1, 0.2]}),
    "one value per channel",
  ),
  "info other classes": (
    _edit_json("dataset_info.json", lambda i: {**i, "num_classes": 7}),
    r"head/bias/value is \(10,\) there but \(7,\) here",
  ),
  "checkpoints deleted": (
    lambda w: shutil.rmtree(os.path.join(w, "checkpoints")),
    "no checkpoints in",
  ),
  "checkpoints a file": (
    lambda w: shutil.rmtree(os.path.join(w, "checkpoints")) or _raw("checkpoints", "x")(w),
    "is a file, not a checkpoint directory",
  ),
}


@pytest.mark.parametrize("case", list(BAD_RUN_FILES))
def test_restore_model_refuses_bad_run_files_in_one_line(workdir, case):
  edit, match = BAD_RUN_FILES[case]
  edit(workdir)
  with pytest.raises(InputError, match=match) as error:
    checkpointing.restore_model(workdir)
  assert "\n" not in str(error.value)
  assert not isinstance(error.value, CheckpointDamaged)  # the files, not the checkpoint


def test_workdir_that_is_a_file_or_missing(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  for call in (
    lambda: checkpointing.restore_model(str(path)),
    lambda: checkpointing.Checkpointer(str(path)),
    lambda: checkpointing.load_info(str(path)),
  ):
    with pytest.raises(InputError, match="is a file, not a directory"):
      call()
  with pytest.raises(InputError, match="no trained run"):
    checkpointing.restore_model(str(tmp_path / "missing"))


def test_step_of_epoch_skips_an_unreadable_meta_with_a_warning(workdir, capsys):
  _write(os.path.join(_item(workdir, 20, "meta"), "metadata"), "{")
  ckpt = checkpointing.Checkpointer(workdir, create=False)
  assert ckpt.step_of_epoch(3) == 30
  # Epoch 2 ends at step 20 by the other checkpoints' steps_per_epoch: that one is named.
  with pytest.raises(CheckpointDamaged, match="checkpoint 20 .* meta item cannot be read"):
    ckpt.step_of_epoch(2)
  with pytest.raises(InputError, match=r"end of epoch 5: .*\[20\] are damaged"):
    ckpt.step_of_epoch(5)
  ckpt.close()
  assert "skipping checkpoint 20" in capsys.readouterr().err


def test_resuming_with_another_optimiser_is_refused_in_one_line(workdir):
  model_state, _ = _states(0)
  model = models.from_config(_config(), INFO, seed=0)
  adam = nnx.state(nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param))
  ckpt = checkpointing.Checkpointer(workdir)
  with pytest.raises(InputError, match="optimizer state .* saved with another optimiser"):
    ckpt.restore_latest(model_state, adam)
  ckpt.close()


def test_a_full_disk_is_refused_before_writing(workdir, monkeypatch):
  ckpt = checkpointing.Checkpointer(workdir)
  usage = shutil.disk_usage(workdir)
  monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: usage._replace(free=100_000))
  model_state, opt_state = _states(7)
  with pytest.raises(InputError, match="the disk is full: checkpoint 40 needs about"):
    ckpt.save(40, model_state, opt_state, {"epoch": 4, "step": 40, "steps_per_epoch": 10})
  ckpt.close()
  assert checkpointing.Checkpointer(workdir, create=False).all_steps() == list(STEPS)


def test_a_write_that_fails_in_orbax_is_one_line(workdir, monkeypatch):
  """A disk that fills up while orbax writes: its error becomes a one-line InputError."""
  ckpt = checkpointing.Checkpointer(workdir)

  def fail(*args, **kwargs):
    raise ValueError(
      'RESOURCE_EXHAUSTED: Error writing "x/0" in OCDBT database: Failed to write 60220 bytes '
      "to file 25: No space left on device [os_error_code='28']"
    )

  monkeypatch.setattr(ckpt.manager, "wait_until_finished", fail)
  with pytest.raises(InputError, match="the disk is full: a checkpoint could not be written"):
    ckpt.close()
  monkeypatch.setattr(ckpt.manager, "save", fail)
  model_state, opt_state = _states(7)
  with pytest.raises(InputError, match="the disk is full: checkpoint 40 could not be written"):
    ckpt.save(40, model_state, opt_state, {"epoch": 4, "step": 40, "steps_per_epoch": 10})
