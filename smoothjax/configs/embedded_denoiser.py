"""A DnCNN denoiser trained with MSE on the embedded MNIST digits, sigma 0.25.

Denoised smoothing (Salman et al., NeurIPS 2020): ``certify.py --workdir CLASSIFIER
--denoiser workdirs/embedded_denoiser`` then certifies any classifier of the digits,
one trained without noise included. ``dncnn_small`` (8 layers of 32 channels; Salman et
al.'s 17 of 64 is ``dncnn``) with Adam at 1e-3, as their MSE training uses.

  python train.py --config embedded_denoiser --workdir workdirs/embedded_denoiser

Expected runtime: 2 to 4 minutes on 2 CPU cores (10 epochs of 12 to 25 s).
Expected result: test MSE 0.0074 against 0.0625 for the noisy digits (0.0176 against 0.25
at sigma 0.5; benchmarks/RESULTS.md, "Denoised smoothing").
  --config.noise_sd=0.5 for sigma 0.5; --config.denoiser.loss=stability
  --config.denoiser.classifier=WORKDIR --config.init_from=workdirs/embedded_denoiser
  --config.learning_rate=1e-4 fine-tunes it for that classifier (into a new workdir).
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "denoiser"
  config.model = "dncnn_small"
  config.denoiser.loss = "mse"
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.weight_decay = 0.0
  config.num_epochs = 10
  config.warmup_epochs = 0
  return config
