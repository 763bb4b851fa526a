"""Comparing trained runs: accuracy under attack, certified accuracy and ACR, one table.

For each workdir (for example standard, pgd, gaussian and smoothadv runs)
:func:`run` does what is missing of the attack evaluation (:mod:`smoothjax.jobs.attack`:
FGSM and PGD, l2 and linf, at the given eps) and of the certification
(:mod:`smoothjax.jobs.certify`), each in its own resumable file under
``OUTDIR/<name>/``, then writes one table (``OUTDIR/comparison.md``, ``.csv`` and
``.json``) and one figure (``OUTDIR/comparison.png``)::

  from smoothjax import jobs
  table = jobs.compare.run(jobs.compare.Options(
      workdirs=("workdirs/standard", "workdirs/gaussian"), outdir="results/compare",
      sigma=0.25, n=10_000, skip=10))

The certification options have certify.py's names and meanings (``n0``, ``n``,
``alpha``, ``batch``, ``skip``, ``max``, ``count``, ``seed``). A run trained with
noise is certified at its training noise (its family, ``config.noise``, at its
``noise_sd``); a run trained without noise at ``sigma`` (in the family ``noise``,
default Gaussian); ``same_sigma`` certifies every run at ``sigma``, in its own family.
Certified accuracy is tabulated and drawn in ``norm`` (default l2; l1 to compare
Laplace or uniform smoothing with Gaussian, whose radii certify writes in every norm).

Every step resumes, locks its output and refuses to mix settings, so running the same
options again only does what is missing. Under ``jax.distributed`` each job runs its
share on every process.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from smoothjax import analysis, noise, results, workdir
from smoothjax.errors import InputError
from smoothjax.jobs import attack as attack_job
from smoothjax.jobs import certify as certify_job


@dataclasses.dataclass(frozen=True)
class Options:
  """The settings of one comparison; ``compare.py``'s flags have the same names."""

  workdirs: Sequence[str]
  outdir: str
  names: Sequence[str] | None = None  # None: the workdirs' base names
  n0: int = 100
  n: int = 10_000
  alpha: float = 0.001
  batch: int = 1000
  skip: int = 1
  max: int = -1
  count: int | None = None
  sigma: float | None = None
  same_sigma: bool = False
  noise: str | None = None  # None: gaussian, for runs trained without noise
  norm: str = "l2"
  seed: int = 0
  attacks: Sequence[str] = ("fgsm", "pgd")
  eps_l2: Sequence[float] = (0.5, 1.0, 2.0)
  eps_linf: Sequence[float] = (0.05, 0.1, 0.2)
  steps: int = 20
  radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
  # One per workdir ("" for none): compare classifier(denoiser(x)) (denoised smoothing).
  denoisers: Sequence[str] | None = None


def check_numbers(name: str, values, *, positive: bool) -> list[float]:
  """``values`` (numbers or their text) as floats: finite, > 0 (or >= 0), each once."""
  try:
    out = [float(v) for v in values]
  except (TypeError, ValueError):
    text = ",".join(map(str, values))
    raise InputError(f"--{name} must be comma-separated numbers, got {text}") from None
  low = "> 0" if positive else ">= 0"
  if not out or any(not np.isfinite(v) or (v <= 0 if positive else v < 0) for v in out):
    raise InputError(f"--{name} must be finite numbers {low}, got {','.join(map(str, values))}")
  # attack names its columns by f"{eps:g}": two values with one name are one radius.
  names = [f"{v:g}" for v in out]
  if len(set(names)) < len(names):
    twice = next(n for n in names if names.count(n) > 1)
    raise InputError(f"--{name} lists {twice} twice; give each value once")
  return out


