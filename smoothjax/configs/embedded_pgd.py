"""PGD adversarial training (Madry et al. 2018) of the demo CNN on the embedded MNIST digits.

The seed-003 baseline against which smoothing is compared: no noise, the model is
trained on linf PGD points (eps 0.1, 10 steps of 2.5 * eps / steps, random start),
attacked on an eval-mode copy of itself.

  python train.py --config embedded_pgd --workdir workdirs/embedded_pgd

Expected runtime: about 6 minutes on 2 CPU cores (11 forward/backward passes per step).
Certify it at the sigma you compare at: `certify.py --sigma 0.25`.
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "pgd"
  config.noise_sd = 0.0
  config.attack.norm = "linf"
  config.attack.eps = 0.1
  config.attack.steps = 10
  return config
