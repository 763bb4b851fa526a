"""Certification throughput against the pure forward-pass throughput of the same model.

For each model this measures, in one run and on the same device(s):

* ``forward``: a jitted ``model(x)`` on ``batch`` noise-free images already on the
  device, called ``ceil(n / batch)`` times, in images per second: the ceiling for any
  certification loop;
* ``sample_counts``: :func:`smoothjax.smoothing.sample_counts` for one input, ``n``
  noise samples in chunks of ``batch``, in noise samples (forward passes) per second;
* ``certify_batch[B]``: :func:`smoothjax.smoothing.certify_batch` over ``B`` inputs
  at once, ``n0 + n`` samples each, including the host-side Clopper-Pearson bounds;
* ``naive loop``: the loop of Cohen et al.'s PyTorch ``Smooth._sample_noise``: a Python
  loop over chunks, each drawing its noise with one ``jax.random.normal`` call on the
  device, running the model and argmax, then copying the predictions to the host and
  counting them with ``np.bincount``.

The ratio of a certification row to ``forward`` is the cost of everything that is not
the forward pass: noise generation, per-sample key derivation, counting and the chunk
loop. Weights are randomly initialised: throughput does not depend on their values
(only the class histogram does, and counting costs the same for any histogram).

Every method runs once to warm up (its time, minus the steady-state median, is reported
as compile time), then ``--repeats`` times, the methods taking turns within each repeat
so that load from other processes hits them alike; the table gives the median and best.
When several devices are visible the forward batch and the noise samples of
``sample_counts``/``certify_batch`` are sharded over a ``data`` mesh
(:func:`smoothjax.devices.parallel.make_mesh`); the naive loop stays on one device, as in
Cohen et al.'s code.

Usage::

  python benchmarks/certify_throughput.py                    # sizes chosen per backend
  python benchmarks/certify_throughput.py --models cnn --n 10000 --batch 1000 \\
      --inputs_per_step 1,8 --repeats 3 --json /tmp/throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import smoothjax as sj

_SHAPES = {
  "cnn": (28, 28, 1),
  "cnn_tiny": (28, 28, 1),
  "lenet": (28, 28, 1),
  "resnet20": (32, 32, 3),
  "resnet56": (32, 32, 3),
  "resnet110": (32, 32, 3),
  "resnet_tiny": (32, 32, 3),
}
_NUM_CLASSES = 10
# Default (n, batch) per backend: small enough for a 2-core CPU to finish in minutes,
# large enough on an accelerator for the chunk loop to reach its steady state.
_DEFAULTS = {
  "cpu": {"cnn": (10_000, 1000), "resnet": (2_000, 400)},
  "accelerator": {"cnn": (100_000, 1000), "resnet": (100_000, 400)},
}


@dataclasses.dataclass
class Row:
  """One measurement: ``samples`` forward passes per call, timed ``repeats`` times."""

  model: str
  method: str
  inputs: int
  samples: int
  batch: int
  times: list[float]
  first_call: float

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def best(self) -> float:
    return min(self.times)

  @property
  def compile_time(self) -> float:
    return max(self.first_call - self.median, 0.0)

  def rate(self, best: bool = False) -> float:
    return self.samples / (self.best if best else self.median)


def _time_interleaved(fns, repeats: int) -> list[tuple[float, list[float]]]:
  """(first call, later calls) wall times in seconds of each of ``fns``.

  Repeat ``r`` runs every function once before repeat ``r + 1`` starts, so a burst of
  load from other processes slows all methods alike instead of skewing their ratio.
  Each ``fn(r)`` must block until its work is done.
  """

  def timed(fn, r):
    start = time.perf_counter()
    fn(r)
    return time.perf_counter() - start

  firsts = [timed(fn, 0) for fn in fns]
  times = [[] for _ in fns]
  for r in range(1, repeats + 1):
    for fn, ts in zip(fns, times, strict=True):
      ts.append(timed(fn, r))
  return list(zip(firsts, times, strict=True))


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def environment() -> dict:
  """Versions and hardware of this run."""
  device = jax.devices()[0]
  return {
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    "jax": jax.__version__,
    "flax": flax.__version__,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "cpu_model": _cpu_model(),
    "machine": platform.machine(),
    "python": platform.python_version(),
    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }


def _naive_counts(model, x, key, *, sigma, num, batch, step):
  """Cohen et al.'s sampling loop: per chunk, noise, forward, argmax, host bincount."""
  counts = np.zeros(_NUM_CLASSES, np.int64)
  remaining, chunk = num, 0
  while remaining > 0:
    size = min(batch, remaining)
    preds = np.asarray(step(model, x, jax.random.fold_in(key, chunk), sigma, size))
    counts += np.bincount(preds, minlength=_NUM_CLASSES)
    remaining -= size
    chunk += 1
  return counts


