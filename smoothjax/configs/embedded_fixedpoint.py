"""Fixed-point fine-tuning for generation (seed 002) of a trained demo CNN on the embedded digits.

Starts from another run's parameters (``--config.init_from``, the same model and
dataset) and minimises ``mean ||x - psi(x)||^2 + ce_weight * cross-entropy``, with
``psi(x)`` 5 l2 PGD steps (eps 2) of the generation loss from the real image ``x``
towards its label, differentiated through the steps. ``fixedpoint.m > 0`` (with
``noise_sd > 0``) generates with the smoothed classifier instead of the base one.

  python train.py --config default --workdir workdirs/standard \
      --config.mode=standard --config.noise_sd=0
  python train.py --config embedded_fixedpoint --workdir workdirs/fixedpoint \
      --config.init_from=workdirs/standard

Expected runtime: about 5 minutes on 2 CPU cores (one epoch, about 30 times a clean one).
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "fixedpoint"
  config.noise_sd = 0.0
  config.num_epochs = 1
  config.learning_rate = 0.005
  config.warmup_epochs = 0
  config.fixedpoint.remat = False  # a small model: keep the activations, skip the recompute
  config.init_from = ""  # set on the command line: the run to fine-tune
  return config
