"""Converts a published PyTorch checkpoint into a workdir: see smoothjax/cli/convert.py."""

from smoothjax.cli.convert import run

if __name__ == "__main__":
  run()
