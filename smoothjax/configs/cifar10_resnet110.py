"""Cohen et al. (2019) CIFAR-10 recipe: ResNet-110 under Gaussian noise.

90 epochs, batch 256, SGD momentum 0.9, learning rate 0.1 multiplied by 0.1 every
30 epochs, weight decay 1e-4, training noise sigma in {0.12, 0.25, 0.5, 1.0}, random
crops (padding 4) and horizontal flips.
The data come from TFDS (prepare once: `tfds build cifar10 --data_dir DATA_DIR`).

  python train.py --config cifar10_resnet110 --workdir workdirs/cifar_s025 \
      --config.noise_sd=0.25 --config.data_dir=DATA_DIR

Expected runtime: hours on one modern GPU (not yet measured for this code; see
benchmarks/RESULTS.md); impractical on a CPU. Pass --config.model=resnet20 for a
quicker run.
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()  # for the mode sections; every other field is set here
  config.dataset = "cifar10"
  config.data_dir = ""
  config.eval_split = "test"
  config.augment = "crop_flip"
  config.model = "resnet110"
  config.mode = "gaussian"
  config.noise_sd = 0.25
  config.num_epochs = 90
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.optimizer = "sgd"
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.schedule = "step"
  config.warmup_epochs = 0
  config.lr_step_epochs = 30
  config.lr_decay = 0.1
  config.seed = 0
  config.checkpoint_every_epochs = 1
  config.checkpoint_every_steps = 0  # > 0: also save within epochs
  config.keep_checkpoints = 3
  config.progress = True
  return config
