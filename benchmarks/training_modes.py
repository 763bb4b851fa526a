"""Smoothing training modes compared: certified accuracy, ACR and training cost.

Two parts:

* ``--part certify``: for each noise level and seed, trains the demo CNN on the
  embedded MNIST digits with ``gaussian`` (smoothjax/configs/default.py), ``smoothadv``,
  ``consistency`` and ``macer`` (configs/embedded_*.py), certifies every
  ``skip``-th test digit with CERTIFY (train.py and certify.py, run as a user
  runs them, so every step resumes), and writes one table of certified accuracy
  and ACR per mode (mean and spread over seeds) and one figure of the curves.
* ``--part throughput``: images per second of each mode's jitted train step on
  the same model and batch (median of timed steps after a warm-up), relative to
  ``gaussian``.

Usage::

  python benchmarks/training_modes.py --part certify --sigmas 0.25,0.5 --seeds 0,1 \\
      --outdir benchmarks/out/modes
  python benchmarks/training_modes.py --part throughput
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


# The papers' per-sigma settings: MACER uses lambda 12 at sigma 0.25 and 4 above.
def _overrides(mode: str, sigma: float) -> list[str]:
  if mode == "macer" and sigma >= 0.5:
    return ["--config.macer.lbd=4.0"]
  return []


CONFIGS = {
  "gaussian": "default",
  "smoothadv": "embedded_smoothadv",
  "consistency": "embedded_consistency",
  "macer": "embedded_macer",
}


def _run(cmd):
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def certify_part(args):
  from smoothjax import analysis, results

  runs = {}
  for sigma in args.sigmas:
    for mode in args.modes:
      for seed in args.seeds:
        name = f"{mode}_s{sigma:g}_seed{seed}"
        workdir = os.path.join(args.outdir, name)
        outfile = os.path.join(args.outdir, f"{name}.tsv")
        _run(
          [
            sys.executable,
            "train.py",
            f"--config={CONFIGS[mode]}",
            f"--workdir={workdir}",
            f"--config.noise_sd={sigma}",
            f"--config.seed={seed}",
            "--config.progress=False",
            *_overrides(mode, sigma),
          ]
        )
        t0 = time.time()
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
            f"--plot={outfile}.png",
          ]
        )
        runs[(sigma, mode, seed)] = (results.read_results(outfile), time.time() - t0)
  radii = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
  lines = [
    "| sigma | mode | seeds | "
    + " | ".join(f"r = {r:.2f}" for r in radii)
    + " | ACR (mean +- sd over seeds) |",
    "|---|---|---:|" + "---:|" * len(radii) + "---:|",
  ]
  summary = {}
  for sigma in args.sigmas:
    for mode in args.modes:
      res = [runs[(sigma, mode, s)][0] for s in args.seeds]
      acc = np.array([[analysis.certified_accuracy(r, rr) for rr in radii] for r in res])
      acrs = np.array([analysis.acr(r) for r in res])
      sd = f" +- {acrs.std(ddof=1):.3f}" if len(acrs) > 1 else ""
      summary[f"{mode}@{sigma:g}"] = {"acr": acrs.tolist(), "certified": acc.mean(0).tolist()}
      lines.append(
        f"| {sigma:g} | {mode} | {len(res)} | "
        + " | ".join(f"{100 * a:.1f}" for a in acc.mean(0))
        + f" | {acrs.mean():.3f}{sd} |"
      )
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(args.outdir, "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(args.outdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _plot(runs, args, os.path.join(args.outdir, "modes.png"))


def _plot(runs, args, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from smoothjax import analysis

  fig, axes = plt.subplots(1, len(args.sigmas), figsize=(5 * len(args.sigmas), 3.8), squeeze=False)
  grid = np.linspace(0, 2.0, 201)
  for ax, sigma in zip(axes[0], args.sigmas, strict=True):
    for mode in args.modes:
      curves = [
        [analysis.certified_accuracy(runs[(sigma, mode, s)][0], r) for r in grid]
        for s in args.seeds
      ]
      ax.plot(grid, np.mean(curves, 0), label=mode)
    ax.set_title(f"sigma = {sigma:g}, embedded MNIST, n = {args.n}")
    ax.set_xlabel("l2 radius")
    ax.set_ylabel("certified accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"figure: {path}")


def throughput_part(args):
  import jax

  from smoothjax import data, training
  from smoothjax.configs import default

  ds = data.load("embedded_mnist")
  split = ds.split("train")
  rows = []
  for mode in ["standard", "gaussian", "fgsm", "pgd", "smoothadv", "consistency", "macer"]:
    config = default.get_config()
    config.mode = mode
    config.batch_size = args.batch
    if mode in ("standard", "fgsm", "pgd"):
      config.noise_sd = 0.0
    trainer = training.make_trainer(config, ds.info, steps_per_epoch=100)
    state = trainer.state()
    images, labels = split.get(np.arange(args.batch))
    labels = labels.astype(np.int32)
    times = []
    for step in range(args.steps + 2):
      t0 = time.perf_counter()
      state, m = trainer.train_step(state, images, labels, jax.random.key(step), 0)
      jax.block_until_ready(m["loss"])
      if step >= 2:
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    rows.append((mode, args.batch / median, median))
  base = dict((r[0], r[1]) for r in rows)["gaussian"]
  print("| mode | settings | images/s | s/step | vs gaussian |")
  print("|---|---|---:|---:|---:|")
  settings = {
    "fgsm": "linf eps 0.3",
    "pgd": "linf, 10 steps",
    "smoothadv": "m 2, 2 steps",
    "consistency": "m 2",
    "macer": "m 16",
  }
  for mode, ips, med in rows:
    print(f"| {mode} | {settings.get(mode, '')} | {ips:,.0f} | {med:.3f} | {ips / base:.2f}x |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=["certify", "throughput"], required=True)
  parser.add_argument("--sigmas", default="0.25,0.5")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--modes", default=",".join(CONFIGS))
  parser.add_argument("--n", type=int, default=10_000)
  parser.add_argument("--skip", type=int, default=4)
  parser.add_argument("--outdir", default=os.path.join("benchmarks", "out", "modes"))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  args.sigmas = [float(s) for s in args.sigmas.split(",")]
  args.seeds = [int(s) for s in args.seeds.split(",")]
  args.modes = args.modes.split(",")
  os.makedirs(args.outdir, exist_ok=True)
  if args.part == "certify":
    certify_part(args)
  else:
    throughput_part(args)


if __name__ == "__main__":
  main()
