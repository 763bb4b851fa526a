"""Consistency regularisation (Jeong & Shin 2020) on CIFAR-10: ResNet-110.

The paper's recipe: 150 epochs, SGD momentum 0.9, learning rate 0.1 multiplied by 0.1
every 50 epochs, batch 64, weight decay 1e-4, m = 2 noise copies, eta 0.5 and lambda 20
(sigma 0.25; the paper uses lambda 10 for sigma 0.5 and 1.0).

  python train.py --config cifar10_consistency --workdir workdirs/cifar_cons \
      --config.noise_sd=0.25 --config.data_dir=DATA_DIR

Expected runtime: not measured here (GPU needed); about m times a Gaussian run.
"""

import ml_collections

from smoothjax.configs import cifar10_resnet110


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_resnet110.get_config()
  config.mode = "consistency"
  config.num_epochs = 150
  config.batch_size = 64
  config.lr_step_epochs = 50
  config.consistency.m = 2
  config.consistency.lbd = 20.0
  config.consistency.eta = 0.5
  return config
