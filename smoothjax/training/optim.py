"""Optimisers, learning-rate schedules and the checks on a training config.

:func:`validate_config` refuses, before anything is written, every setting that
cannot train (one line saying what is wrong and how to fix it);
:func:`make_optimizer` builds the optax transformation the config names, over
the schedule of :func:`make_schedule` in optimiser steps.
"""

from __future__ import annotations

import math
import numbers

import jax
import ml_collections
import optax

from smoothjax import models
from smoothjax.data import augment, pipeline
from smoothjax.devices import numerics
from smoothjax.errors import InputError
from smoothjax.models import transforms
from smoothjax.training import modes

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine")
# Fields every training config has (smoothjax/configs/default.py defines them all).
REQUIRED_FIELDS = (
  "dataset",
  "model",
  "mode",
  "noise_sd",
  "num_epochs",
  "batch_size",
  "eval_batch_size",
  "optimizer",
  "learning_rate",
  "momentum",
  "weight_decay",
  "schedule",
  "seed",
  "checkpoint_every_epochs",
  "keep_checkpoints",
)


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises InputError for settings that cannot train, before anything is written."""

  def need(cond, message):
    if not cond:
      raise InputError(message)

  missing = [f for f in REQUIRED_FIELDS if f not in config]
  need(
    not missing,
    f"the config lacks {', '.join(missing)}; start from smoothjax/configs/default.py "
    "(import it and override fields, as smoothjax/configs/mnist_lenet.py does)",
  )
  need(
    config.model in models.ALL_MODELS,
    f"unknown model {config.model!r}; choose one of {list(models.ALL_MODELS)}",
  )
  modes.check_model_kind(config)  # a classifier for classifier modes, a denoiser for "denoiser"
  # Builds the noise and the mode's loss: checks noise_sd, the mode and its section.
  modes.build(config)  # noise modes refuse noise_sd = 0 there
  for name in ("batch_size", "eval_batch_size", "num_epochs", "keep_checkpoints"):
    need(
      _is_int(config[name]) and config[name] >= 1,
      f"{name} must be an integer >= 1, got {config[name]!r}",
    )
  need(
    _is_int(config.seed) and config.seed >= 0, f"seed must be an integer >= 0, got {config.seed!r}"
  )
  need(
    config.get("augment", "none") in augment.AUGMENTATIONS,
    f"unknown augment {config.get('augment')!r}; choose one of {list(augment.AUGMENTATIONS)}",
  )
  need(
    _is_int(config.checkpoint_every_epochs) and config.checkpoint_every_epochs >= 1,
    f"checkpoint_every_epochs must be an integer >= 1, got {config.checkpoint_every_epochs!r}",
  )
  for name, default, low in (("data_workers", 0, 0), ("data_prefetch", 2, 1)):
    value = config.get(name, default)
    need(_is_int(value) and value >= low, f"{name} must be an integer >= {low}, got {value!r}")
  dtype = config.get("compute_dtype", "float32")
  need(
    dtype in transforms.COMPUTE_DTYPES,
    f"unknown compute_dtype {dtype!r}; choose one of {list(transforms.COMPUTE_DTYPES)}",
  )
  precision = config.get("precision", "default")
  need(
    precision in numerics.PRECISIONS,
    f"unknown precision {precision!r}; choose one of {list(numerics.PRECISIONS)}",
  )
  need(
    isinstance(config.get("deterministic", False), bool),
    f"deterministic must be True or False, got {config.get('deterministic')!r}",
  )
  host = config.get("host_transform", "auto")
  need(
    host in pipeline.HOST_TRANSFORMS,
    f"unknown host_transform {host!r}; choose one of {list(pipeline.HOST_TRANSFORMS)}",
  )
  every = config.get("checkpoint_every_steps", 0)
  need(
    _is_int(every) and every >= 0,
    f"checkpoint_every_steps must be an integer >= 0 (0: only at epoch ends), got {every!r}",
  )
  need(
    _is_real(config.learning_rate) and config.learning_rate > 0,
    f"learning_rate must be a finite number > 0, got {config.learning_rate!r}",
  )
  need(
    _is_real(config.weight_decay) and config.weight_decay >= 0,
    f"weight_decay must be a finite number >= 0, got {config.weight_decay!r}",
  )
  need(
    _is_real(config.momentum) and 0 <= config.momentum < 1,
    f"momentum must be a number in [0, 1), got {config.momentum!r}",
  )
  need(
    _is_real(config.get("lr_decay", 0.1)) and 0 < config.get("lr_decay", 0.1) <= 1,
    f"lr_decay must be a number in (0, 1], got {config.get('lr_decay')!r}",
  )
  need(
    _is_int(config.get("lr_step_epochs", 30)) and config.get("lr_step_epochs", 30) >= 1,
    f"lr_step_epochs must be an integer >= 1, got {config.get('lr_step_epochs')!r}",
  )
  need(
    _is_real(config.get("warmup_epochs", 0)) and config.get("warmup_epochs", 0) >= 0,
    f"warmup_epochs must be a number >= 0, got {config.get('warmup_epochs')!r}",
  )
  milestones = config.get("lr_milestones", ())
  need(
    isinstance(milestones, tuple | list)
    and all(_is_int(e) and e >= 1 for e in milestones)
    and list(milestones) == sorted(set(milestones))
    and (config.schedule != "multistep" or len(milestones) > 0),
    "lr_milestones must be increasing epochs >= 1 (schedule 'multistep' needs at least one), "
    f"got {milestones!r}",
  )
  for name in ("nesterov", "progress"):
    need(
      isinstance(config.get(name, False), bool),
      f"{name} must be True or False, got {config.get(name)!r}",
    )
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
  et al.: 0.1 every 30 epochs); ``multistep`` multiplies it by ``lr_decay`` at each
  epoch of ``lr_milestones`` (MACER: 200 and 400). Their values do not depend on
  ``num_epochs``, so a run extended with a larger ``num_epochs`` follows the same curve.
  ``cosine`` decays to 0 over ``num_epochs`` after ``warmup_epochs`` of linear warm-up.
  """
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "step":
    every = config.lr_step_epochs * steps_per_epoch
    return optax.exponential_decay(lr, every, config.lr_decay, staircase=True)
  if config.schedule == "multistep":
    boundaries = {int(e) * steps_per_epoch: config.lr_decay for e in config.lr_milestones}
    return optax.piecewise_constant_schedule(lr, boundaries)
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
