"""Cohen et al. (2019) ImageNet recipe: ResNet-50 under Gaussian noise.

90 epochs, batch 256, SGD momentum 0.9, learning rate 0.1 multiplied by 0.1 every
30 epochs, weight decay 1e-4, training noise sigma in {0.25, 0.5, 1.0}; random
resized crops of 224x224 and flips for training, center crops for evaluation. ImageNet must be prepared in TFDS beforehand (manual
download: see the TFDS imagenet2012 page), then:

  python train.py --config imagenet_resnet50 --workdir workdirs/imagenet_s050 \
      --config.noise_sd=0.5 --config.data_dir=DATA_DIR

Expected runtime: days on 8 GPUs (not yet measured for this code); the `data`
mesh spans all local devices automatically, and several hosts join with
`SMOOTHJAX_DISTRIBUTED=1`.
"""

import ml_collections

from smoothjax.configs import cifar10_resnet110


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_resnet110.get_config()
  config.dataset = "imagenet2012"
  config.eval_split = "test"
  # Cohen et al.'s training transform on the host: RandomResizedCrop(224) and a random
  # flip (host_transform "auto" on imagenet2012); evaluation: resize to 256, center crop 224.
  config.host_transform = "random_resized_crop"
  config.augment = "none"
  config.data_workers = 8  # grain processes decoding JPEGs, per host
  config.model = "resnet50"
  config.noise_sd = 0.5
  config.eval_batch_size = 500
  config.checkpoint_every_steps = 1000  # An epoch is about 5,000 steps: save within it.
  return config
