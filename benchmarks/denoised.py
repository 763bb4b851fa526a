"""Denoised smoothing against Gaussian training: certified accuracy and ACR of five classifiers.

For one dataset and each sigma, with the same test inputs and the same noise keys (the
seed and each input's index), CERTIFY runs on

  (a) a standard classifier (trained without noise) alone,
  (b) the same classifier behind a DnCNN trained with MSE at sigma,
  (c) behind that DnCNN fine-tuned with MSE + stability for this classifier
      (Salman et al., "Denoised Smoothing", NeurIPS 2020),
  (d) behind one-shot denoising by a small diffusion model (Carlini et al., ICLR 2023),
      one model for every sigma,
  (e) a classifier of the same architecture trained under Gaussian noise at sigma
      (Cohen et al. 2019),

and the table gives certified accuracy (%) at r = 0, 0.25, 0.5, 0.75, 1.0, the ACR and
the seconds per certified input. Models are trained with train.py's function
(:func:`smoothjax.training.train_and_evaluate`) and certified with certify.py's
(:func:`smoothjax.jobs.certify.run`), so every step resumes: rerun the same command
after an interruption.

Usage::

  python benchmarks/denoised.py --dataset embedded_mnist --outdir benchmarks/out/denoised
  python benchmarks/denoised.py --dataset idx:/usr/share/fashion-mnist --epochs_scale 0.2 \\
      --outdir benchmarks/out/denoised_fashion
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
VARIANTS = {
  "a": "standard classifier alone",
  "b": "+ MSE denoiser",
  "c": "+ MSE+stability denoiser",
  "d": "+ one-shot diffusion denoiser",
  "e": "Gaussian-trained classifier",
}


def _train(config, workdir, timings, name):
  from smoothjax import training

  t0 = time.time()
  last = training.train_and_evaluate(config, workdir)
  if name not in timings:
    timings[name] = time.time() - t0
  print(f"[{name}] {json.dumps(last)}", flush=True)
  return last


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="embedded_mnist")
  parser.add_argument("--sigmas", default="0.25,0.5")
  parser.add_argument("--epochs_scale", type=float, default=1.0, help="Scales every epoch count.")
  parser.add_argument("--n0", type=int, default=100)
  parser.add_argument("--n", type=int, default=1000)
  parser.add_argument("--count", type=int, default=100)
  parser.add_argument("--skip", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--outdir", default="benchmarks/out/denoised")
  args = parser.parse_args()
  sigmas = [float(s) for s in args.sigmas.split(",")]

  from smoothjax import analysis, jobs, results
  from smoothjax.configs import default, embedded_denoiser, embedded_diffusion

  def epochs(n):
    return max(1, round(n * args.epochs_scale))

  os.makedirs(args.outdir, exist_ok=True)
  work = os.path.join(args.outdir, "workdirs")
  timings: dict[str, float] = {}
  timings_path = os.path.join(args.outdir, "training_seconds.json")
  if os.path.exists(timings_path):
    with open(timings_path) as f:
      timings = json.load(f)

  def save_timings():
    with open(timings_path, "w") as f:
      json.dump(timings, f, indent=2)

  def base(config):
    config.dataset = args.dataset
    config.progress = False
    return config

  standard = os.path.join(work, "standard")
  config = base(default.get_config())
  config.mode, config.noise_sd, config.num_epochs = "standard", 0.0, epochs(6)
  _train(config, standard, timings, "standard")
  diffusion_dir = os.path.join(work, "diffusion")
  config = base(embedded_diffusion.get_config())
  config.num_epochs = epochs(10)
  _train(config, diffusion_dir, timings, "diffusion")
  save_timings()
  workdirs = {}
  for sigma in sigmas:
    gaussian = os.path.join(work, f"gaussian_{sigma:g}")
    config = base(default.get_config())
    config.noise_sd, config.num_epochs = sigma, epochs(6)
    _train(config, gaussian, timings, f"gaussian_{sigma:g}")
    mse = os.path.join(work, f"mse_{sigma:g}")
    config = base(embedded_denoiser.get_config())
    config.noise_sd, config.num_epochs = sigma, epochs(10)
    _train(config, mse, timings, f"mse_{sigma:g}")
    stability = os.path.join(work, f"stability_{sigma:g}")
    config = base(embedded_denoiser.get_config())
    config.noise_sd, config.num_epochs = sigma, epochs(3)
    config.denoiser.loss, config.denoiser.classifier = "mse+stability", standard
    config.init_from, config.learning_rate = mse, 1e-4
    _train(config, stability, timings, f"stability_{sigma:g}")
    save_timings()
    workdirs[sigma] = {
      "a": (standard, None),
      "b": (standard, mse),
      "c": (standard, stability),
      "d": (standard, diffusion_dir),
      "e": (gaussian, None),
    }

  table = {
    "dataset": args.dataset,
    "n0": args.n0,
    "n": args.n,
    "count": args.count,
    "skip": args.skip,
    "training_seconds": timings,
    "rows": [],
  }
  for sigma in sigmas:
    for variant, (clf, den) in workdirs[sigma].items():
      outfile = os.path.join(args.outdir, f"certify_{variant}_sigma{sigma:g}.tsv")
      jobs.certify.run(
        jobs.certify.Options(
          workdir=clf,
          outfile=outfile,
          denoiser=den,
          n0=args.n0,
          n=args.n,
          count=args.count,
          skip=args.skip,
          sigma=sigma,
          seed=args.seed,
          batch=1000,
        )
      )
      res = results.read_results(outfile)
      row = {
        "sigma": sigma,
        "variant": variant,
        "what": VARIANTS[variant],
        "certified": dict(
          zip(
            (f"{r:g}" for r in RADII),
            (100 * float(a) for a in analysis.certified_accuracy(res, np.array(RADII))),
            strict=True,
          )
        ),
        "acr": float(analysis.acr(res)),
        "seconds_per_input": float(np.mean(res.extra["time"])),
        "abstain": 100 * float(np.mean(res.predict < 0)),
      }
      table["rows"].append(row)
  with open(os.path.join(args.outdir, "denoised.json"), "w") as f:
    json.dump(table, f, indent=2)
  header = "| sigma | classifier | " + " | ".join(f"r = {r:g}" for r in RADII)
  print(header + " | ACR | s / input |")
  print("|---" * (len(RADII) + 4) + "|")
  for row in table["rows"]:
    cells = " | ".join(f"{row['certified'][f'{r:g}']:.1f}" for r in RADII)
    print(
      f"| {row['sigma']:g} | ({row['variant']}) {row['what']} | {cells} | {row['acr']:.3f} | "
      f"{row['seconds_per_input']:.2f} |"
    )


if __name__ == "__main__":
  main()
