"""Compares several trained runs: accuracy under attack, certified accuracy and ACR.

For each workdir (for example standard, pgd, gaussian and smoothadv runs) this
runs what is missing of the attack evaluation (``attack.py``: FGSM and PGD, l2
and linf, at the given eps) and of the certification (``certify.py``), each in
its own resumable file under ``OUTDIR/<name>/``, then writes one table
(``OUTDIR/comparison.md`` and ``.csv``) and one figure (``OUTDIR/comparison.png``)::

  python compare.py --workdirs workdirs/standard,workdirs/pgd,workdirs/gaussian \\
      --outdir results/compare --sigma 0.25 --n 10000 --skip 10

The certification options have certify.py's names and meanings (``--n0``, ``--n``,
``--alpha``, ``--batch``, ``--skip``, ``--max``, ``--count``, ``--seed``). A run
trained with noise is certified at its training noise (certify.py's default: its
family, ``config.noise``, at its ``noise_sd``); a run trained without noise is
certified at ``--sigma`` (in the family ``--noise``, default Gaussian);
``--same_sigma`` certifies every run at ``--sigma``, in its own family. Certified
accuracy is tabulated and drawn in ``--norm`` (default l2; l1 to compare Laplace or
uniform smoothing with Gaussian, whose radii certify.py writes in every norm).

The jobs run in this process (:mod:`smoothjax.jobs`, what ``attack.py`` and
``certify.py`` run), so every step resumes, locks its output and refuses to mix
settings; rerunning the same command only does what is missing. Under
``jax.distributed`` each job runs its share on every process.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from absl import app, flags

from smoothjax import analysis, checkpointing, parallel, results, shares
from smoothjax import noise as noise_lib
from smoothjax.cli.common import run_app
from smoothjax.errors import InputError
from smoothjax.jobs import attack as attack_job
from smoothjax.jobs import certify as certify_job

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Trained runs to compare (from train.py).")
_NAMES = flags.DEFINE_list("names", None, "Names of the runs (default: workdir base names).")
_OUTDIR = flags.DEFINE_string("outdir", None, "Folder for the result files, table and figure.")
_N0 = flags.DEFINE_integer("n0", 100, "certify.py --n0: noise samples to select the class.")
_N = flags.DEFINE_integer("n", 10_000, "certify.py --n: noise samples to estimate pA.")
_ALPHA = flags.DEFINE_float("alpha", 0.001, "certify.py --alpha: failure probability.")
_BATCH = flags.DEFINE_integer("batch", 1000, "Forward passes per device step.")
_SKIP = flags.DEFINE_integer("skip", 1, "Evaluate every skip-th input.")
_MAX = flags.DEFINE_integer("max", -1, "Stop at this dataset index (-1: all), as Cohen's.")
_COUNT = flags.DEFINE_integer("count", None, "Evaluate at most this many selected inputs.")
_SIGMA = flags.DEFINE_float("sigma", None, "Noise to certify runs trained without noise at.")
_SAME_SIGMA = flags.DEFINE_boolean("same_sigma", False, "Certify every run at --sigma.")
_NOISE = flags.DEFINE_enum(
  "noise",
  None,
  list(noise_lib.FAMILIES),
  "Noise family for runs trained without noise (default gaussian).",
)
_NORM = flags.DEFINE_enum(
  "norm", "l2", list(noise_lib.NORMS), "Norm of the certified radii in the table and figure."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the certification noise and random starts.")
_ATTACKS = flags.DEFINE_list("attacks", ["fgsm", "pgd"], "Attacks on the base classifier.")
_EPS_L2 = flags.DEFINE_list("eps_l2", ["0.5", "1.0", "2.0"], "l2 radii of the attacks.")
_EPS_LINF = flags.DEFINE_list("eps_linf", ["0.05", "0.1", "0.2"], "linf radii of the attacks.")
_STEPS = flags.DEFINE_integer("steps", 20, "PGD steps.")
_RADII = flags.DEFINE_list(
  "radii", ["0", "0.25", "0.5", "0.75", "1.0"], "Radii of the certified-accuracy columns."
)


def _floats(name: str, values, *, positive: bool) -> list[float]:
  try:
    out = [float(v) for v in values]
  except ValueError:
    raise InputError(f"--{name} must be comma-separated numbers, got {','.join(values)}") from None
  low = "> 0" if positive else ">= 0"
  if not out or any(not np.isfinite(v) or (v <= 0 if positive else v < 0) for v in out):
    raise InputError(f"--{name} must be finite numbers {low}, got {','.join(values)}")
  # attack.py names its columns by f"{eps:g}": two values with one name are one radius.
  names = [f"{v:g}" for v in out]
  if len(set(names)) < len(names):
    twice = next(n for n in names if names.count(n) > 1)
    raise InputError(f"--{name} lists {twice} twice; give each value once")
  return out


def _check_flags():
  if not _WORKDIRS.value:
    raise InputError("--workdirs is required: a comma-separated list of train.py workdirs")
  if not _OUTDIR.value:
    raise InputError("--outdir is required: the folder for the result files and the table")
  if os.path.exists(_OUTDIR.value) and not os.path.isdir(_OUTDIR.value):
    raise InputError(f"--outdir {_OUTDIR.value} is a file; choose a folder")
  names = _NAMES.value or [os.path.basename(os.path.normpath(w)) for w in _WORKDIRS.value]
  if len(names) != len(_WORKDIRS.value):
    raise InputError(f"--names has {len(names)} names for {len(_WORKDIRS.value)} workdirs")
  if len(set(names)) != len(names) or any(not n or os.sep in n for n in names):
    raise InputError(f"run names must be distinct plain names, got {names}; pass --names")
  for name, flag in (("n0", _N0), ("n", _N), ("batch", _BATCH), ("skip", _SKIP), ("steps", _STEPS)):
    if flag.value < 1:
      raise InputError(f"--{name} must be >= 1, got {flag.value}")
  if not 0 < _ALPHA.value < 1:
    raise InputError(f"--alpha must be in (0, 1), got {_ALPHA.value}")
  if _COUNT.value is not None and _COUNT.value < 1:
    raise InputError(f"--count must be >= 1, got {_COUNT.value}")
  if _SIGMA.value is not None and not (np.isfinite(_SIGMA.value) and _SIGMA.value > 0):
    raise InputError(f"--sigma must be a finite number > 0, got {_SIGMA.value}")
  if _SAME_SIGMA.value and _SIGMA.value is None:
    raise InputError("--same_sigma needs --sigma")
  unknown = sorted(set(_ATTACKS.value) - set(attack_job.ATTACKS))
  if unknown or not _ATTACKS.value:
    raise InputError(f"--attacks: choose from {', '.join(attack_job.ATTACKS)}, got {unknown}")
  eps = {"l2": _floats("eps_l2", _EPS_L2.value, positive=True)}
  eps["linf"] = _floats("eps_linf", _EPS_LINF.value, positive=True)
  radii = sorted(_floats("radii", _RADII.value, positive=False))
  runs = []
  for name, workdir in zip(names, _WORKDIRS.value, strict=True):
    config = checkpointing.load_config(workdir)  # one-line error for a missing run
    if not os.path.isdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR)):
      raise InputError(f"no checkpoints in {workdir}; train it first")
    trained = float(config.get("noise_sd", 0.0))
    family = noise_lib.family_name(config.get("noise", "gaussian"))
    if _SAME_SIGMA.value or trained == 0:
      if _SIGMA.value is None:
        raise InputError(f"{workdir} was trained without noise: pass --sigma to certify it")
      sigma = _SIGMA.value
      if trained == 0:
        family = _NOISE.value or "gaussian"
    else:
      sigma = trained
    # certify.py checks the family's settings; here only its name (for file names) counts.
    if family not in noise_lib.FAMILIES:
      raise InputError(f"{workdir} has config.noise {config.get('noise')!r}, not a noise family")
    runs.append(
      {"name": name, "workdir": workdir, "config": config, "sigma": sigma, "family": family}
    )
  return runs, eps, radii


def _selection() -> dict:
  """The jobs' selection and seed options: compare.py's flags of the same names."""
  return {"skip": _SKIP.value, "max": _MAX.value, "count": _COUNT.value, "seed": _SEED.value}


def _evaluate(run, eps, outdir):
  folder = os.path.join(outdir, run["name"])
  os.makedirs(folder, exist_ok=True)
  attacks = {}
  for attack in _ATTACKS.value:
    for norm in ("l2", "linf"):
      path = os.path.join(folder, f"attack_{attack}_{norm}.tsv")
      print(f"\n== {run['name']}: {attack} {norm} -> {path}", flush=True)
      attack_job.run(
        attack_job.Options(
          workdir=run["workdir"],
          outfile=path,
          attack=attack,
          norm=norm,
          eps=tuple(float(f"{e:g}") for e in eps[norm]),  # as attack.py's --eps had them
          steps=_STEPS.value,
          batch=min(_BATCH.value, 256),
          **_selection(),
        )
      )
      attacks[(attack, norm)] = attack_job.summarize(path)
  # Gaussian files keep their earlier names, so earlier comparisons resume.
  family = "" if run["family"] == "gaussian" else f"{run['family']}_"
  certify_path = os.path.join(folder, f"certify_{family}sigma{run['sigma']:g}.tsv")
  noise = None
  if float(run["config"].get("noise_sd", 0.0)) == 0 and run["family"] != "gaussian":
    noise = run["family"]
  print(f"\n== {run['name']}: certify at sigma {run['sigma']:g} -> {certify_path}", flush=True)
  certify_job.run(
    certify_job.Options(
      workdir=run["workdir"],
      outfile=certify_path,
      n0=_N0.value,
      n=_N.value,
      alpha=_ALPHA.value,
      batch=_BATCH.value,
      sigma=float(run["sigma"]),
      noise=noise,
      inputs_per_step=10,
      **_selection(),
    )
  )
  return attacks, analysis.in_norm(results.read_results(certify_path), _NORM.value)


def build_table(rows, eps, radii):
  """Header and rows (strings) of the comparison table."""
  header = ["run", "mode", "noise", "trained sigma", "certified sigma", "clean"]
  for attack in _ATTACKS.value:
    for norm in ("l2", "linf"):
      header += [f"{attack} {norm} {e:g}" for e in eps[norm]]
  header += [f"cert r={r:g}" for r in radii] + ["ACR"]
  body = []
  for run, attacks, cert in rows:
    first = next(iter(attacks.values()))
    line = [
      run["name"],
      str(run["config"].get("mode", "?")),
      run["family"],
      f"{float(run['config'].get('noise_sd', 0.0)):g}",
      f"{run['sigma']:g}",
      f"{100 * first['clean_accuracy']:.1f}",
    ]
    for attack in _ATTACKS.value:
      for norm in ("l2", "linf"):
        line += [f"{100 * a:.1f}" for a in attacks[(attack, norm)]["accuracy"]]
    line += [f"{100 * analysis.certified_accuracy(cert, r):.1f}" for r in radii]
    line.append(f"{analysis.acr(cert):.3f}")
    body.append(line)
  return header, body


def _write_table(header, body, outdir):
  md = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
  md += ["| " + " | ".join(line) + " |" for line in body]
  text = "\n".join(md) + "\n"
  with open(os.path.join(outdir, "comparison.md"), "w", encoding="utf-8") as f:
    f.write(
      "Accuracy (%) of the base classifier, clean and under each attack at each eps; "
      f"certified accuracy (%) of the smoothed classifier at each {_NORM.value} radius; "
      f"ACR ({_NORM.value}).\n\n" + text
    )
  with open(os.path.join(outdir, "comparison.csv"), "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(body)
  return text


def plot(rows, eps, path):
  """Three panels: certified accuracy against radius, accuracy under PGD in l2 and linf."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  top = max(float(np.max(cert.radius, initial=0.0)) for _, _, cert in rows)
  grid = np.linspace(0, max(top, 0.25) * 1.05, 200)
  for run, attacks, cert in rows:
    noise = "" if run["family"] == "gaussian" else f"{run['family']} "
    label = f"{run['name']} ({noise}sigma={run['sigma']:g})"
    axes[0].plot(grid, [analysis.certified_accuracy(cert, r) for r in grid], label=label)
    for ax, norm in zip(axes[1:], ("l2", "linf"), strict=True):
      attack = "pgd" if ("pgd", norm) in attacks else _ATTACKS.value[0]
      s = attacks[(attack, norm)]
      ax.plot([0, *s["eps"]], [s["clean_accuracy"], *s["accuracy"]], "o-", label=run["name"])
      ax.set_title(f"base classifier under {attack.upper()} ({norm})")
      ax.set_xlabel(f"{norm} eps")
  axes[0].set_title("smoothed classifier: certified accuracy")
  axes[0].set_xlabel(f"{_NORM.value} radius")
  for ax in axes:
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before anything reads a workdir: multi-process JAX starts before any other JAX call.
  parallel.initialize_distributed(shutdown_timeout_seconds=shares.FINISH_TIMEOUT_SECONDS)
  runs, eps, radii = _check_flags()
  outdir = _OUTDIR.value
  os.makedirs(outdir, exist_ok=True)
  rows = [(run, *_evaluate(run, eps, outdir)) for run in runs]
  header, body = build_table(rows, eps, radii)
  text = _write_table(header, body, outdir)
  plot(rows, eps, os.path.join(outdir, "comparison.png"))
  with open(os.path.join(outdir, "comparison.json"), "w", encoding="utf-8") as f:
    json.dump({"header": header, "rows": body}, f, indent=2)
  print("\n" + text)
  print(f"table: {outdir}/comparison.md (and .csv); figure: {outdir}/comparison.png")


def run():
  run_app(main)


if __name__ == "__main__":
  run()
