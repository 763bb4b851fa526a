"""MACER (Zhai et al. 2020) on CIFAR-10: ResNet-110.

The paper's recipe: 440 epochs, SGD momentum 0.9, learning rate 0.01 multiplied by 0.1
at epochs 200 and 400, batch 64, weight decay 1e-4, k = 16 noise samples, beta 16,
gamma 8, lambda 12 (sigma 0.25; lambda 4 for sigma 0.5 and 1.0).

  python train.py --config cifar10_macer --workdir workdirs/cifar_macer \
      --config.noise_sd=0.25 --config.data_dir=DATA_DIR

Expected runtime: not measured here (GPU needed); about 16 times a Gaussian epoch.
"""

import ml_collections

from smoothjax.configs import cifar10_resnet110


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_resnet110.get_config()
  config.mode = "macer"
  config.num_epochs = 440
  config.batch_size = 64
  config.learning_rate = 0.01
  config.schedule = "multistep"
  config.lr_milestones = (200, 400)
  config.macer.m = 16
  config.macer.beta = 16.0
  config.macer.gamma = 8.0
  config.macer.lbd = 12.0
  return config
