"""Training base classifiers for randomized smoothing: the loop.

What is trained on is the *mode*'s business (:mod:`smoothjax.training.modes`: each mode is
a loss ``loss_fn(model, key, images, labels, epoch) -> (loss, aux)``); this
module holds the jitted train and eval steps and the epoch loop with its
checkpoints, metrics and resume. Optimisers, schedules and the config checks are
:mod:`smoothjax.training.optim`'s (their names are offered here too).

The train step is a pure jitted function of ``(graphdef, state, images, labels,
key, epoch)``: the model and its optimiser are split once with ``nnx.split`` and
merged inside the step, batches are sharded over the ``data`` axis of a mesh and
the state is replicated, so one code path runs on 1 CPU, 8 fake CPU devices,
GPUs and TPUs. The step's key is ``fold_in(train_key, step)``, so a resumed run
draws the same noise as an uninterrupted one.

Training input comes from :class:`smoothjax.data.pipeline.TrainInput`: on several hosts
(``jax.distributed``) each process reads only its rows of every global batch, and its
grain iterator state is saved in each checkpoint. Every process runs the loop and joins
every checkpoint save and restore; process 0 alone writes the run files and
``metrics.jsonl``, prints, and holds the workdir's lock.

A run that diverges (a non-finite loss or parameter) stops with an error before
the broken state is saved; a workdir is held by one training job at a time
(``WORKDIR/train.lock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from smoothjax import data as data_lib
from smoothjax import locks, models, stopping
from smoothjax import workdir as workdir_lib
from smoothjax.data import augment, pipeline
from smoothjax.devices import numerics, parallel
from smoothjax.errors import InputError
from smoothjax.models import transforms
from smoothjax.training import modes
from smoothjax.training.optim import (
  OPTIMIZERS,
  REQUIRED_FIELDS,
  SCHEDULES,
  make_optimizer,
  make_schedule,
  validate_config,
)
from smoothjax.workdir import checkpoints as checkpointing

__all__ = [
  "MODES",
  "OPTIMIZERS",
  "REQUIRED_FIELDS",
  "SCHEDULES",
  "Trainer",
  "evaluate",
  "make_optimizer",
  "make_schedule",
  "make_trainer",
  "train_and_evaluate",
  "validate_config",
]

MODES = modes.MODES


def _say(*args, **kwargs) -> None:
  """``print`` on process 0 only: a multi-process job reports once."""
  if jax.process_index() == 0:
    print(*args, **kwargs)


@dataclasses.dataclass
class Trainer:
  """A model, its optimiser, the mode's loss and the jitted steps, over a device mesh."""

  config: ml_collections.ConfigDict
  model: nnx.Module
  optimizer: nnx.Optimizer

  def __post_init__(self):
    self.graphdef, state = nnx.split((self.model, self.optimizer))
    del state
    self._loss_fn = modes.build(self.config)
    self.noise = modes.noise_from_config(self.config)
    # A frozen model the loss uses (the classifier a denoiser is trained against): its
    # state is a jit argument of the steps, never trained, never checkpointed here.
    load = getattr(self._loss_fn, "load_frozen", None)
    self.frozen = None if load is None else load()
    self._evaluate = getattr(self._loss_fn, "evaluate", None)

  def state(self):
    return nnx.state((self.model, self.optimizer))

  def train_step(self, state, images, labels, key, epoch=0):
    """One optimiser step.

    Returns:
      The new state and the batch's metrics: ``loss``, the mode's ``aux`` entries
      (``accuracy`` first, for classifiers) and ``finite`` (False once the loss or a
      parameter is NaN or infinite).
    """
    return self._train_step(state, self.frozen, images, labels, key, epoch)

  @functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
  def _train_step(self, state, frozen, images, labels, key, epoch):
    model, optimizer = nnx.merge(self.graphdef, state)
    model.train()
    augment_key, mode_key = jax.random.split(key)
    images = augment.apply(self.config.get("augment", "none"), augment_key, images)
    extra = {} if frozen is None else {"frozen": frozen}

    def loss_fn(model):
      return self._loss_fn(model, mode_key, images, labels, epoch, **extra)

    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in params]))
    return nnx.state((model, optimizer)), {"loss": loss, **aux, "finite": finite}

  def eval_step(self, state, images, labels, key):
    """The test metrics' sums over a batch (rows labelled -1 are padding).

    Classifiers: ``accuracy`` (clean) and ``accuracy_noisy`` (under the run's noise, clean
    if none) correct-prediction counts; other modes: their ``evaluate``'s sums.
    """
    return self._eval_step(state, self.frozen, images, labels, key)

  @functools.partial(jax.jit, static_argnums=(0,))
  def _eval_step(self, state, frozen, images, labels, key):
    model, _ = nnx.merge(self.graphdef, state)
    model.eval()
    if self._evaluate is not None:
      return self._evaluate(
        model, key, images, labels, **({} if frozen is None else {"frozen": frozen})
      )
    clean = jnp.sum(jnp.argmax(model(images), -1) == labels)
    if self.noise is None:
      return {"accuracy": clean, "accuracy_noisy": clean}
    noise = modes.for_inputs(self.noise, images)
    noisy_inputs = images + noise.sample(key, images.shape, images.dtype)
    noisy = jnp.sum(jnp.argmax(model(noisy_inputs), -1) == labels)
    return {"accuracy": clean, "accuracy_noisy": noisy}

  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other


