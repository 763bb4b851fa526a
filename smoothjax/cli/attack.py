"""attack.py: the flags of :mod:`smoothjax.jobs.attack`, whose docstring describes the program.

Accuracy of a trained workdir under FGSM or PGD at several eps (or, with
``--smoothed``, SmoothAdv's attack on the smoothed classifier, then PREDICT), one
resumable TSV row per input::

  python attack.py --workdir workdirs/demo --outfile results/pgd_l2.tsv \
      --norm l2 --eps 0.25,0.5,1.0 --attack pgd --steps 20 --examples results/pgd_l2.png
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from smoothjax.cli.common import define_evaluation_flags, run_app, start_jobs
from smoothjax.errors import InputError
from smoothjax.jobs.attack import ATTACKS, NORMS, Options, parse_eps, run_attack


def _define_flags() -> None:
  """Defines the flags, once; at run time only, so importing this module defines none."""
  if "smoothed" in flags.FLAGS:
    return
  d = Options.__dataclass_fields__
  flags.DEFINE_string("workdir", None, "Trained run to attack (from train.py).")
  flags.DEFINE_string("outfile", None, "Output TSV; an existing one is resumed.")
  flags.DEFINE_string("norm", d["norm"].default, f"Threat model: {' or '.join(NORMS)}.")
  flags.DEFINE_string(
    "eps", ",".join(f"{e}" for e in d["eps"].default), "Comma-separated radii (pixels in [0, 1])."
  )
  flags.DEFINE_string("attack", d["attack"].default, f"Attack: {', '.join(ATTACKS)}.")
  flags.DEFINE_integer("steps", d["steps"].default, "PGD steps (SmoothAdv's with --smoothed).")
  flags.DEFINE_float(
    "step_size", None, "Step length; default 2.5 eps / steps (PGD), 2 eps / steps (--smoothed)."
  )
  flags.DEFINE_integer("restarts", d["restarts"].default, "PGD runs from random starts.")
  flags.DEFINE_integer(
    "batch", d["batch"].default, "Forward passes per step (inputs, or inputs x m with --smoothed)."
  )
  flags.DEFINE_integer("skip", d["skip"].default, "Attack every skip-th input.")
  flags.DEFINE_integer("max", d["max"].default, "Stop at this dataset index (-1: all), as Cohen's.")
  flags.DEFINE_integer("count", None, "Attack at most this many of the selected inputs.")
  flags.DEFINE_string("split", d["split"].default, "Dataset split to attack.")
  flags.DEFINE_integer("seed", d["seed"].default, "Seed of random starts, noise and PREDICT.")
  flags.DEFINE_integer("epoch", None, "Checkpoint epoch (default: latest).")
  flags.DEFINE_string("examples", None, "PNG of the first inputs, clean and at the largest eps.")
  flags.DEFINE_boolean(
    "smoothed", False, "Attack the smoothed classifier (SmoothAdv), then PREDICT."
  )
  flags.DEFINE_integer("m", d["m"].default, "--smoothed: the attack's noise samples per input.")
  flags.DEFINE_float("sigma", None, "--smoothed: noise level; default the training noise_sd.")
  flags.DEFINE_integer("n", d["n"].default, "--smoothed: PREDICT's noise samples per input.")
  flags.DEFINE_float("alpha", d["alpha"].default, "--smoothed: PREDICT's abstention level.")
  define_evaluation_flags()  # --dtype, --fold_batchnorm, --precision, --deterministic


def options_from_flags() -> Options:
  """The :class:`Options` of the parsed command line."""
  f = flags.FLAGS
  values = {field.name: f[field.name].value for field in dataclasses.fields(Options)}
  values["eps"] = parse_eps(values["eps"])
  return Options(**values)


def main(argv):
  if argv[1:]:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  for name in ("workdir", "outfile"):
    if not flags.FLAGS[name].value:
      raise InputError(f"--{name} is required")
  options = options_from_flags()
  start_jobs(define_evaluation_flags())
  run_attack(options)


def run():
  _define_flags()
  run_app(main)


if __name__ == "__main__":
  sys.exit(run())
