"""Certifies (or predicts with) the smoothed classifier of a trained workdir.

One TSV row per input in Cohen et al.'s format (``idx label predict radius correct
time``, then ``p_lower count n ... input_hash``); the same command resumes. The flags
keep the names of Cohen et al.'s ``certify.py`` (``--skip 20 --max 400``: inputs 0, 20,
..., 380); :mod:`smoothjax.jobs.certify` does the work and documents it::

  python certify.py --workdir workdirs/demo --outfile results/demo.tsv \
      --n0 100 --n 100000 --alpha 0.001 --batch 1000 --skip 20
  python certify.py ... --adaptive --radii 0,0.25,0.5,0.75 --n_max 100000   # sequential
  python certify.py ... --predict --n 1000                                   # PREDICT
  python certify.py analyze results/a.tsv results/b.tsv --plot curves.png --format latex
  python certify.py merge results/demo.tsv   # the parts of a multi-process run

The model is evaluated with BatchNorm folded (``--fold_batchnorm``), in ``--dtype``, at
``--precision``; the certificates hold for the model as evaluated, and the settings
file records all three with the model's fingerprint.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from smoothjax import noise, results
from smoothjax.cli.common import define_evaluation_flags, run_app, start_jobs
from smoothjax.devices import sizing
from smoothjax.errors import InputError
from smoothjax.jobs import certify as job

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained run to certify (from train.py).")
_OUTFILE = flags.DEFINE_string("outfile", None, "Output TSV; an existing one is resumed.")
_N0 = flags.DEFINE_integer("n0", 100, "Noise samples to select the top class.")
_N = flags.DEFINE_integer("n", 100_000, "Noise samples to estimate its probability.")
_ALPHA = flags.DEFINE_float("alpha", 0.001, "Failure probability of each certificate.")
_BATCH = flags.DEFINE_integer(
  "batch",
  None,
  "Forward passes per step, over this process's devices. Default: as many as half the free "
  f"device memory holds (measured on the model), {sizing.CPU_BATCH} on CPUs.",
)
_INPUTS = flags.DEFINE_integer(
  "inputs_per_step",
  None,
  "Inputs certified together per step (larger helps accelerators). Default: 1 on CPUs, "
  f"{sizing.ACCELERATOR_INPUTS} on accelerators.",
)
_SKIP = flags.DEFINE_integer("skip", 1, "Certify every skip-th input.")
_MAX = flags.DEFINE_integer(
  "max", -1, "Stop at this dataset index, as Cohen et al.'s --max (-1: the whole split)."
)
_COUNT = flags.DEFINE_integer("count", None, "Certify at most this many of the selected inputs.")
_SPLIT = flags.DEFINE_string("split", "test", "Dataset split to certify.")
_NOISE = flags.DEFINE_string(
  "noise",
  None,
  "Noise family and scale (sigma), e.g. gaussian:0.25, laplace:0.5, uniform:0.5, "
  "expinf:0.5:k=1:j=0; a family alone takes --sigma or the training noise_sd. "
  "Default: the training noise.",
)
_SIGMA = flags.DEFINE_float("sigma", None, "Noise level (sigma); default: the training noise_sd.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the certification noise.")
_EPOCH = flags.DEFINE_integer("epoch", None, "Checkpoint epoch (default: latest).")
_PREDICT = flags.DEFINE_boolean("predict", False, "Run PREDICT instead of CERTIFY.")
_ADAPTIVE = flags.DEFINE_boolean(
  "adaptive", False, "Sequential CERTIFY: stop each input once it has what is asked of it."
)
_N_MAX = flags.DEFINE_integer(
  "n_max", None, "With --adaptive: the most estimation samples per input (default: --n)."
)
_RADII = flags.DEFINE_list(
  "radii", None, "With --adaptive: the radii certified accuracy will be read at, e.g. 0,0.5,1."
)
_TARGET = flags.DEFINE_float(
  "target_radius", None, "With --adaptive: the one radius asked about (not with --radii)."
)
_TOLERANCE = flags.DEFINE_float(
  "tolerance", None, "With --adaptive: stop once n_max samples could add at most this radius."
)
_FUTILITY = flags.DEFINE_float(
  "futility", 0.01, "With --adaptive: level of the upper bound that calls a goal out of reach."
)
_GROWTH = flags.DEFINE_float("growth", 1.25, "With --adaptive: ratio of consecutive looks.")
_FIRST_LOOK = flags.DEFINE_integer("first_look", 100, "With --adaptive: samples at the first look.")
_PLOT = flags.DEFINE_string("plot", None, "PNG path for the plot (default: OUTFILE.png).")
_FORMAT = flags.DEFINE_enum("format", "markdown", ["markdown", "latex", "tsv"], "Table format.")
_MAX_RADIUS = flags.DEFINE_float("max_radius", None, "Largest radius in table and plot.")
_EVALUATION = define_evaluation_flags()
_NORM = flags.DEFINE_enum(
  "norm",
  None,
  list(noise.NORMS),
  "Norm of the radii in table and plot (default: each file's own radius column, the "
  "primary norm of its noise: l2 for Gaussian, l1 for Laplace and uniform).",
)

_REPORT_ONLY = ("plot", "format", "max_radius", "norm")
# The flags of a certify run but not of its report: the job's options, and --deterministic.
_CERTIFY_ONLY = (
  *(name for name in job.Options.__dataclass_fields__ if name not in _REPORT_ONLY),
  "deterministic",
)


def _present(name: str) -> bool:
  return flags.FLAGS[name].present > 0


def _check_flag_combinations() -> None:
  """The checks of which flags were given; the job checks their values."""
  if _PREDICT.value:
    for name in ("n0", *_REPORT_ONLY):
      if _present(name):
        what = "PREDICT draws only --n samples" if name == "n0" else "predict files have no radii"
        raise InputError(f"--{name} has no effect with --predict ({what}); drop it")
  if not _ADAPTIVE.value:
    for name in job.ADAPTIVE_ONLY:
      if _present(name):
        raise InputError(f"--{name} is a setting of sequential CERTIFY; add --adaptive or drop it")
  elif not _PREDICT.value and _present("n") and _present("n_max"):
    raise InputError("--adaptive takes its sample budget from --n_max (default --n); drop --n")


def _radii() -> tuple[float, ...] | None:
  if _RADII.value is None:
    return None
  try:
    return tuple(float(r) for r in _RADII.value)
  except ValueError:
    raise InputError(
      f"--radii must be numbers, got {','.join(_RADII.value)}; e.g. --radii 0,0.25,0.5"
    ) from None


def options_from_flags() -> job.Options:
  """The job's options from the flags (the same names)."""
  values = {name: flags.FLAGS[name].value for name in job.Options.__dataclass_fields__}
  values["radii"] = _radii()
  return job.Options(**values)


