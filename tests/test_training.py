"""Training: loss falls, resume equals an uninterrupted run, 8 devices equal 1, bad configs."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from smoothjax import locks, training
from smoothjax.cli import train as train_cli
from smoothjax.configs import default
from smoothjax.data import pipeline
from smoothjax.errors import InputError
from smoothjax.training import loop, modes
from smoothjax.workdir import checkpoints as checkpointing


class Killed(Exception):
  """Stands for the process being killed part-way through training."""


def tiny_config(**overrides):
  config = default.get_config()
  config.model = "cnn_tiny"
  config.num_epochs = 1
  config.batch_size = 100
  config.eval_batch_size = 1000
  config.learning_rate = 0.02
  config.schedule = "step"  # Values independent of num_epochs: extending a run is exact.
  config.progress = False
  config.deterministic = True  # Resumed runs are compared bit for bit (GPUs need it).
  for k, v in overrides.items():
    config[k] = v
  return config


def params_of(workdir):
  model, _, _, _ = checkpointing.restore_model(workdir)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run2"))
  last = training.train_and_evaluate(tiny_config(num_epochs=2), workdir)
  return workdir, last


def test_loss_falls_and_model_learns(two_epoch_run):
  workdir, last = two_epoch_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["epoch"] for r in rows] == [1, 2]
  assert rows[0]["train_loss"] < np.log(10) - 0.3  # well below chance level
  assert rows[1]["train_loss"] < rows[0]["train_loss"]
  assert last["test_accuracy"] > 0.6
  assert 0.0 < last["test_accuracy_noisy"] <= 1.0


def test_resume_equals_uninterrupted_run(two_epoch_run, tmp_path):
  workdir, _ = two_epoch_run
  resumed = str(tmp_path / "resumed")
  training.train_and_evaluate(tiny_config(num_epochs=1), resumed)
  # Rerunning with a larger num_epochs continues from the epoch-1 checkpoint.
  training.train_and_evaluate(tiny_config(num_epochs=2), resumed)
  assert_same_params(workdir, resumed)
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    assert [json.loads(line)["epoch"] for line in f] == [1, 2]  # no duplicated epochs


def test_rerun_of_finished_run_changes_nothing(two_epoch_run):
  workdir, _ = two_epoch_run
  before = params_of(workdir)
  training.train_and_evaluate(tiny_config(num_epochs=2), workdir)
  after = params_of(workdir)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
    np.testing.assert_array_equal(x, y)


def test_restored_model_is_in_eval_mode_and_matches_config(two_epoch_run):
  workdir, _ = two_epoch_run
  model, config, info, meta = checkpointing.restore_model(workdir)
  assert config.model == "cnn_tiny" and meta["epoch"] == 2
  assert info.num_classes == 10 and tuple(info.image_shape) == (28, 28, 1)
  x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
  # Eval-mode BatchNorm: an example's logits do not depend on the rest of the batch (at
  # full float32 precision: GPUs' default TF32 convolutions differ by about 1e-3).
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(model(x)[:1], model(x[:1]), rtol=1e-5, atol=1e-5)


def test_restore_missing_workdir_is_clear(tmp_path):
  with pytest.raises(InputError, match="no trained run"):
    checkpointing.restore_model(str(tmp_path / "nothing"))


def test_gaussian_mode_trains_on_noise_of_the_right_scale():
  config = tiny_config(noise_sd=0.5)
  images = np.full((4, 28, 28, 1), 0.5, np.float32)
  seen = []

  def model(x):
    seen.append(x)
    return jax.numpy.zeros((x.shape[0], 10))

  modes.build(config)(model, jax.random.key(0), images, np.zeros(4, np.int32), 0)
  noise = np.asarray(seen[0]) - images
  assert abs(noise.std() - 0.5) < 0.02 and abs(noise.mean()) < 0.02
  modes.build(tiny_config(mode="standard"))(model, None, images, np.zeros(4, np.int32), 0)
  np.testing.assert_array_equal(seen[1], images)


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("noise_sd", -0.1, "noise_sd"),
    ("batch_size", 0, "batch_size"),
    ("mode", "magic", "unknown training mode"),
    ("model", "resnet9000", "unknown model"),
    ("learning_rate", 0.0, "learning_rate"),
    ("optimizer", "lion", "unknown optimizer"),
    ("augment", "mixup", "unknown augment"),
    ("learning_rate", float("inf"), "learning_rate"),
    ("learning_rate", float("nan"), "learning_rate"),
    ("momentum", float("nan"), "momentum"),
    ("momentum", -0.5, "momentum"),
    ("momentum", 1.0, "momentum"),
    ("lr_decay", float("nan"), "lr_decay"),
    ("lr_decay", 0.0, "lr_decay"),
    ("lr_decay", -0.1, "lr_decay"),
    ("lr_step_epochs", 0, "lr_step_epochs"),
    ("warmup_epochs", -1, "warmup_epochs"),
    ("weight_decay", float("inf"), "weight_decay"),
    ("noise_sd", float("nan"), "noise_sd"),
    ("noise_sd", "0.25", "noise_sd"),
    ("num_epochs", 0, "num_epochs"),
    ("num_epochs", 1.5, "num_epochs"),
    ("eval_batch_size", 0, "eval_batch_size"),
    ("keep_checkpoints", 0, "keep_checkpoints"),
    ("checkpoint_every_epochs", 0, "checkpoint_every_epochs"),
    ("checkpoint_every_steps", -1, "checkpoint_every_steps"),
    ("seed", -1, "seed"),
    ("schedule", "linear", "unknown schedule"),
    ("batch_size", 4001, "larger than the 4000 training examples"),
    ("noise_sd", 0.0, "trains under noise"),
    ("dataset", "nosuch", "not a TFDS dataset"),
    ("eval_split", "validation", "has no split"),
    ("nesterov", "yes", "nesterov"),
    ("progress", 3, "progress"),
    ("lr_milestones", (30, 10), "lr_milestones"),
  ],
)
def test_invalid_config_rejected_before_writing(tmp_path, field, value, message):
  workdir = tmp_path / "w"
  # From a dict, as config.json is read: values of other types than the default's pass.
  config = ml_collections.ConfigDict({**tiny_config().to_dict(), field: value})
  with pytest.raises(InputError, match=message):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_step_schedule_matches_cohen():
  config = tiny_config(learning_rate=0.1, schedule="step", lr_step_epochs=30, lr_decay=0.1)
  schedule = training.make_schedule(config, steps_per_epoch=10)
  np.testing.assert_allclose(
    [schedule(0), schedule(299), schedule(300), schedule(600)], [0.1, 0.1, 0.01, 0.001], rtol=1e-6
  )


def kill_once_at(monkeypatch, at_epoch: int, at_batch: int) -> list[tuple[int, int]]:
  """Makes training raise Killed before batch `at_batch` of `at_epoch`, the first time only.

  Returns the list that records (epoch, start_batch) of every epoch training begins.
  """
  real_epoch = pipeline.TrainInput.epoch
  starts, killed = [], []

  def epoch_batches(self, epoch, start_batch=0):
    starts.append((epoch, start_batch))
    for i, b in enumerate(real_epoch(self, epoch, start_batch)):
      if (epoch, start_batch + i) == (at_epoch, at_batch) and not killed:
        killed.append(True)
        raise Killed
      yield b

  monkeypatch.setattr(pipeline.TrainInput, "epoch", epoch_batches)
  return starts


def assert_same_params(workdir_a, workdir_b):
  a, b = params_of(workdir_a), params_of(workdir_b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_interrupted_run_resumes_to_the_same_parameters(two_epoch_run, tmp_path, monkeypatch):
  """The same command, killed during epoch 2 and rerun, ends where an uninterrupted run does."""
  workdir, _ = two_epoch_run
  resumed = str(tmp_path / "killed")
  starts = kill_once_at(monkeypatch, at_epoch=1, at_batch=5)
  with pytest.raises(Killed):
    training.train_and_evaluate(tiny_config(num_epochs=2), resumed)
  training.train_and_evaluate(tiny_config(num_epochs=2), resumed)
  assert starts == [(0, 0), (1, 0), (1, 0)]  # no checkpoint within epochs: epoch 2 restarts
  assert_same_params(workdir, resumed)


def test_mid_epoch_checkpoints_resume_to_the_same_parameters(two_epoch_run, tmp_path, monkeypatch):
  """Killed mid-epoch with checkpoint_every_steps set, the rerun starts mid-epoch and agrees."""
  workdir, _ = two_epoch_run
  resumed = str(tmp_path / "mid")
  starts = kill_once_at(monkeypatch, at_epoch=1, at_batch=5)
  config = tiny_config(num_epochs=2, checkpoint_every_steps=3)
  with pytest.raises(Killed):
    training.train_and_evaluate(config, resumed)
  ckpt = checkpointing.Checkpointer(resumed, create=False)
  assert ckpt.latest_step() == 45  # saved after steps 42 and 45 of epoch 2 (40 steps each)
  ckpt.close()
  training.train_and_evaluate(config, resumed)
  assert starts == [(0, 0), (1, 0), (1, 5)]
  assert_same_params(workdir, resumed)
  _, _, _, meta = checkpointing.restore_model(resumed, epoch=2)
  assert meta["step"] == 80
  with pytest.raises(InputError, match="no checkpoint at the end of epoch 1"):
    checkpointing.restore_model(resumed, epoch=1)  # only the last 3 checkpoints are kept


CONFIG_NAMES = train_cli.shipped_configs()


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_is_valid(name):
  import importlib

  config = importlib.import_module(f"smoothjax.configs.{name}").get_config()
  training.validate_config(config)
  assert config.num_epochs >= 1 and config.mode in training.MODES
  if name == "cifar10_resnet110":  # Cohen et al.'s recipe.
    assert (config.num_epochs, config.batch_size, config.learning_rate) == (90, 256, 0.1)
    assert (config.lr_step_epochs, config.lr_decay, config.weight_decay) == (30, 0.1, 1e-4)


def test_trains_on_tfds_mock_data_with_a_resnet(tmp_path):
  """The whole training function on TFDS (mocked CIFAR-10 records) with a tiny ResNet."""
  import tensorflow_datasets as tfds

  config = tiny_config(
    dataset="cifar10", model="resnet_tiny", batch_size=8, eval_batch_size=8, noise_sd=0.12
  )
  with tfds.testing.mock_data(num_examples=16):
    last = training.train_and_evaluate(config, str(tmp_path / "cifar"))
  assert last["epoch"] == 1 and last["step"] == 2 and np.isfinite(last["train_loss"])
  model, _, info, _ = checkpointing.restore_model(str(tmp_path / "cifar"))
  assert info.num_classes == 10 and tuple(info.image_shape) == (32, 32, 3)
  assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)


def test_trains_on_an_idx_folder(tmp_path):
  """An MNIST-format folder written here trains through config.dataset = 'idx:PATH'."""
  from smoothjax import data

  src = data.load("embedded_mnist")
  folder = tmp_path / "digits"
  folder.mkdir()
  for split, prefix, n in (("train", "train", 300), ("test", "t10k", 100)):
    images, labels = src.split(split).get(np.arange(n))
    data.write_idx(
      str(folder / f"{prefix}-images-idx3-ubyte.gz"),
      (images[..., 0] * 255).round().astype(np.uint8),
    )
    data.write_idx(str(folder / f"{prefix}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))
  last = training.train_and_evaluate(
    tiny_config(dataset=f"idx:{folder}", num_epochs=2), str(tmp_path / "w")
  )
  assert last["step"] == 2 * 3 and last["test_accuracy"] > 0.3


def test_resuming_with_another_model_is_refused(two_epoch_run):
  workdir, _ = two_epoch_run
  with pytest.raises(InputError, match="model='cnn_tiny'"):
    training.train_and_evaluate(tiny_config(num_epochs=3, model="cnn"), workdir)
  assert checkpointing.Checkpointer(workdir, create=False).latest_step() == 2 * 40


def test_resuming_with_another_batch_size_is_refused(two_epoch_run):
  workdir, _ = two_epoch_run
  with pytest.raises(InputError, match="batch_size it was trained with"):
    training.train_and_evaluate(tiny_config(num_epochs=3, batch_size=50), workdir)
  assert checkpointing.Checkpointer(workdir, create=False).latest_step() == 2 * 40


def test_fewer_epochs_than_trained_says_so_and_changes_nothing(two_epoch_run, capsys):
  workdir, _ = two_epoch_run
  with open(os.path.join(workdir, "config.json")) as f:
    config_before = f.read()
  last = training.train_and_evaluate(tiny_config(num_epochs=1), workdir)
  assert "already trained 2 epochs" in capsys.readouterr().out
  assert last["epoch"] == 2
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == config_before


def test_diverging_run_stops_before_saving_broken_weights(tmp_path):
  workdir = str(tmp_path / "nan")
  with pytest.raises(InputError, match="diverged"):
    training.train_and_evaluate(tiny_config(learning_rate=1e30), workdir)
  ckpt = checkpointing.Checkpointer(workdir, create=False)
  assert ckpt.latest_step() is None  # nothing saved
  ckpt.close()


def test_second_training_process_on_a_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / "busy")
  os.makedirs(workdir)
  with locks.exclusive(os.path.join(workdir, "train.lock"), f"workdir {workdir}"):
    with pytest.raises(InputError, match="in use"):
      training.train_and_evaluate(tiny_config(), workdir)


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(InputError, match="is a file"):
    training.train_and_evaluate(tiny_config(), str(path))


def test_resumed_epoch_logs_the_whole_epoch(two_epoch_run, tmp_path, monkeypatch):
  """Killed mid-epoch and resumed, the epoch's train metrics equal the uninterrupted run's."""
  workdir, _ = two_epoch_run
  resumed = str(tmp_path / "partial")
  kill_once_at(monkeypatch, at_epoch=1, at_batch=5)
  config = tiny_config(num_epochs=2, checkpoint_every_steps=3)
  with pytest.raises(Killed):
    training.train_and_evaluate(config, resumed)
  training.train_and_evaluate(config, resumed)

  def rows(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
      return [json.loads(line) for line in f]

  want, got = rows(workdir), rows(resumed)
  assert got[1]["resumed_at_step"] == 45
  for key in ("train_loss", "train_accuracy", "test_accuracy", "test_accuracy_noisy"):
    assert got[1][key] == pytest.approx(want[1][key], rel=1e-5, abs=1e-6), key


def test_torn_metrics_line_does_not_block_resume(tmp_path):
  workdir = str(tmp_path / "torn")
  training.train_and_evaluate(tiny_config(num_epochs=1), workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"epoch": 2, "train_lo')  # killed while writing
  last = training.train_and_evaluate(tiny_config(num_epochs=2), workdir)
  assert last["epoch"] == 2
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["epoch"] for line in f] == [1, 2]


def test_metrics_lines_are_strict_json():
  line = loop._json_line({"epoch": 1, "loss": float("nan"), "x": float("inf")})
  assert json.loads(line) == {"epoch": 1, "loss": None, "x": None}
