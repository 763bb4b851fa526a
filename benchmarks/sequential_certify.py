"""Sequential (adaptive) CERTIFY against fixed-n CERTIFY on the demo model.

Certifies the embedded MNIST test digits (every ``--skip``-th) with the demo model
(smoothjax/configs/default.py, Gaussian sigma 0.25; trained here with train.py unless
``--workdir`` holds it), twice in one run with the same keys:

* fixed-n CERTIFY (Cohen et al. 2019): ``n0 = 100``, ``n = 100,000``, alpha 0.001;
* sequential CERTIFY (``smoothing.certify_adaptive_batch``) in grid mode, radii 0,
  0.25, 0.5, 0.75, ``n_max = 100,000``, the same ``n0`` and alpha.

It prints the certified accuracy of both at each radius, the forward passes and time
each spent, and why the sequential run stopped each input, and writes a JSON file of
per-input results and a plot (certified accuracy curves, and the distribution of the
samples spent). Results are saved after every group of inputs, so a rerun resumes.

Usage::

  python benchmarks/sequential_certify.py --workdir demo_output/workdir --skip 5 \\
      --outdir benchmarks/out/sequential
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def _train(workdir: str) -> None:
  cmd = [
    sys.executable,
    os.path.join(ROOT, "train.py"),
    "--config=default",
    f"--workdir={workdir}",
  ]
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def _load(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {int(k): v for k, v in json.load(f).items()}


def _save(path, rows):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({str(k): v for k, v in sorted(rows.items())}, f)
  os.replace(tmp, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=os.path.join(ROOT, "demo_output", "workdir"))
  parser.add_argument("--outdir", default=os.path.join(ROOT, "benchmarks", "out", "sequential"))
  parser.add_argument("--figure", default=os.path.join(ROOT, "docs", "sequential_certify.png"))
  parser.add_argument("--skip", type=int, default=5)
  parser.add_argument("--n0", type=int, default=100)
  parser.add_argument("--n_max", type=int, default=100_000)
  parser.add_argument("--alpha", type=float, default=0.001)
  parser.add_argument("--radii", default="0,0.25,0.5,0.75")
  parser.add_argument("--batch", type=int, default=1000)
  parser.add_argument("--inputs_per_step", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  import jax
  import numpy as np

  from smoothjax import data as data_lib
  from smoothjax import smoothing
  from smoothjax.noise import Gaussian
  from smoothjax.workdir import checkpoints as checkpointing

  if not os.path.exists(os.path.join(args.workdir, "config.json")):
    _train(args.workdir)
  model, config, _, meta = checkpointing.restore_model(args.workdir)
  noise = Gaussian(float(config.noise_sd))
  split = data_lib.load(config.dataset).split("test")
  indices = np.arange(0, len(split), args.skip)
  radii = tuple(float(r) for r in args.radii.split(","))
  os.makedirs(args.outdir, exist_ok=True)
  paths = {m: os.path.join(args.outdir, f"{m}.json") for m in ("fixed", "sequential")}
  rows = {m: _load(p) for m, p in paths.items()}
  base_key = jax.random.key(args.seed)
  common = dict(noise=noise, n0=args.n0, alpha=args.alpha, batch_size=args.batch)
  from tqdm.auto import tqdm

  todo = [i for i in indices if int(i) not in rows["fixed"] or int(i) not in rows["sequential"]]
  with tqdm(total=len(indices), initial=len(indices) - len(todo), unit="input") as bar:
    for start in range(0, len(todo), args.inputs_per_step):
      idx = np.array(todo[start : start + args.inputs_per_step])
      images, labels = split.get(idx)
      keys = jax.vmap(jax.random.fold_in, (None, 0))(base_key, idx.astype(np.uint32))
      for method in ("fixed", "sequential"):
        t0 = time.perf_counter()
        if method == "fixed":
          certs = smoothing.certify_batch(model, images, keys, n=args.n_max, **common)
        else:
          certs = smoothing.certify_adaptive_batch(
            model, images, keys, n_max=args.n_max, radii=radii, **common
          )
        seconds = (time.perf_counter() - t0) / len(idx)
        for i, label, c in zip(idx, labels, certs, strict=True):
          rows[method][int(i)] = {
            "label": int(label),
            "predict": c.prediction,
            "radius": c.radius,
            "samples": c.samples,
            "stop": c.stop,
            "seconds": seconds,
          }
        _save(paths[method], rows[method])
      bar.update(len(idx))

  keys_ = sorted(int(i) for i in indices)
  summary = {}
  for method in ("fixed", "sequential"):
    r = [rows[method][i] for i in keys_]
    radius = np.array([x["radius"] for x in r])
    correct = np.array([x["predict"] == x["label"] for x in r])
    passes = sum(args.n0 + x["samples"] for x in r)
    summary[method] = {
      "certified_accuracy": {f"{g:g}": float((correct & (radius >= g)).mean()) for g in radii},
      "forward_passes": int(passes),
      "seconds": float(sum(x["seconds"] for x in r)),
      "samples": [x["samples"] for x in r],
      "radius": radius.tolist(),
      "correct": correct.tolist(),
    }
  stops = collections.Counter(rows["sequential"][i]["stop"] for i in keys_)
  fixed, seq = summary["fixed"], summary["sequential"]
  print(
    f"\n{len(keys_)} digits (every {args.skip}th of the embedded test split), model epoch "
    f"{meta['epoch']}, sigma {noise.sigma:g}, alpha {args.alpha:g}, n0 {args.n0}, "
    f"n = n_max = {args.n_max:,}"
  )
  print("\n| radius | fixed-n CERTIFY (%) | sequential CERTIFY (%) | difference (points) |")
  print("|---:|---:|---:|---:|")
  for g in radii:
    a = 100 * fixed["certified_accuracy"][f"{g:g}"]
    b = 100 * seq["certified_accuracy"][f"{g:g}"]
    print(f"| {g:g} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
  ratio = fixed["forward_passes"] / seq["forward_passes"]
  print("\n| | forward passes (n0 + estimation) | per input | seconds |")
  print("|---|---:|---:|---:|")
  for name, s in (("fixed-n CERTIFY", fixed), ("sequential CERTIFY", seq)):
    per = s["forward_passes"] / len(keys_)
    print(f"| {name} | {s['forward_passes']:,} | {per:,.0f} | {s['seconds']:.0f} |")
  print(f"\n{ratio:.1f}x fewer forward passes, {fixed['seconds'] / seq['seconds']:.1f}x less time")
  samples = np.array(seq["samples"])
  print(
    "samples per input: median "
    f"{np.median(samples):,.0f}, quartiles {np.percentile(samples, 25):,.0f} - "
    f"{np.percentile(samples, 75):,.0f}, max {samples.max():,}"
  )
  print("stops: " + ", ".join(f"{k} {v}" for k, v in stops.most_common()))
  summary["stops"] = dict(stops)
  summary["settings"] = {**vars(args), "epoch": int(meta["epoch"]), "count": len(keys_)}
  with open(os.path.join(args.outdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  _plot(summary, radii, args.figure)
  print(f"plot: {args.figure}")


def _plot(summary, radii, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
  grid = np.linspace(0, max(radii) * 1.35, 200)
  for method, style in (("fixed", "-"), ("sequential", "--")):
    s = summary[method]
    radius, correct = np.array(s["radius"]), np.array(s["correct"])
    curve = [(correct & (radius >= g)).mean() for g in grid]
    label = f"{method} ({s['forward_passes'] / len(radius):,.0f} passes/input)"
    left.plot(grid, curve, style, label=label)
  for g in radii:
    left.axvline(g, color="0.85", lw=0.8, zorder=0)
  left.set_xlabel("l2 radius")
  left.set_ylabel("certified accuracy")
  left.legend(fontsize=8)
  samples = np.array(summary["sequential"]["samples"])
  bins = np.logspace(2, np.log10(max(samples.max(), 1000)) + 0.05, 30)
  right.hist(samples, bins=bins, color="C1")
  right.set_xscale("log")
  right.set_xlabel("estimation samples spent (sequential)")
  right.set_ylabel("inputs")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
