"""Generate images of chosen classes with a trained classifier, smoothed or not.

Ascends a class's score (:mod:`smoothjax.objectives.generation`) by targeted PGD from a
seed, as Santurkar et al. 2019 ("Image Synthesis with a Single (Robust)
Classifier") with a robust model, or with a smoothed classifier estimated with
``--m`` noise samples per step under the run's training noise::

  python generate.py --workdir workdirs/demo --outdir results/generated \
      --classes 0,3,7 --per_class 8 --loss ce --m 16 --judge workdirs/judge

Writes into ``--outdir``:

* ``grid.png``: one row per class (its first seed left of it with
  ``--show_seeds``);
* ``generated.npz``: ``images``, ``seeds``, ``targets``, ``index`` (the image's
  number within its class), per-image ``confidence`` and ``l2``, and
  ``judge_predictions`` with ``--judge``;
* ``summary.json``, printed as a table at the end: per class and overall, the
  accuracy of the independent ``--judge`` classifier on the generated images
  (and on the seeds, for reference), the generating model's own (smoothed)
  confidence in the target class, and the mean l2 distance to the seeds;
* ``settings.json`` and ``parts/``, the finished batches: rerunning the same
  command resumes, and a larger ``--per_class`` or more ``--classes`` only
  generates what is missing. Image ``j`` of class ``c`` draws its seed, noise and
  confidence samples from the three keys of ``split(fold_in(fold_in(key(seed), c),
  j), 3)``, so it is the same whatever else is generated with it.

Each part (``parts/part-*.npz``) records the digest of the settings it was generated
with (:func:`settings_digest`, the ``settings_digest`` array). A resumed run merges only
the parts of its own settings and sets the others aside in ``parts/``, with a note on
stderr, and generates their images again: a part without a digest or with another one
(copied from another outdir) is renamed ``NAME.foreign``; one that cannot be read
(truncated, a CRC error) or whose arrays do not fit together, ``NAME.damaged``.

Seeds (``--seed_dist``): ``class_gaussian`` draws from a Gaussian fitted to the
target class's training images on a grid downsampled by ``--seed_factor``
(Santurkar et al.; fitted once and cached in ``WORKDIR/generation/``), ``real``
starts from a random test image (of any class), ``uniform`` from uniform noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from smoothjax import analysis, locks, stopping
from smoothjax.analysis import pictures
from smoothjax.devices import numerics, parallel, processes
from smoothjax.errors import InputError
from smoothjax.jobs import common
from smoothjax.models import transforms
from smoothjax.objectives import generation
from smoothjax.results import parts, shares

NORMS = ("l2", "linf")
# Santurkar et al.'s CIFAR-10 generation: l2, eps 30, step 0.5, 60 steps (a ball large
# enough not to bind); linf has no such reference: 0.3, the MNIST threat model's radius.
DEFAULT_EPS = {"l2": 30.0, "linf": 0.3}
DEFAULT_STEP_SIZE = {"l2": 0.5, "linf": None}
_FIT_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class Options:
  """The settings of one generation run; the program's flags have the same names."""

  workdir: str
  outdir: str
  classes: tuple[int, ...] | None = None  # None: every class
  per_class: int = 8
  loss: str = "ce"
  m: int = 16
  sigma: float | None = None
  seed_dist: str = "class_gaussian"
  seed_factor: int | None = None
  norm: str = "l2"
  eps: float | None = None
  steps: int = 60
  step_size: float | None = None
  keep_best: bool = True
  batch: int = 64
  seed: int = 0
  epoch: int | None = None
  judge: str | None = None
  judge_epoch: int | None = None
  confidence_n: int = 256
  show_seeds: bool = False
  dtype: str = "float32"
  fold_batchnorm: bool = True
  precision: str = "default"
  denoiser: str | None = None  # a denoiser's workdir: generate with classifier(denoiser(x))
  denoiser_epoch: int | None = None  # None: the denoiser's latest checkpoint