@functools.partial(jax.jit, static_argnums=(4,))
def _naive_step(model, x, key, sigma, size):
  eps = sigma * jax.random.normal(key, (size, *x.shape), jnp.float32)
  return jnp.argmax(model(x[None] + eps), axis=-1)


@jax.jit
def _forward(model, x):
  return model(x)


def make_model(name: str, seed: int, dtype=jnp.float32) -> nnx.Module:
  """Model ``name`` with random weights, in eval mode, for inputs of ``_SHAPES[name]``."""
  shape = _SHAPES[name]
  channels = shape[-1]
  return sj.models.create(
    name,
    num_classes=_NUM_CLASSES,
    mean=(0.5,) * channels,
    std=(0.25,) * channels,
    rngs=nnx.Rngs(params=seed),
    dtype=dtype,
    input_shape=shape,
  )


def bench_model(name, *, n, n0, batch, inputs_per_step, repeats, sigma, seed, mesh, naive):
  """All rows for one model."""
  shape = _SHAPES[name]
  model = make_model(name, seed)
  base = jax.random.key(seed)
  data_key, count_key, cert_key, naive_key = (jax.random.fold_in(base, i) for i in range(4))
  num_inputs = max(inputs_per_step)
  xs = jax.random.uniform(data_key, (max(num_inputs, batch), *shape), jnp.float32)
  noise = sj.noise.Gaussian(sigma)

  # On a mesh the library rounds the chunk up to a multiple of the device count; so do we.
  shards = 1 if mesh is None else mesh.devices.size
  batch = -(-batch // shards) * shards
  fwd_batch = batch
  images = xs[:fwd_batch] if xs.shape[0] >= fwd_batch else jnp.resize(xs, (fwd_batch, *shape))
  fwd_model = model
  if mesh is not None:
    images = sj.parallel.shard_batch(np.asarray(images), mesh)
    fwd_model = sj.parallel.replicate(model, mesh)
  # As many batches as one sample_counts call runs, so both time the same amount of work;
  # dispatch is asynchronous, so only the last result is waited for.
  calls = -(-n // fwd_batch)

  def forward(r):
    del r
    for _ in range(calls):
      out = _forward(fwd_model, images)
    out.block_until_ready()

  # (method, inputs, forward passes per call, function of the repeat index)
  cases = [("forward", 0, calls * fwd_batch, forward)]

  def one_input(r):
    key = jax.random.fold_in(count_key, r)
    if mesh is None:
      counts = sj.smoothing.sample_counts(model, xs[0], key, noise=noise, num=n, batch_size=batch)
    else:
      counts = sj.smoothing.sample_counts_batch(
        model, xs[:1], key[None], noise=noise, num=n, batch_size=batch, mesh=mesh
      )
    assert int(counts.sum()) == n

  cases.append(("sample_counts", 1, n, one_input))

  for b in inputs_per_step:

    def certify(r, b=b):
      # Fresh keys per call: fold_in(base, repeat) then one per input, as certify.py does.
      call_key = jax.random.fold_in(jax.random.fold_in(cert_key, b), r)
      cert_keys = jax.vmap(lambda i, k=call_key: jax.random.fold_in(k, i))(jnp.arange(b))
      certs = sj.smoothing.certify_batch(
        model, xs[:b], cert_keys, noise=noise, n0=n0, n=n, alpha=0.001, batch_size=batch, mesh=mesh
      )
      assert len(certs) == b and all(int(c.counts.sum()) == n for c in certs)

    cases.append((f"certify_batch[{b}]", b, b * (n0 + n), certify))

  if naive:

    def naive_run(r):
      counts = _naive_counts(
        model,
        xs[0],
        jax.random.fold_in(naive_key, r),
        sigma=sigma,
        num=n,
        batch=batch,
        step=_naive_step,
      )
      assert counts.sum() == n

    cases.append(("naive loop", 1, n, naive_run))

  timings = _time_interleaved([fn for *_, fn in cases], repeats)
  return [
    Row(name, method, inputs, samples, batch, times, first)
    for (method, inputs, samples, _), (first, times) in zip(cases, timings, strict=True)
  ]


def table(rows: list[Row]) -> str:
  """Markdown table of the rows, with each row's rate relative to its model's forward pass."""
  lines = [
    "| model | method | inputs | forward passes / call | batch | median s | "
    "samples/s (median) | samples/s (best) | vs forward | compile s |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  forward = {r.model: r.rate() for r in rows if r.method == "forward"}
  for r in rows:
    ratio = r.rate() / forward[r.model]
    lines.append(
      f"| {r.model} | {r.method} | {r.inputs or '-'} | {r.samples:,} | {r.batch} | "
      f"{r.median:.3f} | {r.rate():,.0f} | {r.rate(best=True):,.0f} | {ratio:.0%} | "
      f"{r.compile_time:.2f} |"
    )
  return "\n".join(lines)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="cnn,resnet20", help="comma-separated model names")
  parser.add_argument("--n", type=int, default=None, help="estimation samples per input")
  parser.add_argument("--n0", type=int, default=100, help="selection samples per input")
  parser.add_argument("--batch", type=int, default=None, help="forward passes per chunk")
  parser.add_argument("--inputs_per_step", default="1,8", help="certify_batch sizes, e.g. 1,8")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sigma", type=float, default=0.25)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_naive", action="store_true", help="skip the naive loop baseline")
  parser.add_argument("--json", default=None, help="write the raw numbers to this file")
  args = parser.parse_args(argv)

  models = [m for m in args.models.split(",") if m]
  unknown = [m for m in models if m not in _SHAPES]
  if unknown:
    parser.error(f"unknown model(s) {unknown}; choose from {', '.join(_SHAPES)}")
  inputs_per_step = _ints(args.inputs_per_step)
  if not inputs_per_step or min(inputs_per_step) < 1 or args.repeats < 1:
    parser.error("--inputs_per_step and --repeats must be positive")

  env = environment()
  mesh = sj.parallel.make_mesh() if jax.device_count() > 1 else None
  defaults = _DEFAULTS["cpu" if env["backend"] == "cpu" else "accelerator"]
  print(
    f"# {env['date']}  jax {env['jax']}  backend {env['backend']}  "
    f"{env['devices']} x {env['device_kind']}  {env['cpu_count']} CPUs ({env['cpu_model']})  "
    f"load {env['load_average']}",
    flush=True,
  )
  rows, settings = [], {}
  for name in models:
    d_n, d_batch = defaults["resnet" if name.startswith("resnet") else "cnn"]
    n = args.n or d_n
    batch = args.batch or d_batch
    settings[name] = {"n": n, "n0": args.n0, "batch": batch}
    print(f"## {name}: n={n} n0={args.n0} batch={batch}", file=sys.stderr, flush=True)
    rows += bench_model(
      name,
      n=n,
      n0=args.n0,
      batch=batch,
      inputs_per_step=inputs_per_step,
      repeats=args.repeats,
      sigma=args.sigma,
      seed=args.seed,
      mesh=mesh,
      naive=not args.no_naive,
    )
  print(table(rows))
  if hasattr(os, "getloadavg"):
    # Other processes competing for the CPU show up here; rerun if this is high.
    env["load_average_end"] = list(os.getloadavg())
    print(f"\nload average at the end: {env['load_average_end']}")
  if args.json:
    record = {
      "environment": env,
      "argv": sys.argv,
      "settings": settings,
      "rows": [
        {
          **dataclasses.asdict(r),
          "median": r.median,
          "samples_per_s": r.rate(),
          "compile_time": r.compile_time,
        }
        for r in rows
      ],
    }
    with open(args.json, "w") as f:
      json.dump(record, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