def certify_main():
  _check_flag_combinations()
  job.run(options_from_flags())


def analyze_main(paths):
  for name in _CERTIFY_ONLY:
    if _present(name):
      raise InputError(f"--{name} has no effect with analyze; drop it")
  if not paths:
    raise InputError("analyze needs one or more result files: certify.py analyze A.tsv [B.tsv ...]")
  job.check_report_options(_MAX_RADIUS.value, _FORMAT.value)
  if _PLOT.value:
    plot = results.check_output_path(_PLOT.value, "--plot")
    if any(os.path.abspath(plot) == os.path.abspath(p) for p in paths):
      raise InputError(f"--plot {plot} is one of the result files; choose another path")
  job.report(paths, _PLOT.value, norm=_NORM.value, fmt=_FORMAT.value, max_radius=_MAX_RADIUS.value)


def merge_main(paths):
  """Merges the part files of a multi-process run into one TSV, rows sorted by idx."""
  for name in (*_CERTIFY_ONLY, *_REPORT_ONLY):
    if _present(name):
      raise InputError(f"--{name} has no effect with merge; drop it")
  if len(paths) != 1:
    raise InputError("merge takes one result file: certify.py merge OUTFILE (the --outfile path)")
  job.merge(paths[0])


def main(argv):
  args = argv[1:]
  if args and args[0] == "analyze":
    return analyze_main(args[1:])
  if args and args[0] != "merge":
    raise app.UsageError(f"unexpected arguments {args}; did you mean 'analyze' or 'merge'?")
  if args and args[0] == "merge":
    return merge_main(args[1:])
  start_jobs(_EVALUATION)
  return certify_main()


def run():
  run_app(main)


if __name__ == "__main__":
  sys.exit(run())