# --------------------------------------------------------------------------
# Settings.


def parse_classes(text: str | None) -> tuple[int, ...] | None:
  """``"0,3,7"`` -> ``(0, 3, 7)``; empty or None: every class."""
  if text is None or not text.strip():
    return None
  values = []
  for part in text.split(","):
    try:
      values.append(int(part.strip()))
    except ValueError:
      raise InputError(
        f"--classes must be comma-separated class numbers like 0,3,7, got {text!r}"
      ) from None
  return tuple(values)


def check_options(o: Options) -> Options:
  """Checks the settings that need no workdir; returns ``o`` with defaults filled in."""
  for name in ("workdir", "outdir"):
    if not getattr(o, name):
      raise InputError(f"--{name} is required")
  transforms.compute_dtype(o.dtype)
  numerics.check_precision(o.precision)
  common.check_denoiser_options(o.denoiser, o.denoiser_epoch)
  if o.loss not in generation.LOSSES:
    raise InputError(f"unknown --loss {o.loss!r}; choose one of: {', '.join(generation.LOSSES)}")
  if o.seed_dist not in generation.SEED_DISTRIBUTIONS:
    raise InputError(
      f"unknown --seed_dist {o.seed_dist!r}; choose one of: "
      f"{', '.join(generation.SEED_DISTRIBUTIONS)}"
    )
  if o.norm not in NORMS:
    raise InputError(f"unknown --norm {o.norm!r}; choose one of: {', '.join(NORMS)}")
  for name, least in (("per_class", 1), ("steps", 1), ("batch", 1), ("m", 0)):
    if getattr(o, name) < least:
      raise InputError(f"--{name} must be >= {least}, got {getattr(o, name)}")
  if o.confidence_n < 1:
    raise InputError(f"--confidence_n must be >= 1, got {o.confidence_n}")
  if o.seed < 0:
    raise InputError(f"--seed must be >= 0, got {o.seed}")
  if o.seed_factor is not None and o.seed_factor < 1:
    raise InputError(f"--seed_factor must be >= 1, got {o.seed_factor}")
  eps = DEFAULT_EPS[o.norm] if o.eps is None else o.eps
  if not (math.isfinite(eps) and eps > 0):
    raise InputError(f"--eps must be a finite number > 0, got {eps}")
  step_size = DEFAULT_STEP_SIZE[o.norm] if o.step_size is None else o.step_size
  if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
    raise InputError(
      f"--step_size must be a finite number > 0, got {step_size}; leave it unset for the default"
    )
  if o.sigma is not None and not (math.isfinite(o.sigma) and o.sigma > 0):
    raise InputError(f"--sigma must be a finite number > 0, got {o.sigma}")
  if o.classes is not None:
    if not o.classes:
      raise InputError("--classes lists no class; leave it unset for every class")
    if len(set(o.classes)) < len(o.classes):
      raise InputError(f"--classes lists a class twice: {','.join(map(str, o.classes))}")
  if os.path.exists(o.outdir) and not os.path.isdir(o.outdir):
    raise InputError(f"--outdir {o.outdir} is a file; pass a folder")
  return dataclasses.replace(o, eps=float(eps), step_size=step_size)


def _check_classes(o: Options, num_classes: int) -> tuple[int, ...]:
  classes = tuple(range(num_classes)) if o.classes is None else o.classes
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise InputError(
      f"--classes: class {bad[0]} is out of range; the run's dataset has classes "
      f"0..{num_classes - 1}"
    )
  return classes


def _noise(o: Options, run: common.Run, denoiser: common.Denoiser | None = None):
  """The run's noise family (config.noise; the denoiser's with one) at --sigma, default its
  noise_sd; None for m 0 (unless a denoiser needs its level)."""
  if o.m == 0 and (denoiser is None or (o.sigma is None and denoiser.kind != "diffusion")):
    return None
  return common.resolve_noise(
    *common.noise_source(run, denoiser),
    sigma=o.sigma,
    dim=math.prod(run.info.image_shape),
    advice="pass --sigma for the smoothed classifier, or --m 0 to generate with the base "
    "classifier",
  )


