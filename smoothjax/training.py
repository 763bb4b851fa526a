"""Training base classifiers for randomized smoothing.

A training *mode* says how a clean batch becomes the batch the model is trained
on. ``standard`` trains on clean images; ``gaussian`` adds ``N(0, noise_sd^2 I)``
in [0, 1] pixel space, the Gaussian data augmentation of Cohen, Rosenfeld and
Kolter, "Certified Adversarial Robustness via Randomized Smoothing" (ICML 2019).
A new mode is one function added to :data:`MODES`.

The train step is a pure jitted function of ``(graphdef, state, images, labels,
key)``: the model and its optimiser are split once with ``nnx.split`` and merged
inside the step, batches are sharded over the ``data`` axis of a mesh and the
state is replicated, so one code path runs on 1 CPU, 8 fake CPU devices, GPUs and
TPUs. The step's key is ``fold_in(train_key, step)``, so a resumed run draws the
same noise as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from smoothjax import augment, checkpointing, models, parallel
from smoothjax import data as data_lib
from smoothjax.errors import InputError

# A mode maps (model, key, images, labels, config) to the images to train on. It
# runs inside the jitted step; `model` is available for modes that attack it.
ModeFn = Callable[
  [nnx.Module, jax.Array, jax.Array, jax.Array, ml_collections.ConfigDict], jax.Array
]


def _standard(model, key, images, labels, config):
  del model, key, labels, config
  return images


def _gaussian(model, key, images, labels, config):
  del model, labels
  return images + config.noise_sd * jax.random.normal(key, images.shape, images.dtype)


MODES: dict[str, ModeFn] = {"standard": _standard, "gaussian": _gaussian}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises InputError for settings that cannot train, before anything is written."""

  def need(cond, message):
    if not cond:
      raise InputError(message)

  need(
    config.mode in MODES, f"unknown training mode {config.mode!r}; choose one of {sorted(MODES)}"
  )
  need(
    config.model in models.MODELS,
    f"unknown model {config.model!r}; choose one of {list(models.MODELS)}",
  )
  need(
    np.isfinite(config.noise_sd) and config.noise_sd >= 0,
    f"noise_sd must be >= 0, got {config.noise_sd}",
  )
  need(
    config.mode != "gaussian" or config.noise_sd > 0,
    "mode 'gaussian' needs noise_sd > 0 (set --config.noise_sd)",
  )
  for name in ("batch_size", "eval_batch_size", "num_epochs", "keep_checkpoints"):
    need(
      isinstance(config[name], int) and config[name] >= 1,
      f"{name} must be an integer >= 1, got {config[name]!r}",
    )
  need(
    config.get("augment", "none") in augment.AUGMENTATIONS,
    f"unknown augment {config.get('augment')!r}; choose one of {list(augment.AUGMENTATIONS)}",
  )
  need(config.checkpoint_every_epochs >= 1, "checkpoint_every_epochs must be >= 1")
  need(
    config.get("checkpoint_every_steps", 0) >= 0,
    "checkpoint_every_steps must be >= 0 (0: only at epoch ends)",
  )
  need(config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}")
  need(config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}")
  need(
    config.optimizer in OPTIMIZERS,
    f"unknown optimizer {config.optimizer!r}; choose one of {list(OPTIMIZERS)}",
  )
  need(
    config.schedule in SCHEDULES,
    f"unknown schedule {config.schedule!r}; choose one of {list(SCHEDULES)}",
  )
  need(
    config.batch_size % jax.device_count() == 0,
    f"batch_size {config.batch_size} must be a multiple of the {jax.device_count()} devices",
  )


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Learning-rate schedule in optimiser steps.

  ``step`` multiplies the rate by ``lr_decay`` every ``lr_step_epochs`` epochs (Cohen
  et al.: 0.1 every 30 epochs); its values do not depend on ``num_epochs``, so a run
  extended with a larger ``num_epochs`` follows the same curve. ``cosine`` decays
  to 0 over ``num_epochs`` after ``warmup_epochs`` of linear warm-up.
  """
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "step":
    every = config.lr_step_epochs * steps_per_epoch
    return optax.exponential_decay(lr, every, config.lr_decay, staircase=True)
  warmup = config.get("warmup_epochs", 0) * steps_per_epoch
  total = config.num_epochs * steps_per_epoch
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), 0.0)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """optax transformation: SGD with momentum and PyTorch-style weight decay, or Adam(W)."""
  schedule = make_schedule(config, steps_per_epoch)
  if config.optimizer == "sgd":
    return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.get("nesterov", False)),
    )
  if config.optimizer == "adam":
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(schedule))
  return optax.adamw(schedule, weight_decay=config.weight_decay)


@dataclasses.dataclass
class Trainer:
  """A model, its optimiser, and the jitted steps, over a device mesh."""

  config: ml_collections.ConfigDict
  model: nnx.Module
  optimizer: nnx.Optimizer

  def __post_init__(self):
    self.graphdef, state = nnx.split((self.model, self.optimizer))
    del state
    self._mode = MODES[self.config.mode]

  def state(self):
    return nnx.state((self.model, self.optimizer))

  @functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
  def train_step(self, state, images, labels, key):
    """One optimiser step; returns the new state and (loss, accuracy) on the batch."""
    model, optimizer = nnx.merge(self.graphdef, state)
    model.train()
    augment_key, mode_key = jax.random.split(key)
    images = augment.apply(self.config.get("augment", "none"), augment_key, images)
    inputs = self._mode(model, mode_key, images, labels, self.config)

    def loss_fn(model):
      logits = model(inputs)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return nnx.state((model, optimizer)), {"loss": loss, "accuracy": accuracy}

  @functools.partial(jax.jit, static_argnums=(0,))
  def eval_step(self, state, images, labels, key, noise_sd):
    """Correct-prediction counts on clean images and under Gaussian noise ``noise_sd``."""
    model, _ = nnx.merge(self.graphdef, state)
    model.eval()
    clean = jnp.sum(jnp.argmax(model(images), -1) == labels)
    noisy_inputs = images + noise_sd * jax.random.normal(key, images.shape, images.dtype)
    noisy = jnp.sum(jnp.argmax(model(noisy_inputs), -1) == labels)
    return clean, noisy

  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other


def make_trainer(config, info: data_lib.DatasetInfo, steps_per_epoch: int) -> Trainer:
  model = models.from_config(config, info, seed=config.seed)
  optimizer = nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)
  return Trainer(config, model, optimizer)


def evaluate(trainer: Trainer, state, split, *, batch_size: int, noise_sd: float, key, mesh):
  """Clean accuracy and accuracy under ``noise_sd`` Gaussian noise over a whole split."""
  n = len(split)
  clean = noisy = 0
  ndev = mesh.devices.size
  for i, start in enumerate(range(0, n, batch_size)):
    idx = np.arange(start, min(start + batch_size, n))
    images, labels = split.get(idx)
    # Pad the last batch to a multiple of the device count; padded rows get label -1.
    pad = (-len(idx)) % ndev
    if pad:
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
      labels = np.concatenate([labels, np.full((pad,), -1, labels.dtype)])
    images, labels = parallel.shard_batch((images, labels), mesh)
    c, z = trainer.eval_step(state, images, labels, jax.random.fold_in(key, i), noise_sd)
    clean += int(c)
    noisy += int(z)
  return clean / n, noisy / n


def summarize(metrics: list[Mapping[str, jax.Array]]) -> dict[str, float]:
  """Means of per-step metrics, fetched from the device once."""
  stacked = jax.device_get(metrics)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]} if stacked else {}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
  """Trains ``config.num_epochs`` epochs, resuming from the latest checkpoint in ``workdir``.

  Each epoch logs train loss/accuracy, clean test accuracy and test accuracy under
  the training noise to the console and to ``WORKDIR/metrics.jsonl``. A checkpoint
  is saved every ``checkpoint_every_epochs`` epochs, at the end, and, if
  ``checkpoint_every_steps`` > 0, every that many steps within an epoch (for long
  epochs); a resumed run continues from the latest one, mid-epoch included, and
  draws the same batches and noise as an uninterrupted run.

  Returns:
    The last epoch's metrics.
  """
  validate_config(config)
  dataset = data_lib.load(config.dataset, data_dir=config.get("data_dir") or None)
  train_split, test_split = dataset.split("train"), dataset.split(config.get("eval_split", "test"))
  steps_per_epoch = data_lib.num_batches(train_split, config.batch_size)
  mesh = parallel.make_mesh() if mesh is None else mesh

  _check_same_run(config, workdir)
  trainer = make_trainer(config, dataset.info, steps_per_epoch)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  state = parallel.replicate(trainer.state(), mesh)
  start_step = 0
  latest = ckpt.latest_step()
  if latest is not None:
    model_state, opt_state, meta = ckpt.restore(latest, state[0], state[1])
    state = parallel.replicate(nnx.State({0: model_state, 1: opt_state}), mesh)
    start_step = int(meta["step"])
    print(
      f"resuming from step {start_step} (epoch {start_step / steps_per_epoch:.2f}) in {workdir}"
    )
  checkpointing.save_run_files(workdir, config, dataset.info)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_history(metrics_path, upto_epoch=start_step // steps_per_epoch)
  train_key = jax.random.fold_in(jax.random.key(config.seed), 0)
  eval_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  last = history[-1] if history else {}
  with open(metrics_path + ".tmp", "w") as f:
    f.writelines(json.dumps(h) + "\n" for h in history)
  os.replace(metrics_path + ".tmp", metrics_path)
  every_steps = config.get("checkpoint_every_steps", 0)

  def save(step, state):
    meta = {"epoch": step // steps_per_epoch, "step": step, "steps_per_epoch": steps_per_epoch}
    ckpt.save(step, state[0], state[1], meta)

  try:
    for epoch in range(start_step // steps_per_epoch, config.num_epochs):
      t0 = time.time()
      step_metrics = []
      first = max(start_step - epoch * steps_per_epoch, 0)
      bar = tqdm(
        data_lib.batches(
          train_split, config.batch_size, seed=config.seed, epoch=epoch, start_batch=first
        ),
        initial=first,
        total=steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.num_epochs}",
        leave=False,
        disable=not config.get("progress", True),
      )
      for i, (images, labels) in enumerate(bar, start=first):
        step = epoch * steps_per_epoch + i
        batch = parallel.shard_batch((images, labels.astype(np.int32)), mesh)
        state, m = trainer.train_step(state, *batch, jax.random.fold_in(train_key, step))
        step_metrics.append(m)
        if i % 20 == 0:
          bar.set_postfix(loss=f"{float(m['loss']):.3f}")
        if every_steps and (step + 1) % every_steps == 0 and i + 1 < steps_per_epoch:
          save(step + 1, state)
      train = summarize(step_metrics)
      clean, noisy = evaluate(
        trainer,
        state,
        test_split,
        batch_size=config.eval_batch_size,
        noise_sd=config.noise_sd,
        key=jax.random.fold_in(eval_key, epoch),
        mesh=mesh,
      )
      last = {
        "epoch": epoch + 1,
        "step": (epoch + 1) * steps_per_epoch,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "test_accuracy": clean,
        "test_accuracy_noisy": noisy,
        "noise_sd": config.noise_sd,
        "seconds": time.time() - t0,
      }
      print(
        f"epoch {epoch + 1:3d}/{config.num_epochs}  loss {train['loss']:.4f}  "
        f"train acc {train['accuracy']:.4f}  test acc {clean:.4f}  "
        f"test acc (noise {config.noise_sd:g}) {noisy:.4f}  {last['seconds']:.1f}s",
        flush=True,
      )
      with open(metrics_path, "a") as f:
        f.write(json.dumps(last) + "\n")
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.num_epochs:
        save(last["step"], state)
  finally:
    ckpt.close()
  return last


# Settings that change the shapes of the saved state: a workdir cannot resume with others.
_STATE_FIELDS = ("model", "dataset", "optimizer")


def _check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir trained with another model, dataset or optimiser."""
  if not os.path.exists(os.path.join(workdir, checkpointing.CONFIG_FILE)):
    return
  saved = checkpointing.load_config(workdir)
  clash = [f"{f}={saved.get(f)!r}" for f in _STATE_FIELDS if saved.get(f) != config.get(f)]
  if clash:
    raise InputError(
      f"{workdir} holds a run with {', '.join(clash)}; resume it with the same settings "
      "or choose a new --workdir"
    )
  changed = [
    k for k in config if k != "num_epochs" and json.dumps(saved.get(k)) != json.dumps(config[k])
  ]
  if changed:
    print(f"note: resuming {workdir} with changed settings: {', '.join(sorted(changed))}")


def _read_history(path: str, upto_epoch: int) -> list[dict]:
  """Metrics lines of epochs already checkpointed (later ones are retrained)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["epoch"] <= upto_epoch]
