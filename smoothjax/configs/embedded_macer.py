"""MACER (Zhai et al. 2020) on the embedded MNIST digits, demo CNN, sigma 0.25.

The paper's beta 16, gamma 8, lambda 12 (use --config.macer.lbd=4 for sigma >= 0.5, as
the paper does), with m = 8 noise samples per image instead of 16 to keep the run short
on a CPU (--config.macer.m=16 for the paper's value). From scratch in 6 epochs the
radius term's large gradients can drive some training digits to confidently wrong
predictions, where -log(G_y + 1e-10) has no gradient left to recover them (see
benchmarks/RESULTS.md); --config.macer.warmup_epochs=N ramps lambda up over N epochs.

  python train.py --config embedded_macer --workdir workdirs/embedded_macer

Expected runtime: about 6 minutes on 2 CPU cores.
  --config.noise_sd=0.5 --config.macer.lbd=4 for sigma 0.5.
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "macer"
  config.macer.m = 8
  return config