def _load_judge(o: Options, config, info, model_fingerprint: str):
  """The ``--judge`` model, ready for inference; None without one.

  Args:
    model_fingerprint: the generating model's (:func:`smoothjax.hashing.fingerprint` of its
      state as trained): a judge with the same parameters (a copy of the generating
      workdir) is no independent judge.
  """
  if not o.judge:
    return None
  if os.path.abspath(o.judge) == os.path.abspath(o.workdir):
    raise InputError("--judge is the generating run itself; pass an independently trained run")
  judge = common.restore(o.judge, o.judge_epoch, fold=o.fold_batchnorm, dtype=o.dtype)
  judge_config, judge_info = judge.config, judge.info
  if judge.fingerprint == model_fingerprint:  # of the parameters as trained
    raise InputError(
      f"--judge {o.judge} holds the same parameters as the generating run {o.workdir} (a copy "
      "of it), so it is no independent judge; pass an independently trained run"
    )
  if judge_config.dataset != config.dataset:
    raise InputError(
      f"--judge {o.judge} was trained on {judge_config.dataset!r}, the generating run on "
      f"{config.dataset!r}; a judge must classify the same dataset"
    )
  if (judge_info.num_classes, tuple(judge_info.image_shape)) != (
    info.num_classes,
    tuple(info.image_shape),
  ):
    raise InputError(
      f"--judge {o.judge} classifies {judge_info.num_classes} classes of "
      f"{tuple(judge_info.image_shape)} images, the generating run {info.num_classes} of "
      f"{tuple(info.image_shape)}; pass a judge of the same dataset"
    )
  return judge.model


def _settings(o: Options, run: common.Run, noise_dist, factor) -> dict:
  """What every image depends on: a resumed outdir must have been written with the same."""
  return common.settings({"program": "generate"}, run, o) | {
    "loss": o.loss,
    "m": o.m,
    "noise": None if noise_dist is None else noise_dist.spec,
    "seed_dist": o.seed_dist,
    "seed_factor": factor,
    "norm": o.norm,
    "eps": o.eps,
    "steps": o.steps,
    "step_size": o.step_size,
    "keep_best": o.keep_best,
    "seed": o.seed,
  }


# --------------------------------------------------------------------------
# Seeds.


def _seed_factor(o: Options, info) -> int | None:
  """The class-Gaussian seeds' downsampling factor (None for other seeds), checked."""
  if o.seed_dist != "class_gaussian":
    return None
  h, w, _ = info.image_shape
  factor = generation.default_factor(h, w) if o.seed_factor is None else o.seed_factor
  if h % factor or w % factor:
    raise InputError(f"--seed_factor {factor} must divide the image size {h}x{w}")
  return factor


