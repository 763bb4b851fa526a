"""A CIFAR-10 diffusion model for one-shot diffusion denoising, for GPUs.

``unet_cifar`` (a U-Net of 64, 128, 128 and 128 channels with two residual blocks per
level, about 8.6 M parameters; Carlini et al. use the 36 M-parameter model of Nichol and
Dhariwal) trained with the DDPM objective on the continuous cosine schedule, its times
limited to pixel noise up to sigma 1.5. The data come from TFDS (prepare once:
`tfds build cifar10 --data_dir DATA_DIR`).

  python train.py --config cifar10_diffusion --workdir workdirs/cifar_diffusion \
      --config.data_dir=DATA_DIR
  python certify.py --workdir workdirs/CLASSIFIER --denoiser workdirs/cifar_diffusion \
      --sigma 0.5 --outfile results/cifar_diffusion_05.tsv --skip 20

Expected runtime: about a day on one GPU (not yet measured for this code).
"""

import ml_collections

from smoothjax.configs import embedded_diffusion


def get_config() -> ml_collections.ConfigDict:
  config = embedded_diffusion.get_config()
  config.dataset = "cifar10"
  config.augment = "flip"
  config.model = "unet_cifar"
  config.num_epochs = 200
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 2e-4
  return config
