"""Fixed-point fine-tuning as a training mode: init_from, its metrics, kill-and-resume, errors."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from test_training import Killed, kill_once_at, params_of, tiny_config

from smoothjax import data, models, training
from smoothjax.errors import InputError
from smoothjax.workdir import checkpoints as checkpointing

# End-to-end runs (deselected by -m "not slow").
pytestmark = pytest.mark.slow


def small_digits(folder) -> str:
  """An IDX folder of 800 training and 200 test digits of every class: quick epochs."""
  src = data.load("embedded_mnist")
  os.makedirs(folder, exist_ok=True)
  for split, prefix, n in (("train", "train", 4000), ("test", "t10k", 1000)):
    images, labels = src.split(split).get(np.arange(0, n, 5))
    pixels = (images[..., 0] * 255).round().astype(np.uint8)
    data.write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), pixels)
    data.write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels.astype(np.uint8))
  return f"idx:{folder}"


DATASET = None


def finetune_config(source, **overrides):
  config = tiny_config(
    mode="fixedpoint",
    init_from=source,
    noise_sd=0.0,
    batch_size=100,  # 8 steps per epoch
    learning_rate=0.01,
    dataset=DATASET,
  )
  config.fixedpoint.steps = 2
  for k, v in overrides.items():
    config[k] = v
  return config


def make_runs(root):
  """A trained source run and a one-epoch fine-tuning of it."""
  global DATASET
  DATASET = small_digits(str(root / "digits"))
  source = str(root / "source")
  config = tiny_config(mode="standard", noise_sd=0.0, dataset=DATASET, num_epochs=3)
  training.train_and_evaluate(config, source)
  tuned = str(root / "tuned")
  last = training.train_and_evaluate(finetune_config(source), tuned)
  return source, tuned, last


def distance(a, b):
  return float(
    np.sqrt(
      sum(np.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    )
  )


def check_start_and_metrics(runs):
  source, tuned, last = runs
  assert 0 < last["train_fixed_point"] <= 4.0 + 1e-4  # ||x - psi||^2 <= eps^2 = 4
  assert last["train_cross_entropy"] > 0 and last["test_accuracy"] > 0.3
  with open(os.path.join(tuned, "config.json")) as f:
    assert json.load(f)["init_from"] == source
  info = data.load(DATASET).info
  fresh = nnx.to_pure_dict(nnx.state(models.from_config(finetune_config(source), info, seed=0)))
  fresh = jax.tree.map(np.asarray, fresh)
  before, after = params_of(source), params_of(tuned)
  # 8 small steps from the source: far nearer to it than to a new initialisation.
  assert distance(after, before) < 0.2 * distance(fresh, before)
  assert distance(after, before) > 0


def check_kill_and_resume(runs, tmp_path, monkeypatch):
  source, tuned, _ = runs
  resumed = str(tmp_path / "resumed")
  config = finetune_config(source, checkpoint_every_steps=3)
  starts = kill_once_at(monkeypatch, at_epoch=0, at_batch=5)
  with pytest.raises(Killed):
    training.train_and_evaluate(config, resumed)
  training.train_and_evaluate(config, resumed)
  # The rerun resumes its own checkpoint at step 3, not init_from again.
  assert starts == [(0, 0), (0, 3)]
  a, b = params_of(tuned), params_of(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def check_bad_init_from(runs, tmp_path):
  source, _, _ = runs
  workdir = str(tmp_path / "w")
  for path, overrides, message in (
    (str(tmp_path / "missing"), {}, "missing"),
    (source, {"model": "cnn"}, "holds a run with model='cnn_tiny'"),
    (workdir, {}, "the workdir itself"),
  ):
    with pytest.raises(InputError, match=message):
      training.train_and_evaluate(finetune_config(path, **overrides), workdir)
    assert not os.path.exists(workdir)


def test_fine_tuning_end_to_end(tmp_path_factory, monkeypatch):
  """One test, so that the source and tuned runs are trained once whatever the xdist split."""
  runs = make_runs(tmp_path_factory.mktemp("fixedpoint"))
  check_start_and_metrics(runs)
  check_restored(runs)
  check_bad_init_from(runs, tmp_path_factory.mktemp("bad"))
  check_kill_and_resume(runs, tmp_path_factory.mktemp("resume"), monkeypatch)


def test_fixed_point_needs_noise_only_with_samples():
  from smoothjax.training import modes

  config = finetune_config("", noise_sd=0.0)
  modes.build(config)  # m = 0: the base classifier, no noise needed
  config.fixedpoint.m = 4
  with pytest.raises(InputError, match="noise_sd"):
    modes.build(config)


def check_restored(runs):
  _, tuned, _ = runs
  model, config, _, meta = checkpointing.restore_model(tuned)
  assert config.mode == "fixedpoint" and meta["epoch"] == 1
