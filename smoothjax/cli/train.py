"""Trains a base classifier; rerunning the same command resumes.

  python train.py --config default --workdir workdirs/demo \
      [--config.noise_sd=0.5 --config.num_epochs=10 ...]
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from smoothjax import configs, training
from smoothjax.cli import common
from smoothjax.devices import numerics, parallel
from smoothjax.errors import one_line


def _define_flags() -> None:
  """Defines the flags, once; at run time only, so importing this module defines none."""
  if "config" in flags.FLAGS:
    return
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, config and metrics.")
  config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
  flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


SHIPPED = pathlib.Path(configs.__file__).parent


def shipped_configs() -> list[str]:
  """The names of the configs that ship with smoothjax (``smoothjax/configs/NAME.py``)."""
  return sorted(p.stem for p in SHIPPED.glob("*.py") if not p.stem.startswith("_"))


def _config_arg(argv: list[str]) -> int | None:
  """The position in ``argv`` of the --config value (``--config=V`` or ``--config V``)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return i
    if arg == "--config" and i + 1 < len(argv):
      return i + 1
  return None


def resolve_config(value: str) -> str:
  """A config file's path from ``PATH[:ARG]`` or a shipped config's ``NAME[:ARG]``."""
  path, sep, arg = value.partition(":")
  if os.path.isfile(path) or os.sep in path or path.endswith(".py"):
    return value
  if path in shipped_configs():
    return str(SHIPPED / f"{path}.py") + sep + arg
  return value


def _config_path(argv: list[str]) -> str | None:
  """Resolves --config in ``argv`` in place (a shipped config's name -> its path)."""
  i = _config_arg(argv)
  if i is None:
    return None
  prefix = "--config=" if argv[i].startswith("--config=") else ""
  argv[i] = prefix + resolve_config(argv[i][len(prefix):])
  return argv[i][len(prefix):]


def _check_config_file(path: str) -> None:
  """One-line errors for a config file that is missing, broken or lacks get_config().

  Calls ``get_config()`` once (with ``ARG`` of ``FILE:ARG``, as ml_collections does when it
  parses the flag next), so that one raising is one line too, not a traceback.
  """
  path, *args = path.split(":", 1)  # ml_collections passes "FILE:ARG" to get_config(ARG)
  if not path:
    _fail("--config is empty; pass a config file's path or a shipped config's name")
  if not os.path.isfile(path):
    _fail(
      f"config file {path} does not exist and no shipped config has that name; pass a path "
      f"or one of {', '.join(shipped_configs())} (e.g. --config=default)"
    )
  spec = importlib.util.spec_from_file_location("_smoothjax_user_config", path)
  try:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # The user's file: any error in it is theirs to fix.
    _fail(f"config file {path} does not load ({type(e).__name__}: {e}); fix the file")
  if not callable(getattr(module, "get_config", None)):
    _fail(f"config file {path} has no get_config() function; see smoothjax/configs/default.py")
  try:
    module.get_config(*args)
  except Exception as e:  # As above: the user's code.
    called = f"get_config({', '.join(map(repr, args))})"
    _fail(f"config file {path}: {called} raised {one_line(e)}; fix the file")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for config files and overrides."""
  path = _config_path(argv)
  if path is not None:
    _check_config_file(path)
  try:
    return common.parse_flags(argv)  # one line for unknown flags and bad values
  except AttributeError as e:
    # ml_collections refuses an override of a field the (locked) config lacks.
    name = re.sub(r"^[\"']+|[\"']+$", "", str(e))
    fields = "smoothjax/configs/default.py"
    _fail(f"the config has no field {name!r}; check the spelling (fields: {fields})")
  except (ValueError, TypeError, KeyError, OSError) as e:
    _fail(f"bad --config override: {str(e).splitlines()[0]}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  # Before JAX starts: XLA reads its flags once.
  numerics.require_deterministic(bool(config.get("deterministic", False)))
  # Before the config's checks, which count the devices (that starts JAX). SIGTERM stays
  # with JAX's preemption service: its sync points stop every process of a lockstep
  # training job at the same step (smoothjax.stopping.at_step).
  parallel.initialize_distributed(take_sigterm=False)
  training.validate_config(config)
  training.train_and_evaluate(config, flags.FLAGS.workdir)


def run():
  _define_flags()
  common.show_flags_of(__name__)
  app.run(common.run_main(main), flags_parser=parse_flags)


if __name__ == "__main__":
  run()
