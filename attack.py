"""Attacks the base or smoothed classifier of a trained run: see smoothjax/cli/attack.py."""

from smoothjax.cli.attack import run

if __name__ == "__main__":
  run()
