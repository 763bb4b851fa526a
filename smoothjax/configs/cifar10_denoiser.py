"""Salman et al.'s CIFAR-10 denoiser: DnCNN (17 layers of 64 channels) trained with MSE.

Denoised smoothing ("Denoised Smoothing: A Provable Defense for Pretrained Classifiers",
NeurIPS 2020) of any CIFAR-10 classifier, one converted from PyTorch by convert.py
included. Adam at 1e-3 for 90 epochs, decayed 10x every 30, batch 256, at sigma 0.25.
The data come from TFDS (prepare once: `tfds build cifar10 --data_dir DATA_DIR`).

  python train.py --config cifar10_denoiser --workdir workdirs/cifar_dncnn_025 \
      --config.noise_sd=0.25 --config.data_dir=DATA_DIR

Fine-tune it for a classifier with the stability objective (into a new workdir), at a
small learning rate (1e-5 for 25 epochs in the run scripts of their code's forks, e.g.
RulinShao/denoised-smoothing code/run_train_denoiser.sh):

  python train.py --config cifar10_denoiser --workdir workdirs/cifar_dncnn_025_stab \
      --config.denoiser.loss=stability --config.denoiser.classifier=workdirs/CLASSIFIER \
      --config.init_from=workdirs/cifar_dncnn_025 --config.learning_rate=1e-5 \
      --config.num_epochs=25 --config.data_dir=DATA_DIR

Expected runtime: hours on one GPU (not yet measured for this code); impractical on a CPU.
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = "cifar10"
  config.augment = "crop_flip"
  config.mode = "denoiser"
  config.model = "dncnn"
  config.noise_sd = 0.25
  config.num_epochs = 90
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.weight_decay = 0.0
  config.schedule = "step"
  config.lr_step_epochs = 30
  config.lr_decay = 0.1
  config.warmup_epochs = 0
  return config
