"""Trains a base classifier for randomized smoothing: see smoothjax/cli/train.py."""

from smoothjax.cli.train import run

if __name__ == "__main__":
  run()