def make_trainer(config, info: data_lib.DatasetInfo, steps_per_epoch: int) -> Trainer:
  # Mixed precision with compute_dtype bfloat16: bfloat16 activations and products, float32
  # parameters, optimiser state and loss (the models return float32 logits).
  dtype = transforms.compute_dtype(config.get("compute_dtype", "float32"))
  model = models.from_config(config, info, seed=config.seed, dtype=dtype)
  optimizer = nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)
  return Trainer(config, model, optimizer)


def evaluate(trainer: Trainer, state, split, *, batch_size: int, key, mesh) -> dict[str, float]:
  """The test metrics over a whole split, as means per input.

  Classifiers: ``accuracy`` (clean) and ``accuracy_noisy`` (under the run's noise); a
  denoiser or diffusion model: its mode's metrics (``mse``, ``mse_noisy``, ...).
  """
  n = len(split)
  sums: dict[str, float] = {}
  ndev = mesh.devices.size
  for i, start in enumerate(range(0, n, batch_size)):
    idx = np.arange(start, min(start + batch_size, n))
    # The last batch is padded to a multiple of the device count; padded rows get label -1.
    size = len(idx) + (-len(idx)) % ndev
    lo, hi = parallel.process_rows(mesh, size)
    mine = idx[lo:hi]  # this process's rows, fewer than hi - lo in the padding
    images, labels = split.get(mine if len(mine) else idx[:1])
    images, labels = images[: len(mine)], labels[: len(mine)]
    pad = hi - lo - len(mine)
    if pad:
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
      labels = np.concatenate([labels, np.full((pad,), -1, labels.dtype)])
    images, labels = parallel.put_process_batch((images, labels), mesh, size)
    batch = jax.device_get(trainer.eval_step(state, images, labels, jax.random.fold_in(key, i)))
    for name, value in batch.items():
      sums[name] = sums.get(name, 0.0) + float(value)
  return {name: value / n for name, value in sums.items()}


class _EpochMetrics:
  """Sums of per-step metrics over an epoch, carried across a mid-epoch resume.

  The device values of recent steps are fetched in groups, so the loop does not
  wait on the device every step; the sums are float64 on the host.
  """

  def __init__(self, partial: Mapping | None = None):
    partial = partial or {}
    self.sums = {k: float(v) for k, v in partial.get("sums", {}).items()}
    self.count = int(partial.get("count", 0))
    self._pending: list[dict] = []

  def add(self, metrics: dict) -> None:
    self._pending.append(metrics)

  def flush(self) -> bool:
    """Adds the pending steps to the sums; returns False if any step was non-finite."""
    finite = True
    for m in jax.device_get(self._pending):
      finite &= bool(m.pop("finite"))
      for k, v in m.items():
        self.sums[k] = self.sums.get(k, 0.0) + float(v)
      self.count += 1
    self._pending = []
    return finite

  def means(self) -> dict[str, float]:
    return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

  def partial(self) -> dict:
    return {"sums": dict(self.sums), "count": self.count}