def _class_gaussians(o: Options, dataset, factor: int) -> generation.ClassGaussians:
  """The class Gaussians of the training split, from the workdir's cache or fitted now."""
  info = dataset.info
  split = dataset.split("train")
  path = os.path.join(o.workdir, "generation", f"class_gaussians_f{factor}.npz")
  if os.path.isfile(path):
    try:
      with np.load(path) as saved:
        if str(saved["dataset"]) == info.name and int(saved["size"]) == len(split):
          return generation.ClassGaussians.from_arrays(saved)
    except (OSError, ValueError, KeyError, InputError):
      print(f"note: refitting the damaged seed cache {path}", file=sys.stderr)

  def chunks():
    for start in tqdm(range(0, len(split), _FIT_CHUNK), desc="fitting seeds", unit="chunk"):
      yield split.get(np.arange(start, min(start + _FIT_CHUNK, len(split))))

  fit = generation.fit_class_gaussians_in_chunks(
    chunks(), info.num_classes, image_shape=info.image_shape, factor=factor
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npz"  # the processes of a job may fit it at once
  np.savez(tmp, dataset=np.asarray(info.name), size=np.asarray(len(split)), **fit.to_arrays())
  os.replace(tmp, path)
  return fit


class _Seeds:
  """Seed images of (class, index) pairs, each from its own key."""

  def __init__(self, o: Options, dataset, factor: int | None):
    self.kind = o.seed_dist
    self.shape = tuple(dataset.info.image_shape)
    if self.kind == "class_gaussian":
      self._draw = jax.jit(_class_gaussians(o, dataset, factor).seeds)
    elif self.kind == "real":
      self.split = dataset.split("test")
    else:
      self._draw = jax.jit(lambda keys, classes: generation.uniform_seeds(keys, self.shape))

  def __call__(self, keys, classes) -> np.ndarray:
    if self.kind == "real":
      picks = jax.vmap(lambda k: jax.random.randint(k, (), 0, len(self.split)))(keys)
      return self.split.get(np.asarray(picks))[0]
    return np.asarray(self._draw(keys, jnp.asarray(classes, jnp.int32)))


# --------------------------------------------------------------------------
# The computation.


def _image_keys(seed: int, classes, index) -> jax.Array:
  base = jax.random.key(seed)
  per_class = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.asarray(classes, jnp.uint32))
  return jax.vmap(jax.random.fold_in)(per_class, jnp.asarray(index, jnp.uint32))


def _split_keys(keys):
  """Each image's key split into its seed, noise and confidence keys: three ``(B,)`` arrays."""
  split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  return split[:, 0], split[:, 1], split[:, 2]


def _padding_keys(count: int):
  """Keys for the rows that pad a batch to its fixed size (their results are dropped)."""
  return jax.random.split(jax.random.key(2**31 - 1), count)


