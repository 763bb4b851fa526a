"""Cohen et al. (2019) ImageNet recipe: ResNet-50 under Gaussian noise.

90 epochs, batch 256, SGD momentum 0.9, learning rate 0.1 multiplied by 0.1 every
30 epochs, weight decay 1e-4, training noise sigma in {0.25, 0.5, 1.0}; images
center-cropped to 224x224. ImageNet must be prepared in TFDS beforehand (manual
download: see the TFDS imagenet2012 page), then:

  python train.py --config configs/imagenet_resnet50.py --workdir workdirs/imagenet_s050 \
      --config.noise_sd=0.5 --config.data_dir=DATA_DIR

Expected runtime: days on 8 GPUs (not yet measured for this code); the `data`
mesh spans all local devices automatically, and several hosts join with
`SMOOTHJAX_DISTRIBUTED=1`.
"""

import ml_collections

from configs import cifar10_resnet110


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_resnet110.get_config()
  config.dataset = "imagenet2012"
  config.eval_split = "test"
  # Center crops of 224 (resized from 256) with random flips; Cohen et al. also use
  # RandomResizedCrop, which needs a host-side input pipeline.
  config.augment = "flip"
  config.model = "resnet50"
  config.noise_sd = 0.5
  config.eval_batch_size = 500
  config.checkpoint_every_steps = 1000  # An epoch is about 5,000 steps: save within it.
  return config
