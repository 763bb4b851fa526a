"""Empirical robustness of a trained workdir: accuracy under FGSM or PGD at several eps.

Attack the base classifier (cross-entropy loss) of every input of the test split
and write one TSV row per input: ``idx label predict correct`` (clean
prediction), then ``predict_eps{eps} correct_eps{eps}`` for each eps, then
``time input_hash`` (a hash of the input, checked when resuming). Rerunning the
same command resumes where it stopped::

  python attack.py --workdir workdirs/demo --outfile results/pgd_l2.tsv \
      --norm l2 --eps 0.25,0.5,1.0 --attack pgd --steps 20 --examples results/pgd_l2.png

With ``--smoothed``, SmoothAdv's attack on the smoothed classifier (Salman et
al. 2019: PGD on the soft smoothed classifier estimated with ``--m`` noise
samples kept fixed across the ``--steps`` steps), then PREDICT (Cohen et al.
2019, Algorithm 2, ``--n`` samples at ``--alpha``; -1 is an abstention) on
each adversarial point; ``predict`` is then PREDICT on the clean input.
Salman et al.'s evaluation uses m = 128, 20 steps and PREDICT with n = 100::

  python attack.py --workdir workdirs/demo --outfile results/smoothadv.tsv \
      --smoothed --eps 0.25,0.5,1.0 --m 128 --n 100 --alpha 0.001

Input ``i`` draws its randomness (random starts, attack noise, PREDICT's
samples) from ``fold_in(key(seed), i)``, so rows do not depend on the batch
size or on where a run was resumed. At the end a table of clean accuracy and
accuracy under the attack at each eps is printed
(:func:`smoothjax.analysis.attacks.summarize` reads it
back from any output file).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from smoothjax import analysis, hashing, results, smoothing, stopping
from smoothjax.analysis import pictures
from smoothjax.devices import numerics, parallel
from smoothjax.errors import InputError
from smoothjax.jobs import common
from smoothjax.models import transforms
from smoothjax.objectives import attacks, losses
from smoothjax.results import shares
from smoothjax.smoothing import votes

ATTACKS = ("fgsm", "pgd")
NORMS = attacks.NORMS
_PICTURE_EXAMPLES = 8


@dataclasses.dataclass(frozen=True)
class Options:
  """The settings of one attack run; the program's flags have the same names and defaults.

  Other programs (a comparison of several workdirs, a notebook) build one and
  call :func:`run_attack` without going through flags.
  """

  workdir: str
  outfile: str
  norm: str = "l2"
  eps: tuple[float, ...] = (0.25, 0.5, 1.0)
  attack: str = "pgd"
  steps: int = 20
  step_size: float | None = None
  restarts: int = 1
  batch: int = 256
  skip: int = 1
  max: int = -1
  count: int | None = None
  split: str = "test"
  seed: int = 0
  epoch: int | None = None
  examples: str | None = None
  smoothed: bool = False
  m: int = 128
  sigma: float | None = None
  n: int = 100
  alpha: float = 0.001
  dtype: str = "float32"
  fold_batchnorm: bool = True
  precision: str = "default"
  denoiser: str | None = None  # a denoiser's workdir: attack classifier(denoiser(x))
  denoiser_epoch: int | None = None  # None: the denoiser's latest checkpoint


# --------------------------------------------------------------------------
# Output format.


def columns(eps_list: Sequence[float]) -> tuple[str, ...]:
  """The output columns for radii ``eps_list``."""
  names = [analysis.attacks.eps_name(e) for e in eps_list]
  per_eps = [(f"predict_eps{name}", f"correct_eps{name}") for name in names]
  return (
    *results.PREDICT_COLUMNS[:-1],
    *[c for pair in per_eps for c in pair],
    "time",
    results.INPUT_HASH_COLUMN,
  )


# --------------------------------------------------------------------------
# Settings.


def parse_eps(text: str) -> tuple[float, ...]:
  """``"0.25,0.5,1"`` -> ``(0.25, 0.5, 1.0)``; an InputError for anything else."""
  parts = [p.strip() for p in (text or "").split(",")]
  if any(not p for p in parts):
    raise InputError(f"--eps must be comma-separated numbers >= 0 like 0.25,0.5,1.0, got {text!r}")
  values = []
  for part in parts:
    try:
      values.append(float(part))
    except ValueError:
      raise InputError(f"--eps: {part!r} is not a number; pass e.g. --eps=0.25,0.5,1.0") from None
  return tuple(values)


def _check_eps(eps) -> tuple[float, ...]:
  values = tuple(float(e) for e in eps)
  if not values:
    raise InputError("--eps must list at least one radius, e.g. --eps=0.25,0.5,1.0")
  for value in values:
    if not math.isfinite(value) or value < 0:
      raise InputError(f"--eps values must be finite and >= 0, got {value:g}")
  names = [analysis.attacks.eps_name(v) for v in values]
  if len(set(names)) < len(names):
    twice = next(n for n in names if names.count(n) > 1)
    raise InputError(f"--eps lists {twice} twice; give each radius once")
  return values


def check_options(o: Options) -> Options:
  """Checks every setting, before anything is restored or written.

  Returns:
    ``o`` with ``eps`` as a tuple of floats.

  Raises:
    InputError: one line naming the flag that is wrong and how to fix it.
  """
  for name in ("workdir", "outfile"):
    if not getattr(o, name):
      raise InputError(f"--{name} is required")
  if o.norm not in NORMS:
    raise InputError(f"unknown --norm {o.norm!r}; choose one of: {', '.join(NORMS)}")
  if o.attack not in ATTACKS:
    raise InputError(f"unknown --attack {o.attack!r}; choose one of: {', '.join(ATTACKS)}")
  o = dataclasses.replace(o, eps=_check_eps(o.eps))
  transforms.compute_dtype(o.dtype)
  numerics.check_precision(o.precision)
  for name in ("steps", "restarts", "batch", "skip"):
    if getattr(o, name) < 1:
      raise InputError(f"--{name} must be >= 1, got {getattr(o, name)}")
  if o.step_size is not None and not (math.isfinite(o.step_size) and o.step_size > 0):
    raise InputError(
      f"--step_size must be a finite number > 0, got {o.step_size}; leave it unset for the default"
    )
  if o.max < -1 or o.max == 0:
    raise InputError(f"--max must be a dataset index > 0 or -1 (all), got {o.max}")
  if o.count is not None and o.count < 1:
    raise InputError(f"--count must be >= 1, got {o.count}")
  if o.smoothed:
    if o.attack != "pgd":
      raise InputError(f"--smoothed runs SmoothAdv's PGD attack; drop --attack={o.attack}")
    if o.restarts != 1:
      raise InputError("--smoothed runs SmoothAdv's attack without restarts; drop --restarts")
    if o.m < 1:
      raise InputError(f"--m must be >= 1 (noise samples per input), got {o.m}")
    if o.n < 1:
      raise InputError(f"--n must be >= 1, got {o.n}")
    if not 0 < o.alpha < 1:
      raise InputError(f"--alpha must be in (0, 1), got {o.alpha}")
    if o.sigma is not None and not (math.isfinite(o.sigma) and o.sigma > 0):
      raise InputError(f"--sigma must be a finite number > 0, got {o.sigma}")
  if o.sigma is not None and not (math.isfinite(o.sigma) and o.sigma > 0):
    raise InputError(f"--sigma must be a finite number > 0, got {o.sigma}")
  common.check_denoiser_options(o.denoiser, o.denoiser_epoch)
  results.check_output_path(o.outfile, "--outfile")
  if o.examples:
    results.check_output_path(o.examples, "--examples")
  # The attack factories check their settings too: build them once now.
  if o.smoothed:
    attacks.smoothadv(lambda x: x, eps=0.0, steps=o.steps, step_size=o.step_size, norm=o.norm)
  else:
    _attack_factory(o)(0.0)(lambda x, y: y)
  return o


def _attack_factory(o: Options):
  """``eps -> loss_fn -> attack`` on the base classifier (``eps`` may be traced)."""
  if o.attack == "fgsm":
    return lambda eps: lambda loss_fn: attacks.fgsm(loss_fn, eps=eps, norm=o.norm)
  return lambda eps: (
    lambda loss_fn: attacks.pgd(
      loss_fn, eps=eps, norm=o.norm, steps=o.steps, step_size=o.step_size, restarts=o.restarts
    )
  )


def _settings(o: Options, run: common.Run, sigma) -> dict:
  """What the rows depend on: a resumed file must have been written with the same."""
  fgsm = o.attack == "fgsm"
  return common.settings({"program": "attack"}, run, o) | {
    "split": o.split,
    "smoothed": o.smoothed,
    "attack": "smoothadv" if o.smoothed else o.attack,
    "norm": o.norm,
    "eps": list(o.eps),
    "steps": None if fgsm else o.steps,
    "step_size": None if fgsm else o.step_size,
    "restarts": None if (fgsm or o.smoothed) else o.restarts,
    "seed": o.seed,
    "m": o.m if o.smoothed else None,
    "sigma": sigma,
    "n": o.n if o.smoothed else None,
    "alpha": o.alpha if o.smoothed else None,
  }


# --------------------------------------------------------------------------
# The computation: one jitted attack for all radii (eps is an argument).


@jax.jit
def _predict_base(model, xs):
  return jnp.argmax(model(xs), axis=-1)


def _base_attack(make_attack):
  """Jitted ``(model, xs, ys, keys, eps) -> (x_adv, predictions)`` for the base classifier."""

  def run(model, xs, ys, keys, eps):
    def loss_fn(x, y):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y)

    attack = make_attack(eps)(loss_fn)
    # One input at a time under vmap: each input's random start comes from its own key,
    # whatever batch it is in.
    x_adv = jax.vmap(lambda k, x, y: attack(k, x[None], y[None])[0])(keys, xs, ys)
    return x_adv, jnp.argmax(model(x_adv), axis=-1)

  return jax.jit(run)


def _smoothed_attack(noise_dist, m, steps, step_size, norm):
  """Jitted ``(model, xs, ys, keys, eps) -> x_adv``: SmoothAdv with per-input noise."""

  def run(model, xs, ys, keys, eps):
    draw = lambda k: losses.noise_batch(noise_dist, k, m, xs.shape[1:])
    samples = jax.vmap(draw, out_axes=1)(keys)  # (m, B, ...), fixed across the steps
    attack = attacks.smoothadv(model, eps=eps, steps=steps, step_size=step_size, norm=norm)
    return attack(xs, ys, samples)

  return jax.jit(run)


class _Evaluator:
  """Clean and adversarial predictions of fixed-size (padded) batches of inputs."""

  def __init__(self, o: Options, model, split, *, noise_dist, mesh):
    self.o = o
    self.model = model if mesh is None else parallel.replicate(model, mesh)
    self.split = split
    self.mesh = mesh
    self.base_key = jax.random.key(o.seed)
    devices = mesh.devices.size if mesh is not None else 1
    # --batch counts forward passes: with --smoothed each input needs m of them.
    size = max(1, o.batch // o.m) if o.smoothed else o.batch
    self.size = -(-size // devices) * devices
    if o.smoothed:
      self.noise = noise_dist
      self.attack = _smoothed_attack(self.noise, o.m, o.steps, o.step_size, o.norm)
    else:
      self.attack = _base_attack(_attack_factory(o))

  def _predict_smoothed(self, xs, keys):
    o = self.o
    return smoothing.predict_batch(
      self.model,
      xs,
      keys,
      noise=self.noise,
      n=o.n,
      alpha=o.alpha,
      batch_size=o.batch,
      mesh=self.mesh,
    )

  def __call__(self, idx: np.ndarray, keep_eps: int | None = None):
    """Evaluates inputs ``idx`` (at most ``self.size`` of them).

    Returns:
      ``(images, labels, clean_pred, adv_preds, x_adv)``: ``adv_preds`` is
      ``(len(eps), len(idx))``; ``x_adv`` the adversarial images at eps number
      ``keep_eps``, or None.
    """
    real = len(idx)
    images, labels = self.split.get(idx)
    # Pad to the fixed batch (copies of the last input, keyed by no dataset index) so
    # that every batch runs the same compiled computation.
    pad = self.size - real
    padded_idx = np.concatenate([idx, len(self.split) + np.arange(pad)]).astype(np.uint32)
    xs = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
    ys = np.concatenate([labels, np.repeat(labels[-1:], pad)])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(self.base_key, padded_idx)
    attack_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, votes.ATTACK)
    if self.mesh is not None:
      xs, ys = parallel.shard_batch((xs, ys), self.mesh)
    else:
      xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    if self.o.smoothed:
      clean_pred = self._predict_smoothed(xs, keys)
    else:
      clean_pred = np.asarray(_predict_base(self.model, xs))
    adv_preds, kept = [], None
    for j, eps in enumerate(self.o.eps):
      eps_keys = jax.vmap(jax.random.fold_in, (0, None))(attack_keys, j)
      if self.mesh is not None:
        eps_keys = jax.device_put(eps_keys, parallel.data_sharding(self.mesh))
      if self.o.smoothed:
        x_adv = self.attack(self.model, xs, ys, eps_keys, jnp.float32(eps))
        pred = self._predict_smoothed(x_adv, keys)
      else:
        x_adv, pred = self.attack(self.model, xs, ys, eps_keys, jnp.float32(eps))
        pred = np.asarray(pred)
      adv_preds.append(pred[:real])
      if j == keep_eps:
        kept = np.asarray(x_adv)[:real]
    return images, labels, clean_pred[:real], np.stack(adv_preds), kept


# --------------------------------------------------------------------------
# The program.


def run_attack(o: Options) -> dict:
  """Attacks (resuming) the inputs of ``o.workdir``'s split; writes ``o.outfile``.

  Prints the progress and the table; with ``o.examples`` writes the picture. Under
  ``jax.distributed`` each process attacks its share of the inputs into its own part
  file and process 0 merges them, prints and draws (:mod:`smoothjax.results.shares`).

  Returns:
    :func:`smoothjax.analysis.attacks.summarize` of the output file ({} on processes
    other than 0).

  Raises:
    InputError: bad settings (before anything is written), a missing workdir, or
      an output file written with other settings.
  """
  o = check_options(o)
  with numerics.precision_scope(o.precision):
    return _run_attack(o)


def _run_attack(o: Options) -> dict:
  run = common.restore(o.workdir, o.epoch, fold=o.fold_batchnorm, dtype=o.dtype)
  denoiser = common.load_denoiser(
    o.denoiser, o.denoiser_epoch, run, fold=o.fold_batchnorm, dtype=o.dtype
  )
  sigma = noise_dist = level = None
  dataset = run.dataset()
  # The smoothing noise: the run's family (config.noise; the denoiser's with one) at
  # --sigma, default its noise_sd. Without --smoothed a denoiser still needs its level.
  if o.smoothed or (denoiser is not None and (o.sigma is not None or denoiser.kind == "diffusion")):
    level = common.resolve_noise(
      *common.noise_source(run, denoiser),
      sigma=o.sigma,
      dim=math.prod(dataset.info.image_shape),
      advice="pass --sigma",
    )
  if o.smoothed:
    noise_dist = level
    sigma = noise_dist.sigma
  run = common.with_denoiser(run, denoiser, level)
  model = run.model
  split = dataset.split(o.split)
  indices = common.select(len(split), skip=o.skip, max_index=o.max, count=o.count, split=o.split)
  settings = _settings(o, run, sigma)
  settings["noise"] = noise_dist.spec if noise_dist is not None else None
  # Each process attacks its share on its own devices (see smoothjax.results.shares).
  local = jax.local_devices()
  mesh = parallel.make_mesh(local) if len(local) > 1 else None
  evaluate = _Evaluator(o, model, split, noise_dist=noise_dist, mesh=mesh)

  hints = {
    "model": "the checkpoint was retrained or replaced since the file was written",
    **transforms.EVALUATION_HINTS,
    **common.DENOISER_HINTS,
  }
  with shares.open_share(o.outfile, columns(o.eps), settings=settings, hints=hints) as share:
    results.check_inputs_unchanged(share.to_check, split, o.outfile, o.split)
    todo = share.todo(indices)
    mine = len(share.mine(indices))
    if len(todo) < mine:
      print(f"resuming: {mine - len(todo)} of {mine} inputs already in {o.outfile}")
    desc = "attack" if share.count == 1 else f"attack [{share.index}/{share.count}]"
    # SIGTERM is acted on between two batches of inputs (smoothjax.stopping).
    with tqdm(total=len(todo), desc=desc, unit="input") as bar, stopping.deferred():
      for start in range(0, len(todo), evaluate.size):
        stopping.check()
        idx = todo[start : start + evaluate.size]
        t0 = time.time()
        images, labels, clean_pred, adv_preds, _ = evaluate(idx)
        elapsed = (time.time() - t0) / len(idx)
        hashes = hashing.input_hashes(images, labels)
        for row, (i, label) in enumerate(zip(idx, labels, strict=True)):
          out = {"idx": int(i), "label": int(label), "predict": int(clean_pred[row])}
          out["correct"] = int(out["predict"] == int(label))
          for j, eps in enumerate(o.eps):
            name = analysis.attacks.eps_name(eps)
            out[f"predict_eps{name}"] = int(adv_preds[j, row])
            out[f"correct_eps{name}"] = int(adv_preds[j, row] == int(label))
          out["time"] = elapsed
          out[results.INPUT_HASH_COLUMN] = hashes[row]
          share.write(out)
        bar.update(len(idx))

  if share.index != 0:
    print(f"process {share.index}: its share is in {share.path}; process 0 merged the parts")
    return {}
  summary = analysis.attacks.summarize(o.outfile)
  name = f"{os.path.basename(o.outfile)} ({analysis.attacks.describe(settings)})"
  print(analysis.attacks.table({name: summary}), end="")
  if o.examples:
    _draw_examples(o, evaluate, indices)
    print(f"examples: {o.examples}")
  return summary


def _draw_examples(o: Options, evaluate: _Evaluator, indices) -> None:
  """Draws the first inputs clean and attacked at the largest eps, with the run's keys."""
  j = int(np.argmax(o.eps))
  first = indices[:_PICTURE_EXAMPLES]
  parts = [evaluate(first[s : s + evaluate.size], j) for s in range(0, len(first), evaluate.size)]
  clean, labels, clean_pred, adv_preds, adversarial = (
    np.concatenate([p[k] for p in parts], axis=1 if k == 3 else 0) for k in range(5)
  )
  what = "smoothed classifier, SmoothAdv" if o.smoothed else o.attack
  pictures.adversarial_examples(
    o.examples,
    clean,
    adversarial,
    labels,
    clean_pred,
    adv_preds[j],
    max_examples=_PICTURE_EXAMPLES,
    title=f"{what}, {o.norm} eps = {analysis.attacks.eps_name(o.eps[j])}",
  )


run = run_attack  # Every job's entry point has this name (smoothjax.jobs).
