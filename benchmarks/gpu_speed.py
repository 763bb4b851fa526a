"""Certification and training speed by compute dtype and folded BatchNorm, in one run.

Everything is measured on the machine the script runs on (sizes chosen per backend),
with randomly initialised models (``cnn`` on 28x28x1, ``resnet20``/``resnet110`` on
32x32x3, 10 classes): throughput does not depend on the weights.

* **certification**: :func:`smoothjax.smoothing.certify_batch` (Gaussian noise,
  sigma 0.25) of ``--inputs`` random images at once, ``n0 + n`` noise samples each,
  host-side bounds included, for each compute dtype (``float32``, ``bfloat16``) and
  BatchNorm folding (off, on) of the model, made by
  :func:`smoothjax.models.transforms.for_inference`: noise samples (forward passes) per
  second, seconds per image, and the ratio to the forward-pass floor;
* **forward floor**: the jitted forward pass of the same model variant on noise-free
  images already on the device, at the same batch size, for ``n0 + n`` images (one
  input's worth) per call, in images per second;
* **training**: images per second of the library's jitted train step
  (``training.make_trainer(...).train_step``: augmentation, the mode's loss, backward
  pass and optimiser update) on random images for modes ``standard`` and ``noise``
  (Gaussian augmentation) and ``compute_dtype`` ``float32`` and ``bfloat16`` (mixed
  precision: float32 parameters, bfloat16 activations), with ``crop_flip`` augmentation
  for the 32x32 models, as smoothjax/configs/default.py otherwise sets it;
* ``--accuracy``: the embedded MNIST digits trained with
  :func:`smoothjax.training.train_and_evaluate` once in float32 and once in bfloat16
  (same seed), their clean test accuracy and accuracy under the training noise, the
  training time, and the clean test accuracy of each trained model evaluated in every
  (dtype, fold) variant, with its agreement with the float32 unfolded predictions.

The certification step size is :func:`smoothjax.devices.sizing.auto_batch` of each model
variant on accelerators (``--batch`` overrides it) and small fixed sizes on CPUs;
``n`` is 100,000 on accelerators. Every measurement runs once to warm up (its time minus
the steady-state median is reported as compile time), then ``--repeats`` times, the
variants of one model taking turns within each repeat so that load from other processes
hits them alike (certify_throughput.py's timing, imported from there); tables give
medians and bests. ``--precision`` and ``--deterministic`` set the process's numerics
(:func:`smoothjax.devices.numerics.configure`) before anything is computed, so running the script
twice measures their cost.

Usage::

  python benchmarks/gpu_speed.py                                  # sizes chosen per backend
  python benchmarks/gpu_speed.py --precision highest --deterministic --json highest.json
  python benchmarks/gpu_speed.py --models cnn --dtypes float32,bfloat16 --fold off,on \\
      --n 10000 --batch 1000 --inputs 1 --repeats 3 --skip_training --accuracy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):  # configs/ and certify_throughput.py, wherever this is run from
  if _path not in sys.path:
    sys.path.insert(0, _path)

import certify_throughput as ct  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import smoothjax as sj  # noqa: E402
from smoothjax import data as data_lib  # noqa: E402
from smoothjax import training  # noqa: E402
from smoothjax.configs import default as default_config  # noqa: E402
from smoothjax.devices import numerics, parallel, sizing  # noqa: E402
from smoothjax.models import transforms  # noqa: E402
from smoothjax.workdir import checkpoints as checkpointing  # noqa: E402

_MODELS = ("cnn", "resnet20", "resnet110")
_FOLDS = {"off": False, "on": True}
_ALPHA = 0.001
# (n, certification step) on CPUs: a default run of all three models takes minutes on 2
# cores. On accelerators n is 100,000 and the step is sizing.auto_batch's.
_CPU_CERT = {"cnn": (10_000, 1000), "resnet20": (2_000, 400), "resnet110": (300, 200)}
_ACCEL_N = 100_000
# Training batch and steps per timed call; CPU batches per model.
_CPU_TRAIN_BATCH = {"cnn": 64, "resnet110": 16}
_CPU_TRAIN_BATCH_RESNET = 32
_ACCEL_TRAIN_BATCH = 256
_TRAIN_STEPS = {"cpu": 3, "accelerator": 20}
_REPEATS = {"cpu": 2, "accelerator": 3}


@dataclasses.dataclass
class CertRow(ct.Row):
  """Certification or forward-floor timings of one (model, dtype, fold) variant."""

  dtype: str = "float32"
  fold: bool = False


@dataclasses.dataclass
class TrainRow(ct.Row):
  """Train-step timings: ``samples`` images per call (``steps`` steps of ``batch``)."""

  dtype: str = "float32"
  augment: str = "none"
  steps: int = 1


def _variant_name(dtype: str, fold: bool) -> str:
  return f"{dtype} {'folded' if fold else 'unfolded'}"


def bench_certification(name, *, variants, n, n0, batch, inputs, repeats, sigma, seed, mesh):
  """Forward floor and certify_batch rows of every (dtype, fold) variant of model ``name``."""
  shape = ct._SHAPES[name]
  model = ct.make_model(name, seed)
  noise = sj.noise.Gaussian(sigma)
  base = jax.random.key(seed)
  data_key, image_key, cert_key = (jax.random.fold_in(base, i) for i in range(3))
  xs = jax.random.uniform(data_key, (inputs, *shape), jnp.float32)
  shards = 1 if mesh is None else mesh.devices.size
  prepared = []
  # Every step size first, while no images take device memory.
  for dtype, fold in variants:
    v = transforms.for_inference(model, fold=fold, dtype=dtype)
    step = batch if batch else sizing.auto_batch(v, shape)
    step = -(-step // shards) * shards  # the library rounds to the device count too
    prepared.append((dtype, fold, v, step))

  images = {}

  def images_of(size):
    if size not in images:
      x = jax.random.uniform(image_key, (size, *shape), jnp.float32)
      images[size] = x if mesh is None else sj.parallel.shard_batch(np.asarray(x), mesh)
    return images[size]

  cases = []  # (dtype, fold, method, inputs, forward passes per call, step, fn)
  for index, (dtype, fold, v, step) in enumerate(prepared):
    fwd_model = v if mesh is None else sj.parallel.replicate(v, mesh)
    x = images_of(step)
    calls = -(-(n0 + n) // step)  # one input's worth of forward passes

    def forward(r, fwd_model=fwd_model, x=x, calls=calls):
      del r
      for _ in range(calls):
        out = ct._forward(fwd_model, x)
      out.block_until_ready()

    def certify(r, v=v, step=step, index=index):
      call_key = jax.random.fold_in(jax.random.fold_in(cert_key, index), r)
      keys = jax.random.split(call_key, inputs)
      certs = sj.smoothing.certify_batch(
        v, xs, keys, noise=noise, n0=n0, n=n, alpha=_ALPHA, batch_size=step, mesh=mesh
      )
      assert len(certs) == inputs and all(int(c.counts.sum()) == n for c in certs)

    cases.append((dtype, fold, "forward", 0, calls * step, step, forward))
    cases.append(
      (dtype, fold, f"certify_batch[{inputs}]", inputs, inputs * (n0 + n), step, certify)
    )

  timings = ct._time_interleaved([c[-1] for c in cases], repeats)
  return [
    CertRow(name, method, k, samples, step, times, first, dtype=dtype, fold=fold)
    for (dtype, fold, method, k, samples, step, _), (first, times) in zip(
      cases, timings, strict=True
    )
  ]


def _train_config(name, *, mode, dtype, batch, sigma, seed, precision, deterministic):
  """smoothjax/configs/default.py for model ``name`` in ``mode`` and ``dtype``, checked."""
  config = default_config.get_config()
  config.model = name
  config.mode = mode
  config.noise_sd = 0.0 if mode == "standard" else sigma
  config.batch_size = batch
  config.augment = "crop_flip" if ct._SHAPES[name][0] == 32 else config.augment
  config.compute_dtype = dtype
  config.precision = precision
  config.deterministic = deterministic
  config.seed = seed
  config.progress = False
  training.validate_config(config)
  return config


def bench_training(name, *, modes, dtypes, batch, steps, repeats, sigma, seed, precision, mesh):
  """Train-step rows of model ``name`` for every (mode, dtype), on one random batch."""
  shape = ct._SHAPES[name]
  channels = shape[-1]
  info = data_lib.DatasetInfo(
    name="random",
    num_classes=ct._NUM_CLASSES,
    image_shape=shape,
    mean=(0.5,) * channels,
    std=(0.25,) * channels,
    split_sizes={"train": 100 * batch},
  )
  rng = np.random.default_rng(seed)
  host_images = rng.random((batch, *shape), dtype=np.float32)
  host_labels = rng.integers(0, ct._NUM_CLASSES, batch).astype(np.int32)
  images, labels = parallel.shard_batch((host_images, host_labels), mesh)
  epoch = jnp.asarray(0, jnp.int32)
  cases = []  # (mode, dtype, augment, fn)
  for mode in modes:
    for dtype in dtypes:
      config = _train_config(
        name,
        mode=mode,
        dtype=dtype,
        batch=batch,
        sigma=sigma,
        seed=seed,
        precision=precision,
        deterministic=False,
      )
      trainer = training.make_trainer(config, info, steps_per_epoch=100)
      # The training loop's own placement: replicated state, batch sharded over `data`.
      run = {"state": parallel.replicate(trainer.state(), mesh), "step": 0}
      key = jax.random.fold_in(jax.random.key(seed), len(cases))

      def train(r, trainer=trainer, run=run, key=key, what=f"{name} {mode} {dtype}"):
        del r
        for _ in range(steps):
          step_key = jax.random.fold_in(key, run["step"])
          run["state"], metrics = trainer.train_step(run["state"], images, labels, step_key, epoch)
          run["step"] += 1
        jax.block_until_ready((run["state"], metrics))
        if not bool(metrics["finite"]):
          raise RuntimeError(f"{what}: non-finite loss at step {run['step']}")

      cases.append((mode, dtype, config.augment, train))
  timings = ct._time_interleaved([c[-1] for c in cases], repeats)
  return [
    TrainRow(
      name, mode, 0, steps * batch, batch, times, first, dtype=dtype, augment=aug, steps=steps
    )
    for (mode, dtype, aug, _), (first, times) in zip(cases, timings, strict=True)
  ]


def _predictions(model, images, batch=500):
  """The model's classes for ``images``, ``batch`` at a time."""
  chunks = [ct._forward(model, images[i : i + batch]) for i in range(0, len(images), batch)]
  return np.concatenate([np.asarray(jnp.argmax(c, -1)) for c in chunks])