class _Generator:
  """Generated images, confidences and seeds for padded fixed-size batches."""

  def __init__(self, o: Options, model, noise_dist, mesh):
    self.o = o
    self.mesh = mesh
    self.model = model if mesh is None else parallel.replicate(model, mesh)
    devices = 1 if mesh is None else mesh.devices.size
    self.size = -(-o.batch // devices) * devices
    settings = dict(
      loss=o.loss,
      noise=noise_dist,
      m=o.m,
      eps=o.eps,
      norm=o.norm,
      steps=o.steps,
      step_size=o.step_size,
      keep_best=o.keep_best,
    )
    self.run = jax.jit(
      lambda model, x, c, k: generation.generate(model, x, c, k if o.m else None, **settings)
    )

    def confidence(model, x, c, keys):
      """The generating classifier's probability of the target: smoothed (soft) or plain."""
      if noise_dist is None:
        probs = jax.nn.softmax(model(x), axis=-1)
      else:

        def one(key, xi):
          eps = noise_dist.sample(key, (o.confidence_n, *xi.shape), xi.dtype)
          return jnp.mean(jax.nn.softmax(model(xi[None] + eps), axis=-1), axis=0)

        probs = jax.vmap(one)(keys, x)
      return jnp.take_along_axis(probs, c[:, None], axis=1)[:, 0]

    self.confidence = jax.jit(confidence)

  def _put(self, *arrays):
    if self.mesh is None:
      return tuple(jnp.asarray(a) for a in arrays)
    return parallel.shard_batch(arrays, self.mesh)

  def __call__(self, seeds, classes, noise_keys, confidence_keys):
    real = len(classes)
    pad = self.size - real
    seeds = np.concatenate([seeds, np.repeat(seeds[-1:], pad, axis=0)])
    classes = np.concatenate([classes, np.repeat(classes[-1:], pad)]).astype(np.int32)
    xs, cs = self._put(seeds, classes)
    if pad:
      padding = _padding_keys(2 * pad)
      noise_keys = jnp.concatenate([noise_keys, padding[:pad]])
      confidence_keys = jnp.concatenate([confidence_keys, padding[pad:]])
    if self.mesh is not None:
      sharding = parallel.data_sharding(self.mesh)
      noise_keys = jax.device_put(noise_keys, sharding)
      confidence_keys = jax.device_put(confidence_keys, sharding)
    images = self.run(self.model, xs, cs, noise_keys)
    confidence = self.confidence(self.model, images, cs, confidence_keys)
    return np.asarray(images)[:real], np.asarray(confidence)[:real]


@jax.jit
def _predict(model, xs):
  return jnp.argmax(model(xs), axis=-1)


def _judge_predictions(judge, images, batch: int) -> np.ndarray:
  return np.concatenate(
    [
      np.asarray(_predict(judge, jnp.asarray(images[s : s + batch])))
      for s in range(0, len(images), batch)
    ]
  )


# --------------------------------------------------------------------------
# Output folder: settings, finished parts, merged results.


def run_generate(o: Options) -> dict:
  """Generates (resuming) ``o.per_class`` images of each class; writes ``o.outdir``.

  Under ``jax.distributed`` each process generates its share of the images into its own
  parts and process 0 writes the results once all have finished.

  Returns:
    The summary (also in ``OUTDIR/summary.json``); {} on processes other than 0.

  Raises:
    InputError: bad settings (before anything is written), a missing workdir or
      judge, or an outdir written with other settings.
  """
  o = check_options(o)
  with numerics.precision_scope(o.precision):
    return _run_generate(o)


def _run_generate(o: Options) -> dict:
  run = common.restore(o.workdir, o.epoch, fold=o.fold_batchnorm, dtype=o.dtype)
  denoiser = common.load_denoiser(
    o.denoiser, o.denoiser_epoch, run, fold=o.fold_batchnorm, dtype=o.dtype
  )
  level = _noise(o, run, denoiser)
  noise_dist = level if o.m > 0 else None
  run = common.with_denoiser(run, denoiser, level)
  model, config, info = run.model, run.config, run.info
  classes = _check_classes(o, info.num_classes)
  judge = _load_judge(o, config, info, run.fingerprint)
  dataset = run.dataset()
  factor = _seed_factor(o, info)
  settings = _settings(o, run, noise_dist, factor)
  digest = parts.settings_digest(settings)

  # Under jax.distributed each process generates its share of the images on its own
  # devices into its own parts; process 0 holds the lock, and merges at the end.
  index, count = jax.process_index(), jax.process_count()
  if count > 1:
    # Processes started with other command lines fail together, before any work.
    processes.agree(f"smoothjax {o.outdir} settings", settings, shares.START_TIMEOUT_SECONDS)
  os.makedirs(o.outdir, exist_ok=True)
  lock = os.path.join(o.outdir, "generate.lock")
  held = locks.exclusive(lock, f"output folder {o.outdir}") if index == 0 else None
  with held or contextlib.nullcontext():
    if index == 0:
      parts.check_settings(o.outdir, settings)
    shares.meet(f"smoothjax {o.outdir} open", shares.START_TIMEOUT_SECONDS)
    if index != 0:
      parts.check_settings(o.outdir, settings, write=False)
    parts_dir = os.path.join(o.outdir, "parts")
    os.makedirs(parts_dir, exist_ok=True)
    done = parts.read_parts(parts_dir, digest)
    wanted = [(c, j) for c in classes for j in range(o.per_class)]
    mine = parallel.process_share(wanted, index=index, count=count)
    todo = [p for p in mine if p not in done]
    if len(todo) < len(mine):
      print(f"resuming: {len(mine) - len(todo)} of {len(mine)} images already in {o.outdir}")
    if todo:
      seeds_of = _Seeds(o, dataset, factor)
      local = jax.local_devices()
      mesh = parallel.make_mesh(local) if len(local) > 1 else None
      generator = _Generator(o, model, noise_dist, mesh)
      prefix = "part-" if count == 1 else f"part-{index}-of-{count}-"
      number = 0
      desc = "generate" if count == 1 else f"generate [{index}/{count}]"
      # SIGTERM is acted on between two batches (smoothjax.stopping).
      with tqdm(total=len(todo), desc=desc, unit="image") as bar, stopping.deferred():
        for start in range(0, len(todo), generator.size):
          stopping.check()
          pairs = np.asarray(todo[start : start + generator.size], np.int64)
          seed_keys, noise_keys, confidence_keys = _split_keys(
            _image_keys(o.seed, pairs[:, 0], pairs[:, 1])
          )
          seeds = seeds_of(seed_keys, pairs[:, 0]).astype(np.float32)
          images, confidence = generator(seeds, pairs[:, 0], noise_keys, confidence_keys)
          arrays = {
            "images": images,
            "seeds": seeds,
            "targets": pairs[:, 0],
            "index": pairs[:, 1],
            "confidence": confidence,
          }
          number = parts.write_part(parts_dir, prefix, number, arrays, digest)
          for row, (c, j) in enumerate(pairs):
            done[(int(c), int(j))] = {k: v[row] for k, v in arrays.items()}
          bar.update(len(pairs))
    if count > 1:
      shares.meet(f"smoothjax {o.outdir} done", shares.FINISH_TIMEOUT_SECONDS)
      if index != 0:
        print(f"process {index}: its images are in {parts_dir}; process 0 writes the results")
        return {}
      done = parts.read_parts(parts_dir, digest)  # every process's parts
    return _finish(o, classes, wanted, done, judge, info)


def _finish(o: Options, classes, wanted, done, judge, info) -> dict:
  rows = [done[p] for p in wanted]
  images = np.stack([r["images"] for r in rows]).astype(np.float32)
  seeds = np.stack([r["seeds"] for r in rows]).astype(np.float32)
  targets = np.asarray([r["targets"] for r in rows], np.int64)
  index = np.asarray([r["index"] for r in rows], np.int64)
  confidence = np.asarray([r["confidence"] for r in rows], np.float64)
  l2 = np.linalg.norm((images - seeds).reshape(len(images), -1), axis=1)
  judge_pred = seed_pred = None
  arrays = dict(
    images=images, seeds=seeds, targets=targets, index=index, confidence=confidence, l2=l2
  )
  if judge is not None:
    judge_pred = _judge_predictions(judge, images, o.batch)
    seed_pred = _judge_predictions(judge, seeds, o.batch)
    arrays.update(judge_predictions=judge_pred, judge_seed_predictions=seed_pred)
  tmp = os.path.join(o.outdir, "generated.tmp.npz")
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, os.path.join(o.outdir, "generated.npz"))
  summary = analysis.generation.summary(classes, targets, l2, confidence, judge_pred, seed_pred)
  summary["judge"] = os.path.abspath(o.judge) if o.judge else None
  with open(os.path.join(o.outdir, "summary.json.tmp"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  os.replace(os.path.join(o.outdir, "summary.json.tmp"), os.path.join(o.outdir, "summary.json"))

  shape = info.image_shape
  grid = images.reshape(len(classes), o.per_class, *shape)
  first = seeds.reshape(len(classes), o.per_class, *shape)[:, 0] if o.show_seeds else None
  smoothed = f"smoothed, {o.m} samples" if o.m else "base classifier"
  pictures.image_grid(
    os.path.join(o.outdir, "grid.png"),
    grid,
    row_labels=[str(c) for c in classes],
    first_column=first,
    title=f"{os.path.basename(os.path.normpath(o.workdir))}: {o.loss} ({smoothed}), "
    f"{o.norm} eps {o.eps:g}, {o.steps} steps, {o.seed_dist} seeds",
  )
  print(analysis.generation.table(summary), end="")
  print(
    f"images: {os.path.join(o.outdir, 'generated.npz')}  grid: {os.path.join(o.outdir, 'grid.png')}"
  )
  return summary


run = run_generate  # Every job's entry point has this name (smoothjax.jobs).
