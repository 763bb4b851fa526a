"""Training base classifiers: the loop, the modes and the optimisers.

* :mod:`~smoothjax.training.loop`: the jitted train and eval steps, the epoch loop,
  checkpoints, metrics and resume (:func:`train_and_evaluate`).
* :mod:`~smoothjax.training.modes`: what is trained on, one loss per mode
  (standard, noise, SmoothAdv, consistency, MACER, FGSM/PGD, fixed point).
* :mod:`~smoothjax.training.optim`: optimisers, schedules and :func:`validate_config`,
  the one check of a training config.
"""

from smoothjax.training import loop, modes, optim
from smoothjax.training.loop import (
  Trainer,
  evaluate,
  make_trainer,
  train_and_evaluate,
)
from smoothjax.training.modes import (
  MODES,
)
from smoothjax.training.optim import (
  OPTIMIZERS,
  REQUIRED_FIELDS,
  SCHEDULES,
  make_optimizer,
  make_schedule,
  validate_config,
)

__all__ = [
  "evaluate",
  "loop",
  "make_optimizer",
  "make_schedule",
  "make_trainer",
  "MODES",
  "modes",
  "optim",
  "OPTIMIZERS",
  "REQUIRED_FIELDS",
  "SCHEDULES",
  "train_and_evaluate",
  "Trainer",
  "validate_config",
]