def accuracy_check(*, model_name, epochs, dtypes, variants, sigma, seed, precision, deterministic):
  """Trains ``model_name`` on the embedded digits once per dtype; accuracies and times."""
  test = data_lib.load("embedded_mnist").split("test")
  test_images, test_labels = test.get(np.arange(len(test)))
  rows, inference = [], []
  with tempfile.TemporaryDirectory(prefix="gpu_speed_") as tmp:
    for dtype in dtypes:
      config = _train_config(
        model_name,
        mode="noise",
        dtype=dtype,
        batch=default_config.get_config().batch_size,
        sigma=sigma,
        seed=seed,
        precision=precision,
        deterministic=deterministic,
      )
      config.dataset = "embedded_mnist"
      config.num_epochs = epochs
      workdir = os.path.join(tmp, dtype)
      print(f"## accuracy: training {model_name} in {dtype}, {epochs} epochs", file=sys.stderr)
      start = time.perf_counter()
      metrics = training.train_and_evaluate(config, workdir)
      wall = time.perf_counter() - start
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        epoch_seconds = [json.loads(line)["seconds"] for line in f if line.strip()]
      rows.append(
        {
          "model": model_name,
          "dtype": dtype,
          "epochs": epochs,
          "batch": config.batch_size,
          "noise_sd": sigma,
          "test_accuracy": metrics["test_accuracy"],
          "test_accuracy_noisy": metrics["test_accuracy_noisy"],
          "train_loss": metrics["train_loss"],
          "train_accuracy": metrics["train_accuracy"],
          "wall_s": wall,
          "epoch_s": epoch_seconds,
        }
      )
      trained, *_ = checkpointing.restore_model(workdir)
      reference = _predictions(trained, test_images)
      for v_dtype, fold in variants:
        variant = transforms.for_inference(trained, fold=fold, dtype=v_dtype)
        preds = _predictions(variant, test_images)
        inference.append(
          {
            "trained": dtype,
            "dtype": v_dtype,
            "fold": fold,
            "test_accuracy": float(np.mean(preds == test_labels)),
            "agreement": float(np.mean(preds == reference)),
          }
        )
  return rows, inference


