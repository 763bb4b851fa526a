"""LeNet on full MNIST under Gaussian noise (sigma = 0.25).

MNIST from TFDS (`tfds build mnist --data_dir DATA_DIR`) or from a folder of the
original IDX files (`--config.dataset=idx:/path/to/mnist`):

  python train.py --config configs/mnist_lenet.py --workdir workdirs/mnist_lenet \
      --config.dataset=idx:/data/mnist

Expected runtime: about 10 minutes on 2 CPU cores, under a minute on a GPU.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = "mnist"
  config.model = "lenet"
  config.num_epochs = 10
  config.batch_size = 128
  config.learning_rate = 0.05
  config.schedule = "cosine"
  return config
