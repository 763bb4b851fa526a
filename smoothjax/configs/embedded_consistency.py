"""Consistency regularisation (Jeong & Shin 2020) on the embedded MNIST digits, sigma 0.25.

m = 2 noise copies per image, lambda 10, eta 0.5 (the paper's MNIST settings).

  python train.py --config embedded_consistency --workdir workdirs/embedded_cons

Expected runtime: about 2 minutes on 2 CPU cores. --config.noise_sd=0.5 for sigma 0.5.
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "consistency"
  config.consistency.m = 2
  config.consistency.lbd = 10.0
  config.consistency.eta = 0.5
  return config
