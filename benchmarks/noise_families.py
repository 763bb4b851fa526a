"""Noise families compared at matched sigma: certified accuracy in l1 (and l2), ACR.

For each noise family (Gaussian, Laplace, uniform; Yang et al. 2020, "Randomized
Smoothing of All Shapes and Sizes") and each sigma (the per-coordinate standard
deviation, at which the paper compares families), trains the demo CNN on the
embedded MNIST digits under that noise (smoothjax/configs/default.py with ``config.noise``),
certifies every ``skip``-th test digit with CERTIFY under the same noise, and writes
one table per norm (certified accuracy at each radius, ACR) and one figure of
certified accuracy against the l1 radius. train.py and certify.py run as a user runs
them, so every step resumes.

Usage::

  python benchmarks/noise_families.py --sigmas 0.25,0.5 --outdir benchmarks/out/noises
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

RADII = {
  "l1": [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
  "l2": [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
}


def _run(cmd):
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--families", default="gaussian,laplace,uniform")
  parser.add_argument("--sigmas", default="0.25,0.5")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, default=6)
  parser.add_argument("--n", type=int, default=10_000)
  parser.add_argument("--skip", type=int, default=4)
  parser.add_argument("--outdir", default="benchmarks/out/noises")
  args = parser.parse_args()
  families = args.families.split(",")
  sigmas = [float(s) for s in args.sigmas.split(",")]

  from smoothjax import analysis, results

  runs, seconds = {}, {}
  for sigma in sigmas:
    for family in families:
      name = f"{family}_s{sigma:g}"
      workdir = os.path.join(args.outdir, name)
      outfile = os.path.join(args.outdir, f"{name}.tsv")
      t0 = time.time()
      _run(
        [
          sys.executable,
          "train.py",
          "--config=default",
          f"--workdir={workdir}",
          f"--config.noise={family}",
          f"--config.noise_sd={sigma}",
          f"--config.num_epochs={args.epochs}",
          f"--config.seed={args.seed}",
          "--config.progress=False",
        ]
      )
      t1 = time.time()
      _run(
        [
          sys.executable,
          "certify.py",
          f"--workdir={workdir}",
          f"--outfile={outfile}",
          "--n0=100",
          f"--n={args.n}",
          "--alpha=0.001",
          "--batch=1000",
          f"--skip={args.skip}",
          "--inputs_per_step=10",
          "--plot=",
        ]
      )
      seconds[name] = (t1 - t0, time.time() - t1)
      metrics = [json.loads(ln) for ln in open(os.path.join(workdir, "metrics.jsonl"))]
      runs[(sigma, family)] = (results.read_results(outfile), metrics[-1])

  summary, tables = {}, []
  for norm, radii in RADII.items():
    lines = [
      f"Certified accuracy (%) against the {norm} radius, and {norm} ACR:\n",
      "| sigma | noise | test acc. under noise | "
      + " | ".join(f"r = {r:.2f}" for r in radii)
      + " | ACR |",
      "|---|---|---:|" + "---:|" * len(radii) + "---:|",
    ]
    for sigma in sigmas:
      for family in families:
        res, metrics = runs[(sigma, family)]
        res = analysis.in_norm(res, norm)
        acc = [analysis.certified_accuracy(res, r) for r in radii]
        acr = analysis.acr(res)
        summary.setdefault(f"{family}@{sigma:g}", {})[norm] = {"certified": acc, "acr": acr}
        lines.append(
          f"| {sigma:g} | {family} | {100 * metrics['test_accuracy_noisy']:.1f} | "
          + " | ".join(f"{100 * a:.1f}" for a in acc)
          + f" | {acr:.3f} |"
        )
    tables.append("\n".join(lines))
  text = "\n\n".join(tables)
  print(text)
  print("train / certify seconds:", {k: [round(v, 1) for v in t] for k, t in seconds.items()})
  with open(os.path.join(args.outdir, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(args.outdir, "summary.json"), "w") as f:
    json.dump({"summary": summary, "seconds": seconds}, f, indent=2)
  _plot(runs, sigmas, families, args, os.path.join(args.outdir, "noise_families.png"))


def _plot(runs, sigmas, families, args, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from smoothjax import analysis

  fig, axes = plt.subplots(1, len(sigmas), figsize=(5 * len(sigmas), 3.8), squeeze=False)
  grid = np.linspace(0, 2.5, 251)
  for ax, sigma in zip(axes[0], sigmas, strict=True):
    for family in families:
      res = analysis.in_norm(runs[(sigma, family)][0], "l1")
      ax.plot(grid, [analysis.certified_accuracy(res, r) for r in grid], label=family)
    ax.set_title(f"sigma = {sigma:g}, embedded MNIST, n = {args.n}")
    ax.set_xlabel("l1 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"figure: {path}")


if __name__ == "__main__":
  main()