def certification_table(rows: list[CertRow]) -> str:
  """One line per (model, dtype, fold): forward floor, certification and their ratio."""
  lines = [
    "| model | dtype | BN folded | batch | inputs | samples / input | forward images/s | "
    "certify samples/s (median) | certify samples/s (best) | s / image | certify / forward | "
    "vs float32 unfolded | compile s (forward / certify) |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  forward = {(r.model, r.dtype, r.fold): r for r in rows if r.method == "forward"}
  certs = [r for r in rows if r.method != "forward"]
  baseline = {r.model: r.rate() for r in certs if r.dtype == "float32" and not r.fold}
  for r in certs:
    f = forward[(r.model, r.dtype, r.fold)]
    per_input = r.samples // r.inputs
    vs = f"{r.rate() / baseline[r.model]:.2f}x" if r.model in baseline else "-"
    lines.append(
      f"| {r.model} | {r.dtype} | {'on' if r.fold else 'off'} | {r.batch} | {r.inputs} | "
      f"{per_input:,} | {f.rate():,.0f} | {r.rate():,.0f} | {r.rate(best=True):,.0f} | "
      f"{r.median / r.inputs:.3f} | {r.rate() / f.rate():.0%} | {vs} | "
      f"{f.compile_time:.1f} / {r.compile_time:.1f} |"
    )
  return "\n".join(lines)


def training_table(rows: list[TrainRow]) -> str:
  lines = [
    "| model | mode | dtype | augment | batch | steps / call | images/s (median) | "
    "images/s (best) | s / step | vs float32 standard | compile s |",
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  baseline = {r.model: r.rate() for r in rows if r.method == "standard" and r.dtype == "float32"}
  for r in rows:
    vs = f"{r.rate() / baseline[r.model]:.2f}x" if r.model in baseline else "-"
    lines.append(
      f"| {r.model} | {r.method} | {r.dtype} | {r.augment} | {r.batch} | {r.steps} | "
      f"{r.rate():,.0f} | {r.rate(best=True):,.0f} | {r.median / r.steps:.4f} | {vs} | "
      f"{r.compile_time:.1f} |"
    )
  return "\n".join(lines)


def accuracy_tables(rows: list[dict], inference: list[dict]) -> str:
  lines = [
    "| model | trained in | epochs | batch | test acc | test acc (noise sd) | train loss | "
    "training s (wall) | first epoch s (compile included) | later epochs s (median) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    later = f"{statistics.median(r['epoch_s'][1:]):.1f}" if len(r["epoch_s"]) > 1 else "-"
    lines.append(
      f"| {r['model']} | {r['dtype']} | {r['epochs']} | {r['batch']} | "
      f"{r['test_accuracy']:.4f} | {r['test_accuracy_noisy']:.4f} ({r['noise_sd']:g}) | "
      f"{r['train_loss']:.4f} | {r['wall_s']:.1f} | {r['epoch_s'][0]:.1f} | {later} |"
    )
  lines += [
    "",
    "| trained in | evaluated in | BN folded | clean test acc | "
    "agreement with the same model in float32 unfolded |",
    "|---|---|---|---:|---:|",
  ]
  for r in inference:
    lines.append(
      f"| {r['trained']} | {r['dtype']} | {'on' if r['fold'] else 'off'} | "
      f"{r['test_accuracy']:.4f} | {r['agreement']:.2%} |"
    )
  return "\n".join(lines)


def _names(text: str, allowed, what: str, parser) -> list[str]:
  values = [v for v in text.split(",") if v]
  bad = [v for v in values if v not in allowed]
  if bad or not values:
    parser.error(f"--{what}: unknown or no value(s) {bad}; choose from {', '.join(allowed)}")
  return values


def _record(env, args, settings, cert_rows, train_rows, accuracy, inference) -> dict:
  def rows(rs):
    return [
      {
        **dataclasses.asdict(r),
        "median": r.median,
        "best": r.best,
        "per_s": r.rate(),
        "per_s_best": r.rate(best=True),
        "compile_time": r.compile_time,
      }
      for r in rs
    ]

  return {
    "environment": env,
    "argv": sys.argv,
    "args": vars(args),
    "settings": settings,
    "certification": rows(cert_rows),
    "training": rows(train_rows),
    "accuracy": accuracy,
    "accuracy_inference": inference,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(_MODELS), help="comma-separated model names")
  parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes")
  parser.add_argument("--fold", default="off,on", help="BatchNorm folding: off, on or off,on")
  parser.add_argument("--n", type=int, default=None, help="estimation samples per input")
  parser.add_argument("--n0", type=int, default=100, help="selection samples per input")
  parser.add_argument(
    "--inputs", type=int, default=None, help="inputs per certify_batch call (1 on CPU, 8 else)"
  )
  parser.add_argument(
    "--batch", type=int, default=None, help="certification step (default: sizing.auto_batch)"
  )
  parser.add_argument("--train_batch", type=int, default=None, help="training batch size")
  parser.add_argument("--train_steps", type=int, default=None, help="train steps per timed call")
  parser.add_argument("--train_modes", default="standard,noise", help="training modes")
  parser.add_argument("--repeats", type=int, default=None, help="timed calls (2 on CPU, else 3)")
  parser.add_argument("--sigma", type=float, default=0.25)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--skip_certification", action="store_true")
  parser.add_argument("--skip_training", action="store_true")
  parser.add_argument("--accuracy", action="store_true", help="also train on embedded MNIST")
  parser.add_argument("--accuracy_model", default="cnn", choices=("cnn", "cnn_tiny", "lenet"))
  parser.add_argument(
    "--accuracy_epochs", type=int, default=6, help="epochs (6: smoothjax/configs/default.py's)"
  )
  parser.add_argument("--precision", default="default", choices=numerics.PRECISIONS)
  parser.add_argument("--deterministic", action="store_true", help="deterministic GPU ops")
  parser.add_argument("--json", default=None, help="write the raw numbers to this file")
  args = parser.parse_args(argv)

  # Before anything touches a backend: XLA reads its flags when JAX starts.
  numerics.configure(precision=args.precision, deterministic=args.deterministic)

  models = _names(args.models, tuple(ct._SHAPES), "models", parser)
  dtypes = _names(args.dtypes, tuple(transforms.COMPUTE_DTYPES), "dtypes", parser)
  folds = [_FOLDS[f] for f in _names(args.fold, tuple(_FOLDS), "fold", parser)]
  train_modes = _names(args.train_modes, tuple(training.MODES), "train_modes", parser)
  for flag in ("n", "n0", "inputs", "batch", "train_batch", "train_steps", "repeats"):
    value = getattr(args, flag)
    if value is not None and value < 1:
      parser.error(f"--{flag} must be positive, got {value}")
  if args.accuracy_epochs < 1:
    parser.error("--accuracy_epochs must be positive")

  env = ct.environment()
  env["platform"] = jax.devices()[0].platform
  env["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  env["deterministic_ops"] = numerics.deterministic_enabled()
  env["matmul_precision"] = jax.config.jax_default_matmul_precision
  kind = "cpu" if env["backend"] == "cpu" else "accelerator"
  repeats = args.repeats or _REPEATS[kind]
  inputs = args.inputs or sizing.auto_inputs_per_step()
  print(
    f"# {env['date']}  jax {env['jax']}  flax {env['flax']}  platform {env['platform']}  "
    f"{env['devices']} x {env['device_kind']}  {env['cpu_count']} CPUs ({env['cpu_model']})  "
    f"load {env['load_average']}\n"
    f"# XLA_FLAGS has {numerics.DETERMINISTIC_FLAG}: {env['deterministic_ops']}  "
    f"jax_default_matmul_precision: {env['matmul_precision']}  "
    f"(--precision {args.precision}{' --deterministic' if args.deterministic else ''})",
    flush=True,
  )
  variants = [(d, f) for d in dtypes for f in folds]
  cert_mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  train_mesh = parallel.make_mesh()
  devices = jax.device_count()
  cert_rows, train_rows, accuracy, inference = [], [], [], []
  settings = {"repeats": repeats, "inputs": inputs, "certification": {}, "training": {}}

  def save():
    if args.json:
      record = _record(env, args, settings, cert_rows, train_rows, accuracy, inference)
      with open(args.json, "w") as f:
        json.dump(record, f, indent=2)

  if not args.skip_certification:
    for name in models:
      if kind == "cpu":
        d_n, d_batch = (
          _CPU_CERT.get(name)
          or ct._DEFAULTS["cpu"]["resnet" if name.startswith("resnet") else "cnn"]
        )
      else:
        d_n, d_batch = _ACCEL_N, None  # None: sizing.auto_batch per variant
      n = args.n or d_n
      batch = args.batch or d_batch
      print(
        f"## certification {name}: n={n} n0={args.n0} inputs={inputs} batch={batch or 'auto'}",
        file=sys.stderr,
        flush=True,
      )
      rows = bench_certification(
        name,
        variants=variants,
        n=n,
        n0=args.n0,
        batch=batch,
        inputs=inputs,
        repeats=repeats,
        sigma=args.sigma,
        seed=args.seed,
        mesh=cert_mesh,
      )
      settings["certification"][name] = {
        "n": n,
        "n0": args.n0,
        "inputs": inputs,
        "batch": {_variant_name(r.dtype, r.fold): r.batch for r in rows},
      }
      for r in rows:
        print(
          f"   {_variant_name(r.dtype, r.fold)} {r.method}: {r.rate():,.0f}/s "
          f"(compile {r.compile_time:.1f} s)",
          file=sys.stderr,
          flush=True,
        )
      cert_rows += rows
      save()

  if not args.skip_training:
    for name in models:
      default_batch = (
        _ACCEL_TRAIN_BATCH
        if kind == "accelerator"
        else _CPU_TRAIN_BATCH.get(name, _CPU_TRAIN_BATCH_RESNET)
      )
      batch = args.train_batch or default_batch
      batch = -(-batch // devices) * devices
      steps = args.train_steps or _TRAIN_STEPS[kind]
      print(f"## training {name}: batch={batch} steps/call={steps}", file=sys.stderr, flush=True)
      rows = bench_training(
        name,
        modes=train_modes,
        dtypes=dtypes,
        batch=batch,
        steps=steps,
        repeats=repeats,
        sigma=args.sigma,
        seed=args.seed,
        precision=args.precision,
        mesh=train_mesh,
      )
      settings["training"][name] = {"batch": batch, "steps": steps}
      for r in rows:
        print(
          f"   {r.method} {r.dtype}: {r.rate():,.0f} images/s (compile {r.compile_time:.1f} s)",
          file=sys.stderr,
          flush=True,
        )
      train_rows += rows
      save()

  if args.accuracy:
    accuracy, inference = accuracy_check(
      model_name=args.accuracy_model,
      epochs=args.accuracy_epochs,
      dtypes=dtypes,
      variants=variants,
      sigma=args.sigma,
      seed=args.seed,
      precision=args.precision,
      deterministic=args.deterministic,
    )
    save()

  if cert_rows:
    print("\n### Certification (noise samples/s) and the forward-pass floor (images/s)\n")
    print(certification_table(cert_rows))
  if train_rows:
    print("\n### Training step (images/s)\n")
    print(training_table(train_rows))
  if accuracy:
    print("\n### bfloat16 mixed-precision training on the embedded MNIST digits\n")
    print(accuracy_tables(accuracy, inference))
  if hasattr(os, "getloadavg"):
    env["load_average_end"] = list(os.getloadavg())
    print(f"\nload average at the end: {env['load_average_end']}")
  save()
  return 0


if __name__ == "__main__":
  sys.exit(main())