def _diverged(step: int, steps_per_epoch: int, config) -> InputError:
  return InputError(
    f"training diverged: the loss or the parameters became NaN or infinite by step {step} "
    f"(epoch {step / steps_per_epoch:.2f}) with learning_rate={config.learning_rate:g}; "
    "nothing from this point was saved: lower learning_rate (or check noise_sd and the "
    "mode's settings) and rerun"
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
  """Trains ``config.num_epochs`` epochs, resuming from the latest checkpoint in ``workdir``.

  Each epoch logs the mode's train loss and metrics, clean test accuracy and test
  accuracy under the training noise to the console and to ``WORKDIR/metrics.jsonl``.
  A checkpoint is saved every ``checkpoint_every_epochs`` epochs, at the end, and,
  if ``checkpoint_every_steps`` > 0, every that many steps within an epoch (for
  long epochs); a resumed run continues from the latest intact one, mid-epoch
  included, and draws the same batches and noise as an uninterrupted run. SIGTERM
  (:mod:`smoothjax.stopping`) stops the loop after the current step, on every process
  at the same step, with a checkpoint of that step.

  Returns:
    The last epoch's metrics.

  Raises:
    InputError: bad settings, a workdir in use or trained with other settings, or
      a run that diverged.
    smoothjax.stopping.Stopped: SIGTERM stopped the run (its checkpoint is saved).
  """
  validate_config(config)
  numerics.require_deterministic(bool(config.get("deterministic", False)))
  with numerics.precision_scope(config.get("precision", "default")):
    return _train_and_evaluate(config, workdir, mesh=mesh)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh) -> dict:
  dataset = data_lib.load(config.dataset, data_dir=config.get("data_dir") or None)
  train_split, test_split = dataset.split("train"), dataset.split(config.get("eval_split", "test"))
  if config.batch_size > len(train_split):
    raise InputError(
      f"batch_size {config.batch_size} is larger than the {len(train_split)} training "
      "examples; choose a smaller --config.batch_size"
    )
  steps_per_epoch = data_lib.num_batches(train_split, config.batch_size)
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.process_rows(mesh, config.batch_size)  # a batch size the devices divide
  pipeline.host_transform(config, dataset.info, config.seed)
  _check_same_run(config, workdir)
  _check_init_from(config, workdir)
  if os.path.isfile(os.path.join(workdir, workdir_lib.runs.CONVERSION_FILE)):
    raise InputError(
      f"{workdir} holds a model converted by convert.py, not a training run; fine-tune it "
      f"into a new workdir with --config.init_from={workdir}"
    )
  workdir_lib.make_workdir(workdir)
  with _workdir_lock(workdir):
    return _train(config, workdir, dataset, train_split, test_split, steps_per_epoch, mesh)


@contextlib.contextmanager
def _workdir_lock(workdir: str):
  """``WORKDIR/train.lock`` for the whole job: process 0 takes it, the others learn whether.

  A lock taken by every process of one job would refuse all but the first; a second
  job on the same workdir is refused on every one of its processes.
  """
  path = os.path.join(workdir, "train.lock")
  if jax.process_count() == 1:
    with locks.exclusive(path, f"workdir {workdir}"):
      yield
    return
  from jax.experimental import multihost_utils

  with contextlib.ExitStack() as stack:
    error = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(locks.exclusive(path, f"workdir {workdir}"))
      except InputError as e:
        error = e
    taken = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if error is not None:
      raise error
    if not taken:
      raise InputError(
        f"process 0 of this job could not take {path} (another job trains in workdir "
        f"{workdir}? see process 0's error); wait for it or choose another --workdir"
      )
    yield


