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
flags.DEFINE_list("workdirs", None, "Trained runs to compare (from train.py).")
flags.DEFINE_list("names", None, "Names of the runs (default: workdir base names).")
flags.DEFINE_list(
  "denoisers",
  None,
  "One denoiser workdir per run, empty for none (e.g. ',workdirs/dn'): compare "
  "classifier(denoiser(x)) too (denoised smoothing).",
)
flags.DEFINE_string("outdir", None, "Folder for the result files, table and figure.")
flags.DEFINE_integer("n0", _D.n0, "certify.py --n0: noise samples to select the class.")
flags.DEFINE_integer("n", _D.n, "certify.py --n: noise samples to estimate pA.")
flags.DEFINE_float("alpha", _D.alpha, "certify.py --alpha: failure probability.")
flags.DEFINE_integer("batch", _D.batch, "Forward passes per device step.")
flags.DEFINE_integer("skip", _D.skip, "Evaluate every skip-th input.")
flags.DEFINE_integer("max", _D.max, "Stop at this dataset index (-1: all), as Cohen's.")
flags.DEFINE_integer("count", None, "Evaluate at most this many selected inputs.")
flags.DEFINE_float("sigma", None, "Noise to certify runs trained without noise at.")
flags.DEFINE_boolean("same_sigma", False, "Certify every run at --sigma.")
flags.DEFINE_enum(
  "noise", None, list(noise.FAMILIES), "Family for runs trained without noise (default gaussian)."
)
flags.DEFINE_enum(
  "norm", _D.norm, list(noise.NORMS), "Norm of the certified radii in the table and figure."
)
flags.DEFINE_integer("seed", _D.seed, "Seed of the certification noise and random starts.")
flags.DEFINE_list("attacks", list(_D.attacks), "Attacks on the base classifier.")
flags.DEFINE_list("eps_l2", ["0.5", "1.0", "2.0"], "l2 radii of the attacks.")
flags.DEFINE_list("eps_linf", ["0.05", "0.1", "0.2"], "linf radii of the attacks.")
flags.DEFINE_integer("steps", _D.steps, "PGD steps.")
flags.DEFINE_list(
  "radii", ["0", "0.25", "0.5", "0.75", "1.0"], "Radii of the certified-accuracy columns."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start_jobs()  # multi-process JAX starts before anything reads a workdir
  values = {name: flags.FLAGS[name].value for name in job.Options.__dataclass_fields__}
  job.run(job.Options(**values))  # the job's options are the flags of the same names


def run():
  run_app(main)


if __name__ == "__main__":
  run()
