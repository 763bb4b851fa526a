"""Trains a base classifier; rerunning the same command resumes.

  python train.py --config configs/default.py --workdir workdirs/demo \
      [--config.noise_sd=0.5 --config.num_epochs=10 ...]
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from smoothjax import parallel, training
from smoothjax.cli.common import run_main

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, config and metrics.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  app.run(run_main(main))


if __name__ == "__main__":
  run()
