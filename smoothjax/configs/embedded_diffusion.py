"""A small diffusion model (epsilon prediction, continuous time) on the embedded MNIST digits.

One-shot diffusion denoising (Carlini et al., "(Certified!!) Adversarial Robustness for
Free!", ICLR 2023): ``certify.py --workdir CLASSIFIER --denoiser
workdirs/embedded_diffusion --sigma 0.25`` denoises each noisy input with one step of this
model at the timestep whose noise is sigma, then classifies it. The model is
``unet_small`` (a U-Net of 32, 64 and 64 channels, about 1 M parameters) trained with the
DDPM objective on the cosine schedule, its times limited to noise up to pixel sigma 1.5
(``diffusion.max_sigma``), where one-shot denoising uses it. ``noise_sd`` is only the level
at which each epoch's report denoises the test digits.

  python train.py --config embedded_diffusion --workdir workdirs/embedded_diffusion

Expected runtime: about 10 minutes on 2 idle CPU cores (10 epochs of about 55 s).
Expected result: test MSE of the one-shot denoised digits at sigma 0.25 of 0.0035,
against 0.0625 for the noisy digits (benchmarks/RESULTS.md, "Denoised smoothing").
On a GPU, ``unet_cifar`` (64 channels, two blocks per level) with --config.dataset=cifar10
and --config.num_epochs=200 is the larger model.
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "diffusion"
  config.model = "unet_small"
  config.diffusion.max_sigma = 1.5
  config.noise_sd = 0.25
  config.optimizer = "adam"
  config.learning_rate = 2e-3
  config.weight_decay = 0.0
  config.num_epochs = 10
  config.warmup_epochs = 1
  return config
