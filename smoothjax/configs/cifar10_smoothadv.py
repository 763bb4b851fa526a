"""SmoothAdv (Salman et al. 2019) on CIFAR-10: ResNet-110, the paper's training recipe.

Cohen et al.'s optimiser (SGD momentum 0.9, batch 256, weight decay 1e-4) for 150
epochs with the learning rate 0.1 multiplied by 0.1 every 50 epochs; PGD on the soft
smoothed classifier with l2 eps 0.5, 2 steps, m = 2 noise samples and a 10-epoch eps
warm-up (one point of the paper's grid m in {1, 2, 4, 8}, eps in {0.25, 0.5, 1, 2},
steps in {1, 2, 4, 8, 10}).

  python train.py --config cifar10_smoothadv --workdir workdirs/cifar_smoothadv \
      --config.noise_sd=0.25 --config.data_dir=DATA_DIR

Expected runtime: not measured here (GPU needed); about (1 + steps) * m times a
Gaussian run per epoch.
"""

import ml_collections

from smoothjax.configs import cifar10_resnet110


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_resnet110.get_config()
  config.mode = "smoothadv"
  config.num_epochs = 150
  config.lr_step_epochs = 50
  config.smoothadv.m = 2
  config.smoothadv.eps = 0.5
  config.smoothadv.steps = 2
  config.smoothadv.warmup_epochs = 10
  return config
