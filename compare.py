"""Compares trained runs under attack and certification: see smoothjax/cli/compare.py."""

from smoothjax.cli.compare import run

if __name__ == "__main__":
  run()