def _train(config, workdir, dataset, train_split, test_split, steps_per_epoch, mesh) -> dict:
  trainer = make_trainer(config, dataset.info, steps_per_epoch)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  state = parallel.replicate(trainer.state(), mesh)
  if trainer.frozen is not None:
    trainer.frozen = parallel.replicate(trainer.frozen, mesh)
  start_step, partial, meta, train_input = 0, None, {}, None
  try:
    restored = ckpt.restore_latest(state[0], state[1])
    if restored is not None:
      start_step, model_state, opt_state, meta = restored
      saved_spe = int(meta.get("steps_per_epoch", steps_per_epoch))
      if saved_spe != steps_per_epoch:
        raise InputError(
          f"{workdir} was trained with {saved_spe} steps per epoch, this config gives "
          f"{steps_per_epoch} (batch_size {config.batch_size} on {len(train_split)} examples); "
          "resume with the batch_size it was trained with, or choose a new --workdir"
        )
      state = parallel.replicate(nnx.State({0: model_state, 1: opt_state}), mesh)
      partial = meta.get("partial")
    elif config.get("init_from"):
      state = parallel.replicate(_initial_state(trainer, config.init_from), mesh)
    total_steps = config.num_epochs * steps_per_epoch
    if start_step >= total_steps:
      done = start_step / steps_per_epoch
      _say(
        f"{workdir} has already trained {done:g} epochs (num_epochs={config.num_epochs}): "
        "nothing to do; pass a larger --config.num_epochs to train further"
      )
      history = _read_history(os.path.join(workdir, "metrics.jsonl"), upto_epoch=int(done))
      return history[-1] if history else {}
    if start_step:
      _say(
        f"resuming from step {start_step} (epoch {start_step / steps_per_epoch:.2f}) in {workdir}"
      )
    if jax.process_index() == 0:
      workdir_lib.save_run_files(workdir, config, dataset.info)
    train_input = _train_input(config, ckpt, dataset, steps_per_epoch, mesh, start_step, meta)
    run = _Run(config, workdir, trainer, ckpt, train_input, test_split, steps_per_epoch, mesh)
    with stopping.deferred():  # SIGTERM stops the loop after a step, with a checkpoint.
      return _loop(run, state, start_step, partial)
  finally:
    if train_input is not None:
      train_input.close()
    ckpt.close()


