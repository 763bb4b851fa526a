"""generate.py: the flags of :mod:`smoothjax.jobs.generate`, whose docstring describes it.

Images of chosen classes by targeted PGD on a trained classifier, smoothed or not,
resumable, with an independent ``--judge``::

  python generate.py --workdir workdirs/demo --outdir results/generated \
      --classes 0,3,7 --per_class 8 --loss ce --m 16 --judge workdirs/judge
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from smoothjax.cli.common import define_evaluation_flags, run_app, start_jobs
from smoothjax.jobs.generate import NORMS, Options, parse_classes, run_generate
from smoothjax.objectives import generation


def _define_flags() -> None:
  """Defines the flags, once; at run time only, so importing this module defines none."""
  if "per_class" in flags.FLAGS:
    return
  d = Options.__dataclass_fields__
  flags.DEFINE_string("workdir", None, "Trained run that generates (from train.py).")
  flags.DEFINE_string("outdir", None, "Output folder; an existing one is resumed.")
  flags.DEFINE_string("classes", None, "Comma-separated classes (default: every class).")
  flags.DEFINE_integer("per_class", d["per_class"].default, "Images per class.")
  flags.DEFINE_string("loss", d["loss"].default, f"Score: {', '.join(generation.LOSSES)}.")
  flags.DEFINE_integer("m", d["m"].default, "Noise samples per step (0: the base classifier).")
  flags.DEFINE_float("sigma", None, "Noise level; default the training noise_sd.")
  flags.DEFINE_string(
    "seed_dist", d["seed_dist"].default, f"Seeds: {', '.join(generation.SEED_DISTRIBUTIONS)}."
  )
  flags.DEFINE_integer("seed_factor", None, "class_gaussian: downsampling factor (default: 8x8).")
  flags.DEFINE_string("norm", d["norm"].default, f"Ball around the seed: {' or '.join(NORMS)}.")
  flags.DEFINE_float("eps", None, "Radius of the ball; default 30 (l2) or 0.3 (linf).")
  flags.DEFINE_integer("steps", d["steps"].default, "PGD steps.")
  flags.DEFINE_float("step_size", None, "Step length; default 0.5 (l2) or 2.5 eps / steps.")
  flags.DEFINE_boolean("keep_best", d["keep_best"].default, "Keep each image's best iterate.")
  flags.DEFINE_integer("batch", d["batch"].default, "Images per step (each with m noise samples).")
  flags.DEFINE_integer("seed", d["seed"].default, "Seed of the seeds and the noise.")
  flags.DEFINE_integer("epoch", None, "Checkpoint epoch (default: latest).")
  flags.DEFINE_string("judge", None, "Independently trained run that scores the images.")
  flags.DEFINE_integer("judge_epoch", None, "The judge's checkpoint epoch (default: latest).")
  flags.DEFINE_integer(
    "confidence_n", d["confidence_n"].default, "Noise samples of the smoothed confidence."
  )
  flags.DEFINE_boolean("show_seeds", False, "Draw each class's first seed left of its row.")
  define_evaluation_flags()  # --dtype, --fold_batchnorm, --precision, --deterministic


def options_from_flags() -> Options:
  f = flags.FLAGS
  values = {field.name: f[field.name].value for field in dataclasses.fields(Options)}
  values["classes"] = parse_classes(values["classes"])
  return Options(**values)


def main(argv):
  if argv[1:]:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  options = options_from_flags()
  start_jobs(define_evaluation_flags())
  run_generate(options)


def run():
  _define_flags()
  run_app(main)


if __name__ == "__main__":
  sys.exit(run())
