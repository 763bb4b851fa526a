"""Generates images of chosen classes with a trained run: see smoothjax/cli/generate.py."""

from smoothjax.cli.generate import run

if __name__ == "__main__":
  run()
