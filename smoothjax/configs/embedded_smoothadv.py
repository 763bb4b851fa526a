"""SmoothAdv (Salman et al. 2019) on the embedded MNIST digits, demo CNN, sigma 0.25.

PGD on the soft smoothed classifier with m = 2 noise samples, l2 eps 0.25 reached
after a 2-epoch warm-up, 2 steps; trained on the adversarial points plus the same noise.

  python train.py --config embedded_smoothadv --workdir workdirs/embedded_smoothadv

Expected runtime: about 5 minutes on 2 CPU cores. --config.noise_sd=0.5 for sigma 0.5.
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "smoothadv"
  config.smoothadv.m = 2
  config.smoothadv.eps = 0.25
  config.smoothadv.steps = 2
  config.smoothadv.warmup_epochs = 2
  return config
