"""Generation from standard, Gaussian-noise, SmoothAdv and fixed-point fine-tuned models.

Trains on the embedded MNIST digits (train.py, as a user runs it, so every step
resumes):

* ``judge``: the field's LeNet, standard training, another seed: an independent
  classifier (another architecture) that scores every model's images;
* ``standard``: the demo CNN, clean training;
* ``gaussian``: the demo CNN under Gaussian noise, sigma 0.5 (Cohen et al.);
* ``smoothadv``: SmoothAdv (smoothjax/configs/embedded_smoothadv.py, sigma 0.25);
* ``fixedpoint``: the standard model fine-tuned with the fixed-point objective
  (``mode=fixedpoint``, ``init_from`` the standard run).

Then generate.py draws ``--per_class`` images of every class with each model
(smoothed with ``--m`` samples for the noise-trained models, the base classifier
for the others) from the same seeds of each of ``--seed_dists``: Santurkar et
al.'s class-conditional Gaussians, and real test digits of any class (which the
judge mostly sees as their own class, so a model must change them into the target
for the judge to agree). It writes one table (judge accuracy on the images and on
their seeds, the generating model's confidence, the l2 distance to the seeds) and
one grid per model and seed distribution into ``--figures``.

Usage::

  python benchmarks/generation.py --outdir benchmarks/out/generation --figures docs/generation
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def _run(cmd):
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--outdir", default="benchmarks/out/generation")
  parser.add_argument("--figures", default="docs/generation")
  parser.add_argument("--epochs", type=int, default=6)
  parser.add_argument("--finetune_epochs", type=int, default=1)
  parser.add_argument("--per_class", type=int, default=8)
  parser.add_argument("--m", type=int, default=16)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--eps", type=float, default=30.0)
  parser.add_argument("--step_size", type=float, default=0.5)
  parser.add_argument("--loss", default="ce")
  parser.add_argument("--seed_dists", default="class_gaussian,real")
  args = parser.parse_args()
  out = os.path.join(ROOT, args.outdir)
  py = sys.executable
  common = [f"--config.num_epochs={args.epochs}", "--config.progress=False"]

  def workdir(name):
    return os.path.join(out, name)

  def train(name, config, *overrides):
    started = time.time()
    _run([py, "train.py", f"--config={config}", f"--workdir={workdir(name)}", *common, *overrides])
    return time.time() - started

  seconds = {
    "judge": train(
      "judge",
      "default",
      "--config.model=lenet",
      "--config.mode=standard",
      "--config.noise_sd=0.0",
      "--config.seed=1",
    ),
    "standard": train(
      "standard", "default", "--config.mode=standard", "--config.noise_sd=0.0"
    ),
    "gaussian": train("gaussian", "default", "--config.noise_sd=0.5"),
    "smoothadv": train("smoothadv", "embedded_smoothadv"),
  }
  started = time.time()
  _run(
    [
      py,
      "train.py",
      "--config=default",
      f"--workdir={workdir('fixedpoint')}",
      "--config.mode=fixedpoint",
      "--config.noise_sd=0.0",
      f"--config.init_from={workdir('standard')}",
      f"--config.num_epochs={args.finetune_epochs}",
      "--config.progress=False",
      "--config.learning_rate=0.005",
      "--config.warmup_epochs=0",
      "--config.fixedpoint.remat=False",
    ]
  )
  seconds["fixedpoint"] = time.time() - started

  models = {"standard": 0, "gaussian": args.m, "smoothadv": args.m, "fixedpoint": 0}
  summaries = {}
  os.makedirs(os.path.join(ROOT, args.figures), exist_ok=True)
  for seed_dist in args.seed_dists.split(","):
    for name, m in models.items():
      gen = os.path.join(out, f"generated_{name}_{seed_dist}")
      started = time.time()
      _run(
        [
          py,
          "generate.py",
          f"--workdir={workdir(name)}",
          f"--outdir={gen}",
          f"--per_class={args.per_class}",
          f"--m={m}",
          f"--loss={args.loss}",
          f"--steps={args.steps}",
          f"--eps={args.eps}",
          f"--step_size={args.step_size}",
          f"--judge={workdir('judge')}",
          "--show_seeds",
          f"--seed_dist={seed_dist}",
        ]
      )
      with open(os.path.join(gen, "summary.json")) as f:
        summary = json.load(f)["overall"]
      summary.update(seconds=time.time() - started, m=m, seed_dist=seed_dist, model=name)
      summaries[(name, seed_dist)] = summary
      figure = os.path.join(ROOT, args.figures, f"{name}_{seed_dist}.png")
      shutil.copy(os.path.join(gen, "grid.png"), figure)

  metrics = {}
  for name in [*models, "judge"]:
    with open(os.path.join(workdir(name), "metrics.jsonl")) as f:
      metrics[name] = json.loads(f.read().splitlines()[-1])
  lines = [
    f"Loss {args.loss}, l2 eps {args.eps:g}, {args.steps} steps of {args.step_size:g}, "
    f"{args.per_class} images per class. Judge: LeNet, clean test accuracy "
    f"{100 * metrics['judge']['test_accuracy']:.1f}%.",
    "",
    "| model | clean test acc | generated with | seeds | judge acc (images) | judge acc (seeds) "
    "| confidence | l2 to seed |",
    "|---|---:|---|---|---:|---:|---:|---:|",
  ]
  for (name, seed_dist), s in summaries.items():
    how = f"smoothed, m = {s['m']}" if s["m"] else "base classifier"
    lines.append(
      f"| {name} | {100 * metrics[name]['test_accuracy']:.1f} | {how} | {seed_dist} "
      f"| {100 * s['judge_accuracy']:.1f} | {100 * s['judge_accuracy_seeds']:.1f} "
      f"| {s['confidence']:.3f} | {s['l2_to_seed']:.2f} |"
    )
  # Seconds of this invocation (a resumed step costs next to nothing).
  lines += [
    "",
    "Seconds (this run): " + ", ".join(f"train {k} {v:.0f}" for k, v in seconds.items()),
  ]
  lines[-1] += "; " + ", ".join(
    f"generate {k[0]}/{k[1]} {s['seconds']:.0f}" for k, s in summaries.items()
  )
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
