"""The main job, end to end on the embedded MNIST digits: train -> certify -> table + plot.

  python demo.py [--outdir demo_output] [--n 10000] [--skip 4]

Runs the two programs exactly as a user would, printing each command first:
trains the small CNN under Gaussian noise (configs/default.py), certifies every
`skip`-th embedded test digit with CERTIFY (n0 = 100, n noise samples, alpha =
0.001), then prints the certified-accuracy table and writes the plot. Rerunning
resumes both steps. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys


def _run(cmd: list[str]) -> None:
  print("\n$ " + shlex.join(cmd), flush=True)
  proc = subprocess.run(cmd, check=False)
  if proc.returncode:
    sys.exit(proc.returncode)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--outdir", default="demo_output")
  parser.add_argument("--n", type=int, default=10_000, help="noise samples per certificate")
  parser.add_argument("--skip", type=int, default=4, help="certify every skip-th test digit")
  parser.add_argument("--epochs", type=int, default=None, help="override num_epochs")
  args = parser.parse_args()
  here = os.path.dirname(os.path.abspath(__file__))
  workdir = os.path.join(args.outdir, "workdir")
  outfile = os.path.join(args.outdir, "certify_sigma0.25.tsv")
  train = [
    sys.executable,
    os.path.join(here, "train.py"),
    f"--config={os.path.join(here, 'configs', 'default.py')}",
    f"--workdir={workdir}",
  ]
  if args.epochs:
    train.append(f"--config.num_epochs={args.epochs}")
  _run(train)
  _run(
    [
      sys.executable,
      os.path.join(here, "certify.py"),
      f"--workdir={workdir}",
      f"--outfile={outfile}",
      "--n0=100",
      f"--n={args.n}",
      "--alpha=0.001",
      "--batch=1000",
      f"--skip={args.skip}",
      "--inputs_per_step=10",
      f"--plot={os.path.join(args.outdir, 'certified_accuracy.png')}",
    ]
  )
  print(
    f"\nresults in {args.outdir}/: the trained run (workdir/), per-digit certificates "
    f"({os.path.basename(outfile)}) and the plot (certified_accuracy.png)"
  )


if __name__ == "__main__":
  main()
