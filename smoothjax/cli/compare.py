"""Compares several trained runs: accuracy under attack, certified accuracy and ACR.

For each workdir this runs what is missing of the attack evaluation (FGSM and PGD, l2
and linf) and of the certification, each in its own resumable file under
``OUTDIR/<name>/``, then writes one table (``OUTDIR/comparison.md``, ``.csv``) and one
figure (``OUTDIR/comparison.png``); :mod:`smoothjax.jobs.compare` says how::

  python compare.py --workdirs workdirs/standard,workdirs/pgd,workdirs/gaussian \\
      --outdir results/compare --sigma 0.25 --n 10000 --skip 10
"""

from __future__ import annotations

from absl import app, flags

from smoothjax import noise
from smoothjax.cli.common import run_app, start_jobs
from smoothjax.jobs import compare as job

_D = job.Options
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Trained runs to compare (from train.py).")
_NAMES = flags.DEFINE_list("names", None, "Names of the runs (default: workdir base names).")
_OUTDIR = flags.DEFINE_string("outdir", None, "Folder for the result files, table and figure.")
_N0 = flags.DEFINE_integer("n0", _D.n0, "certify.py --n0: noise samples to select the class.")
_N = flags.DEFINE_integer("n", _D.n, "certify.py --n: noise samples to estimate pA.")
_ALPHA = flags.DEFINE_float("alpha", _D.alpha, "certify.py --alpha: failure probability.")
_BATCH = flags.DEFINE_integer("batch", _D.batch, "Forward passes per device step.")
_SKIP = flags.DEFINE_integer("skip", _D.skip, "Evaluate every skip-th input.")
_MAX = flags.DEFINE_integer("max", _D.max, "Stop at this dataset index (-1: all), as Cohen's.")
_COUNT = flags.DEFINE_integer("count", None, "Evaluate at most this many selected inputs.")
_SIGMA = flags.DEFINE_float("sigma", None, "Noise to certify runs trained without noise at.")
_SAME_SIGMA = flags.DEFINE_boolean("same_sigma", False, "Certify every run at --sigma.")
_NOISE = flags.DEFINE_enum(
  "noise", None, list(noise.FAMILIES), "Family for runs trained without noise (default gaussian)."
)
_NORM = flags.DEFINE_enum(
  "norm", _D.norm, list(noise.NORMS), "Norm of the certified radii in the table and figure."
)
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of the certification noise and random starts.")
_ATTACKS = flags.DEFINE_list("attacks", list(_D.attacks), "Attacks on the base classifier.")
_EPS_L2 = flags.DEFINE_list("eps_l2", ["0.5", "1.0", "2.0"], "l2 radii of the attacks.")
_EPS_LINF = flags.DEFINE_list("eps_linf", ["0.05", "0.1", "0.2"], "linf radii of the attacks.")
_STEPS = flags.DEFINE_integer("steps", _D.steps, "PGD steps.")
_RADII = flags.DEFINE_list(
  "radii", ["0", "0.25", "0.5", "0.75", "1.0"], "Radii of the certified-accuracy columns."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start_jobs()  # multi-process JAX starts before anything reads a workdir
  options = job.Options(
    workdirs=_WORKDIRS.value or (),
    names=_NAMES.value,
    outdir=_OUTDIR.value,
    **{name: flag.value for name, flag in _SIMPLE.items()},
  )
  job.run(options)


_SIMPLE = {
  "n0": _N0, "n": _N, "alpha": _ALPHA, "batch": _BATCH, "skip": _SKIP, "max": _MAX,
  "count": _COUNT, "sigma": _SIGMA, "same_sigma": _SAME_SIGMA, "noise": _NOISE, "norm": _NORM,
  "seed": _SEED, "attacks": _ATTACKS, "eps_l2": _EPS_L2, "eps_linf": _EPS_LINF, "steps": _STEPS,
  "radii": _RADII,
}


def run():
  run_app(main)


if __name__ == "__main__":
  run()