def _train_input(config, ckpt, dataset, steps_per_epoch, mesh, start_step, meta):
  """This process's training input from ``start_step`` on.

  The iterator state saved with the checkpoint of ``start_step`` is restored when it was
  saved by a job of the same shape (processes, workers, batch size); otherwise the
  input starts afresh at that step, which gives the same batches.
  """

  def make(start):
    return pipeline.TrainInput(
      dataset.split("train"),
      batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch,
      num_epochs=config.num_epochs,
      seed=config.seed,
      rows=parallel.process_rows(mesh, config.batch_size),
      workers=config.get("data_workers", 0),
      prefetch=config.get("data_prefetch", 2),
      transform=pipeline.host_transform(config, dataset.info, config.seed),
      start=start,
    )

  saved = meta.get("input")
  if start_step and isinstance(saved, dict) and isinstance(saved.get("start"), int):
    candidate = make(saved["start"])
    if candidate.compatible(saved) and ckpt.restore_data(start_step, candidate.iterator):
      candidate.restored(start_step)
      return candidate
    candidate.close()
  return make(start_step)


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the epoch loop works with, fixed for the whole run."""

  config: ml_collections.ConfigDict
  workdir: str
  trainer: Trainer
  ckpt: checkpointing.Checkpointer
  train_input: pipeline.TrainInput
  test_split: data_lib.Split
  steps_per_epoch: int
  mesh: jax.sharding.Mesh


def _loop(run: _Run, state, start_step: int, partial: Mapping | None) -> dict:
  """The epochs from ``start_step`` on; ``partial``: the resumed epoch's metric sums."""
  config, workdir, trainer, ckpt = run.config, run.workdir, run.trainer, run.ckpt
  steps_per_epoch, mesh = run.steps_per_epoch, run.mesh
  train_input, test_split = run.train_input, run.test_split
  main = jax.process_index() == 0
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_history(metrics_path, upto_epoch=start_step // steps_per_epoch)
  train_key = jax.random.fold_in(jax.random.key(config.seed), 0)
  eval_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  last = history[-1] if history else {}
  if main:
    _write_lines(metrics_path, history)
  every_steps = config.get("checkpoint_every_steps", 0)

  def save(step, state, epoch_metrics=None):
    meta = {"epoch": step // steps_per_epoch, "step": step, "steps_per_epoch": steps_per_epoch}
    if epoch_metrics is not None:
      meta["partial"] = epoch_metrics.partial()
    meta["input"] = train_input.description
    ckpt.save(step, state[0], state[1], meta, data_iterator=train_input.iterator)

  for epoch in range(start_step // steps_per_epoch, config.num_epochs):
    t0 = time.time()
    first = max(start_step - epoch * steps_per_epoch, 0)
    epoch_metrics = _EpochMetrics(partial if first else None)
    bar = tqdm(
      train_input.epoch(epoch, first),
      initial=first,
      total=steps_per_epoch,
      desc=f"epoch {epoch + 1}/{config.num_epochs}",
      leave=False,
      disable=not (config.get("progress", True) and main),
    )
    epoch_arg = jnp.asarray(epoch, jnp.int32)
    stop_after_epoch = False
    for i, (images, labels) in enumerate(bar, start=first):
      step = epoch * steps_per_epoch + i
      batch = parallel.put_process_batch((images, labels.astype(np.int32)), mesh, config.batch_size)
      state, m = trainer.train_step(state, *batch, jax.random.fold_in(train_key, step), epoch_arg)
      epoch_metrics.add(m)
      # SIGTERM: the same step on every process (smoothjax.stopping.at_step).
      stop = stopping.at_step(step + 1)
      mid_epoch = i + 1 < steps_per_epoch
      at_save = (every_steps and (step + 1) % every_steps == 0 or stop) and mid_epoch
      if i % 20 == 0 or at_save:
        if not epoch_metrics.flush():
          raise _diverged(step + 1, steps_per_epoch, config)
        bar.set_postfix(loss=f"{float(m['loss']):.3f}")
      if at_save:
        save(step + 1, state, epoch_metrics)
      if stop and mid_epoch:
        bar.close()
        raise _stopped(step + 1, steps_per_epoch)
      stop_after_epoch = stop
    if not epoch_metrics.flush():
      raise _diverged((epoch + 1) * steps_per_epoch, steps_per_epoch, config)
    train = epoch_metrics.means()
    tested = evaluate(
      trainer,
      state,
      test_split,
      batch_size=config.eval_batch_size,
      key=jax.random.fold_in(eval_key, epoch),
      mesh=mesh,
    )
    first_metrics = {"train_loss": train.pop("loss")}
    if "accuracy" in train:
      first_metrics["train_accuracy"] = train.pop("accuracy")
    last = {
      "epoch": epoch + 1,
      "step": (epoch + 1) * steps_per_epoch,
      **first_metrics,
      **{f"train_{k}": v for k, v in sorted(train.items())},
      **{f"test_{k}": v for k, v in tested.items()},
      "noise_sd": config.noise_sd,
      "noise": None if trainer.noise is None else trainer.noise.spec,
      "seconds": time.time() - t0,
    }
    if first:
      last["resumed_at_step"] = start_step
    # Gaussian noise is named by its sigma alone, as before other families existed.
    noise_name = f"{config.noise_sd:g}"
    if trainer.noise is not None and trainer.noise.name != "gaussian":
      noise_name = f"{trainer.noise.name} {noise_name}"
    extra = "".join(
      f"  {k[6:]} {v:.4f}"
      for k, v in last.items()
      if k.startswith("train_") and k not in ("train_loss", "train_accuracy")
    )
    train_acc = f"  train acc {last['train_accuracy']:.4f}" if "train_accuracy" in last else ""
    if set(tested) == {"accuracy", "accuracy_noisy"}:
      test = (
        f"test acc {tested['accuracy']:.4f}  test acc (noise {noise_name}) "
        f"{tested['accuracy_noisy']:.4f}"
      )
    else:
      names = {"accuracy": "acc", "accuracy_noisy": f"acc (noise {noise_name})"}
      test = "  ".join(f"test {names.get(k, k)} {v:.4f}" for k, v in tested.items())
    _say(
      f"epoch {epoch + 1:3d}/{config.num_epochs}  loss {last['train_loss']:.4f}"
      f"{train_acc}{extra}  {test}  {last['seconds']:.1f}s",
      flush=True,
    )
    if main:
      with open(metrics_path, "a") as f:
        f.write(_json_line(last))
    if (
      (epoch + 1) % config.checkpoint_every_epochs == 0
      or epoch + 1 == config.num_epochs
      or stop_after_epoch
    ):
      save(last["step"], state)
    if stop_after_epoch and epoch + 1 < config.num_epochs:
      raise _stopped(last["step"], steps_per_epoch)
  return last


def _stopped(step: int, steps_per_epoch: int) -> stopping.Stopped:
  """SIGTERM reached the training loop: the checkpoint of ``step`` is saved."""
  every = " on every process" if jax.process_count() > 1 else ""
  return stopping.Stopped(
    f"stopped by SIGTERM after step {step} (epoch {step / steps_per_epoch:.2f}), saved as a "
    f"checkpoint; rerun the same command{every} to resume"
  )


def _json_line(row: Mapping) -> str:
  """One strict-JSON line: non-finite numbers become null (``NaN`` is not JSON)."""
  clean = {
    k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
  }
  return json.dumps(clean, allow_nan=False) + "\n"


def _write_lines(path: str, rows: list[dict]) -> None:
  """Rewrites a JSON-lines file atomically."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(_json_line(r) for r in rows)
  os.replace(path + ".tmp", path)


# Settings that change the shapes of the saved state: a workdir cannot resume with others.
_STATE_FIELDS = ("model", "dataset", "optimizer")


def _check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir trained with another model, dataset or optimiser."""
  if not os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    return
  saved = json.loads(workdir_lib.load_config(workdir).to_json())
  clash = [f"{f}={saved.get(f)!r}" for f in _STATE_FIELDS if saved.get(f) != config.get(f)]
  if clash:
    raise InputError(
      f"{workdir} holds a run with {', '.join(clash)}; resume it with the same settings "
      "or choose a new --workdir"
    )
  current = json.loads(config.to_json())
  changed = [
    k
    for k in current
    if k != "num_epochs"
    and json.dumps(saved.get(k), sort_keys=True) != json.dumps(current[k], sort_keys=True)
  ]
  if changed:
    _say(f"note: resuming {workdir} with changed settings: {', '.join(sorted(changed))}")


def _check_init_from(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses an ``init_from`` that is not a trained workdir of the same model and dataset."""
  source = config.get("init_from") or ""
  if not isinstance(source, str):
    raise InputError(f"init_from must be a workdir path (or empty), got {source!r}")
  if not source:
    return
  if os.path.abspath(source) == os.path.abspath(workdir):
    raise InputError(f"init_from is the workdir itself ({workdir}); name another trained run")
  saved = workdir_lib.load_config(source)
  clash = [f"{f}={saved.get(f)!r}" for f in ("model", "dataset") if saved.get(f) != config.get(f)]
  if clash:
    raise InputError(
      f"init_from {source} holds a run with {', '.join(clash)}; start from a run of "
      f"model={config.model!r} on dataset={config.dataset!r}"
    )
  clip = bool(saved.get("clip_inputs", False))
  if clip != bool(config.get("clip_inputs", False)):
    raise InputError(
      f"init_from {source} holds a model that {'clamps' if clip else 'does not clamp'} its "
      f"inputs to [0, 1] (clip_inputs={clip}); pass --config.clip_inputs={clip} to fine-tune it"
    )
  checkpointing.require_checkpoints(source, "init_from")


def _initial_state(trainer: Trainer, source: str):
  """The trainer's state with the model's parameters and statistics from ``source``."""
  model, _, _, meta = checkpointing.restore_model(source)
  nnx.update(trainer.model, nnx.state(model))
  _say(f"starting from {source} (epoch {meta['epoch']}, step {meta['step']})", flush=True)
  return trainer.state()


def _read_history(path: str, upto_epoch: int) -> list[dict]:
  """Metrics lines of epochs already checkpointed (later ones are retrained).

  A line that does not parse (a run killed while writing it) is dropped with a note.
  """
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        epoch = int(row["epoch"])
      except (ValueError, KeyError, TypeError):
        _say(f"note: dropping damaged line {lineno} of {path}", file=sys.stderr)
        continue
      if epoch <= upto_epoch:
        rows.append(row)
  return rows
