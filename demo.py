"""The main job, end to end on the embedded MNIST digits: train -> certify -> table + plot.

  python demo.py [--outdir demo_output] [--n 10000] [--skip 4] [--epochs E]

Runs the two programs exactly as a user would, printing each command first:
trains the small CNN under Gaussian noise (smoothjax/configs/default.py), certifies every
`skip`-th embedded test digit with CERTIFY (n0 = 100, n noise samples, alpha =
0.001), then prints the certified-accuracy table and writes the plot. Rerunning
resumes both steps; a rerun with more --epochs trains on and certifies the new
model into a new file (the certificates are named by epochs and n). About 5
minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SIGMA = 0.25  # smoothjax/configs/default.py's noise_sd


class _Error(Exception):
  """A bad argument: printed as one ``error:`` line, exit status 2."""


def _run(cmd: list[str]) -> None:
  print("\n$ " + shlex.join(cmd), flush=True)
  proc = subprocess.run(cmd, check=False)
  if proc.returncode:
    # The program printed its own error line; its status says whose fault it was.
    sys.exit(proc.returncode)


def _default_epochs() -> int:
  from smoothjax.configs import default

  return int(default.get_config().num_epochs)


def certify_name(n: int, epochs: int) -> str:
  """The demo's certificate file: one per model (epochs trained) and number of samples.

  A rerun with other settings writes a new file instead of being refused for
  mixing them with the old ones, which demo.py offers no option to avoid.
  """
  return f"certify_sigma{SIGMA:g}_n{n}_epochs{epochs}.tsv"


def _check_outdir(outdir: str) -> None:
  """An --outdir that is (or would be under) a file, or not writable, is refused before any work."""
  if not outdir:
    raise _Error("--outdir is empty; pass a folder, e.g. --outdir demo_output")
  try:
    st = os.stat(outdir)
  except (FileNotFoundError, NotADirectoryError):
    st = None  # A parent that is a file is reported below.
  except OSError as e:
    raise _Error(f"--outdir {outdir}: {e.strerror}; choose another folder") from None
  if st is not None and not stat.S_ISDIR(st.st_mode):
    raise _Error(f"--outdir {outdir} is a file, not a folder; choose another folder")
  parent = os.path.abspath(outdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise _Error(f"--outdir {outdir}: {parent} is a file, not a folder; choose another folder")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise _Error(f"--outdir {outdir}: {parent} is not writable; choose another folder")


def _parse(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

  def fail(message):
    raise _Error(message)

  parser.error = fail  # One line, not argparse's usage block.
  parser.add_argument("--outdir", default="demo_output", help="folder for every output")
  parser.add_argument("--n", type=int, default=10_000, help="noise samples per certificate")
  parser.add_argument("--skip", type=int, default=4, help="certify every skip-th test digit")
  parser.add_argument("--epochs", type=int, default=None, help="override num_epochs")
  args = parser.parse_args(argv)
  if args.n < 1:
    raise _Error(f"--n must be >= 1, got {args.n}; e.g. --n 10000")
  if args.skip < 1:
    raise _Error(f"--skip must be >= 1, got {args.skip}; e.g. --skip 4")
  if args.epochs is not None and args.epochs < 1:
    raise _Error(f"--epochs must be >= 1, got {args.epochs}; e.g. --epochs 6")
  _check_outdir(args.outdir)
  return args


def main(argv: list[str] | None = None) -> None:
  try:
    args = _parse(argv)
  except _Error as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  epochs = args.epochs if args.epochs is not None else _default_epochs()
  workdir = os.path.join(args.outdir, "workdir")
  outfile = os.path.join(args.outdir, certify_name(args.n, epochs))
  train = [
    sys.executable,
    os.path.join(HERE, "train.py"),
    "--config=default",
    f"--workdir={workdir}",
    f"--config.num_epochs={epochs}",
  ]
  _run(train)
  _run(
    [
      sys.executable,
      os.path.join(HERE, "certify.py"),
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
