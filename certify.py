"""Certifies the smoothed classifier of a trained run: see smoothjax/cli/certify.py."""

from smoothjax.cli.certify import run

if __name__ == "__main__":
  run()
