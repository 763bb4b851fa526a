"""certify.py as a multi-process JAX job: 1, 2, 4 processes on the same machine.

Runs the same certify.py command (the demo model, every ``--skip``-th embedded test
digit, CERTIFY with ``--n0``/``--n``) as a job of each of ``--processes`` processes on
127.0.0.1, each with one CPU device, all of them sharing the machine's cores. For each
it reports the wall time of the job, the certification time of the busiest process
(the sum of the ``time`` column over its share: what it spent certifying), and the
rest: startup (JAX, the checkpoint, compilation), the processes' meetings and the merge.
It checks that each job's merged file equals the one-process file row for row.

Usage::

  python benchmarks/multiprocess_certify.py --workdir demo_output/workdir --skip 10 \\
      --n 10000 --processes 1,2,4
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def _run(cmd, env=None):
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _job(cmd, processes: int) -> float:
  """Runs ``cmd`` as a job of ``processes`` processes; returns its wall time in seconds."""
  port = _port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = []
  t0 = time.perf_counter()
  for i in range(processes):
    if processes > 1:
      env = dict(
        env,
        SMOOTHJAX_DISTRIBUTED="1",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(i),
      )
    out = subprocess.DEVNULL if i else None
    procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL))
  codes = [p.wait() for p in procs]
  if any(codes):
    raise SystemExit(f"the {processes}-process job failed: exit codes {codes}")
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=os.path.join(ROOT, "demo_output", "workdir"))
  parser.add_argument("--outdir", default=os.path.join(ROOT, "benchmarks", "out", "multiprocess"))
  parser.add_argument("--processes", default="1,2,4")
  parser.add_argument("--skip", type=int, default=10)
  parser.add_argument("--n0", type=int, default=100)
  parser.add_argument("--n", type=int, default=10_000)
  parser.add_argument("--batch", type=int, default=1000)
  args = parser.parse_args()

  import numpy as np

  from smoothjax import results

  if not os.path.exists(os.path.join(args.workdir, "config.json")):
    _run(
      [
        sys.executable,
        "train.py",
        "--config=default",
        f"--workdir={args.workdir}",
      ]
    )
  shutil.rmtree(args.outdir, ignore_errors=True)
  os.makedirs(args.outdir)
  counts = [int(p) for p in args.processes.split(",")]
  rows, reference = [], None
  for count in counts:
    outfile = os.path.join(args.outdir, f"p{count}.tsv")
    cmd = [
      sys.executable,
      "certify.py",
      f"--workdir={args.workdir}",
      f"--outfile={outfile}",
      f"--n0={args.n0}",
      f"--n={args.n}",
      f"--batch={args.batch}",
      f"--skip={args.skip}",
    ]
    wall = _job(cmd, count)
    res = results.read_results(outfile)
    seconds = np.asarray(res.extra["time"])
    order = np.argsort(res.idx)
    busiest = max(seconds[order][i::count].sum() for i in range(count))
    key = np.stack([res.idx, res.predict, res.correct, np.round(res.radius, 4)], axis=1)[order]
    same = reference is None or np.array_equal(key, reference)
    reference = key if reference is None else reference
    rows.append((count, wall, busiest, wall - busiest, len(res.idx) / wall, same))
  print(
    f"\n{len(reference)} digits (every {args.skip}th), n0 = {args.n0}, n = {args.n:,}, "
    f"batch {args.batch}, {os.cpu_count()} CPU cores shared by the processes"
  )
  print(
    "\n| processes | wall (s) | certifying, busiest process (s) | the rest (s) "
    "| inputs/s | merged = 1-process file |"
  )
  print("|---:|---:|---:|---:|---:|---|")
  for count, wall, busiest, rest, rate, same in rows:
    print(f"| {count} | {wall:.1f} | {busiest:.1f} | {rest:.1f} | {rate:.2f} | {same} |")


if __name__ == "__main__":
  main()
