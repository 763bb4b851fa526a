"""MACER (Zhai et al. 2020) on the embedded MNIST digits, demo CNN, sigma 0.25.

The paper's beta 16, gamma 8, lambda 12 (use --config.macer.lbd=4 for sigma >= 0.5, as
the paper does), with m = 8 noise samples per image instead of 16 to keep the run short
on a CPU (--config.macer.m=16 for the paper's value), and the radius term switched on
gradually over the first epoch (macer.warmup_epochs = 1): from scratch, in 6 epochs, its
large gradients otherwise drive the small CNN to confident wrong predictions.

  python train.py --config configs/embedded_macer.py --workdir workdirs/embedded_macer

Expected runtime: about 6 minutes on 2 CPU cores.
  --config.noise_sd=0.5 --config.macer.lbd=4 for sigma 0.5.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "macer"
  config.macer.m = 8
  config.macer.warmup_epochs = 1
  return config