def check_options(o: Options) -> tuple[list[dict], dict, list[float]]:
  """The runs to compare (name, workdir, config, sigma, family), the eps and the radii.

  Raises:
    InputError: the first thing wrong, in one line, before anything is written.
  """
  if not o.workdirs:
    raise InputError("--workdirs is required: a comma-separated list of train.py workdirs")
  if not o.outdir:
    raise InputError("--outdir is required: the folder for the result files and the table")
  if os.path.exists(o.outdir) and not os.path.isdir(o.outdir):
    raise InputError(f"--outdir {o.outdir} is a file; choose a folder")
  denoisers = [d or "" for d in (o.denoisers or [""] * len(o.workdirs))]
  if len(denoisers) != len(o.workdirs):
    raise InputError(
      f"--denoisers has {len(denoisers)} entries for {len(o.workdirs)} workdirs; give one per "
      "workdir, empty for none (e.g. --denoisers=,workdirs/denoiser)"
    )

  def default_name(path, denoiser):
    name = os.path.basename(os.path.normpath(path))
    return f"{name}+{os.path.basename(os.path.normpath(denoiser))}" if denoiser else name

  names = list(o.names or [default_name(w, d) for w, d in zip(o.workdirs, denoisers, strict=True)])
  if len(names) != len(o.workdirs):
    raise InputError(f"--names has {len(names)} names for {len(o.workdirs)} workdirs")
  if len(set(names)) != len(names) or any(not n or os.sep in n for n in names):
    raise InputError(f"run names must be distinct plain names, got {names}; pass --names")
  for name in ("n0", "n", "batch", "skip", "steps"):
    if getattr(o, name) < 1:
      raise InputError(f"--{name} must be >= 1, got {getattr(o, name)}")
  if not 0 < o.alpha < 1:
    raise InputError(f"--alpha must be in (0, 1), got {o.alpha}")
  if o.count is not None and o.count < 1:
    raise InputError(f"--count must be >= 1, got {o.count}")
  if o.sigma is not None and not (np.isfinite(o.sigma) and o.sigma > 0):
    raise InputError(f"--sigma must be a finite number > 0, got {o.sigma}")
  if o.same_sigma and o.sigma is None:
    raise InputError("--same_sigma needs --sigma")
  if o.noise is not None and o.noise not in noise.FAMILIES:
    raise InputError(f"--noise: choose from {', '.join(noise.FAMILIES)}, got {o.noise!r}")
  if o.norm not in noise.NORMS:
    raise InputError(f"--norm: choose from {', '.join(noise.NORMS)}, got {o.norm!r}")
  unknown = sorted(set(o.attacks) - set(attack_job.ATTACKS))
  if unknown or not o.attacks:
    raise InputError(f"--attacks: choose from {', '.join(attack_job.ATTACKS)}, got {unknown}")
  eps = {"l2": check_numbers("eps_l2", o.eps_l2, positive=True)}
  eps["linf"] = check_numbers("eps_linf", o.eps_linf, positive=True)
  radii = sorted(check_numbers("radii", o.radii, positive=False))
  runs = []
  for name, path, denoiser in zip(names, o.workdirs, denoisers, strict=True):
    config = workdir.load_config(path)  # one-line error for a missing run
    for where in (path, denoiser) if denoiser else (path,):
      if not os.path.isdir(os.path.join(where, workdir.checkpoints.CHECKPOINT_DIR)):
        raise InputError(f"no checkpoints in {where}; train it first")
    # The default smoothing noise: the denoiser's training noise when there is one.
    noise_config = workdir.load_config(denoiser) if denoiser else config
    trained = float(noise_config.get("noise_sd", 0.0))
    family = noise.family_name(noise_config.get("noise", "gaussian"))
    if o.same_sigma or trained == 0:
      if o.sigma is None:
        raise InputError(f"{path} was trained without noise: pass --sigma to certify it")
      sigma = o.sigma
      if trained == 0:
        family = o.noise or "gaussian"
    else:
      sigma = trained
    # certify checks the family's settings; here only its name (for file names) counts.
    if family not in noise.FAMILIES:
      raise InputError(f"{path} has config.noise {config.get('noise')!r}, not a noise family")
    runs.append(
      {
        "name": name,
        "workdir": path,
        "config": config,
        "noise_config": noise_config,
        "sigma": sigma,
        "family": family,
        "denoiser": denoiser or None,
      }
    )
  return runs, eps, radii


def _evaluate(o: Options, run: dict, eps: dict) -> tuple[dict, results.Results]:
  folder = os.path.join(o.outdir, run["name"])
  os.makedirs(folder, exist_ok=True)
  selection = {"skip": o.skip, "max": o.max, "count": o.count, "seed": o.seed}
  attacks = {}
  for attack in o.attacks:
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
          steps=o.steps,
          batch=min(o.batch, 256),
          denoiser=run["denoiser"],
          **selection,
        )
      )
      attacks[(attack, norm)] = analysis.attacks.summarize(path)
  # Gaussian files keep their earlier names, so earlier comparisons resume.
  family = "" if run["family"] == "gaussian" else f"{run['family']}_"
  certify_path = os.path.join(folder, f"certify_{family}sigma{run['sigma']:g}.tsv")
  noise_name = None
  if float(run["noise_config"].get("noise_sd", 0.0)) == 0 and run["family"] != "gaussian":
    noise_name = run["family"]
  print(f"\n== {run['name']}: certify at sigma {run['sigma']:g} -> {certify_path}", flush=True)
  certify_job.run(
    certify_job.Options(
      workdir=run["workdir"],
      outfile=certify_path,
      n0=o.n0,
      n=o.n,
      alpha=o.alpha,
      batch=o.batch,
      sigma=float(run["sigma"]),
      noise=noise_name,
      inputs_per_step=10,
      denoiser=run["denoiser"],
      **selection,
    )
  )
  return attacks, analysis.in_norm(results.read_results(certify_path), o.norm)


def run(o: Options) -> dict:
  """Evaluates what is missing of every run, then writes the table and the figure.

  Returns:
    ``{"header": [...], "rows": [[...], ...]}``, the table (also in
    ``OUTDIR/comparison.json``).

  Raises:
    InputError: bad options or a missing run (before anything is written), or a result
      file of other settings.
  """
  runs, eps, radii = check_options(o)
  os.makedirs(o.outdir, exist_ok=True)
  rows = [(r, *_evaluate(o, r, eps)) for r in runs]
  header, body = analysis.comparison.table(rows, eps, radii, o.attacks)
  text = analysis.comparison.write_table(header, body, o.outdir, o.norm)
  analysis.comparison.plot(rows, os.path.join(o.outdir, "comparison.png"), o.attacks, o.norm)
  with open(os.path.join(o.outdir, "comparison.json"), "w", encoding="utf-8") as f:
    json.dump({"header": header, "rows": body}, f, indent=2)
  print("\n" + text)
  print(f"table: {o.outdir}/comparison.md (and .csv); figure: {o.outdir}/comparison.png")
  return {"header": header, "rows": body}
