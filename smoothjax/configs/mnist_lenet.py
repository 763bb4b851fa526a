"""The smoothing literature's MNIST recipe: LeNet under Gaussian noise (Cohen et al. 2019).

Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019) on full MNIST with the
field's LeNet (`lenet`: conv 20 5x5 -> pool -> conv 50 5x5 -> pool -> fc 500 -> fc 10,
431,080 parameters), trained as the MNIST baselines of Jeong & Shin 2020 ("Consistency
Regularization for Certified Robustness of Smoothed Classifiers"; the same recipe for
SmoothAdv, stability training and MACER there): 90 epochs, batch 256, SGD with momentum
0.9, learning rate 0.01 multiplied by 0.1 every 30 epochs, weight decay 1e-4, no data
augmentation besides the noise, sigma in {0.25, 0.5, 1.0}. Source: EXPERIMENTS.MD
(`python code/train_cohen.py mnist lenet --lr 0.01 --lr_step_size 30 --epochs 90
--noise 0.25`) and the defaults of code/train_cohen.py (batch 256, momentum 0.9,
weight decay 1e-4, StepLR gamma 0.1) in github.com/jh-jeong/smoothing-consistency.
Their certificates use n = 100,000, alpha = 0.001 on every test image (`--skip 1`).

MNIST from TFDS (prepare once: `tfds build mnist --data_dir DATA_DIR --file_format
array_record`) or from a folder of the original IDX files:

  python train.py --config mnist_lenet --workdir workdirs/mnist_lenet_s025 \
      --config.dataset=idx:/data/mnist --config.noise_sd=0.25
  python certify.py --workdir workdirs/mnist_lenet_s025 --outfile results/mnist_s025.tsv \
      --skip 1 --n 100000 --batch 1000

Expected runtime: about 1 minute per epoch on 2 CPU cores (measured: 0.2 s per step of
256 images, 234 steps per epoch), so about 1.5 hours for the 90 epochs; GPU not yet
measured. Pass --config.num_epochs=3 for a quick run (on the embedded digits, 3 epochs
reach 89% clean test accuracy).
"""

import ml_collections

from smoothjax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = "mnist"
  config.augment = "none"
  config.model = "lenet"
  config.mode = "gaussian"
  config.noise_sd = 0.25
  config.num_epochs = 90
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.schedule = "step"
  config.warmup_epochs = 0
  config.lr_step_epochs = 30
  config.lr_decay = 0.1
  return config
