"""Certify (or predict with) the smoothed classifier of a trained workdir, from Python.

What ``certify.py`` does, as a function: certify the inputs of a workdir's split
into a resumable TSV in Cohen et al.'s format (``idx label predict radius correct
time``, then ``p_lower count n radius_l1 radius_l2 radius_linf input_hash``),
PREDICT (Algorithm 2) with ``predict=True``, sequential CERTIFY with
``adaptive=True``; then the table and the plot. The options have the program's flag
names and defaults, and the file is the one the program writes for the same
settings, row for row::

  from smoothjax import jobs

  res = jobs.certify.run(jobs.certify.Options(
      workdir="workdirs/demo", outfile="results/demo.tsv", n=10_000, skip=20))
  print(res.idx, res.radius)

Calling it again resumes; it holds ``OUTFILE.lock`` meanwhile, records the settings
and the model's fingerprint beside the file and refuses to mix others, and under
``jax.distributed`` each process certifies its share into its own part
(:mod:`smoothjax.results.shares`). The process-wide settings (``--deterministic``, starting
multi-process JAX) are the caller's; ``precision`` applies inside the call only.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from smoothjax import analysis, hashing, locks, results, smoothing, stopping
from smoothjax.devices import numerics, parallel, sizing
from smoothjax.errors import InputError
from smoothjax.jobs import common
from smoothjax.models import transforms
from smoothjax.results import shares

# Forward passes that one vote-counting call can index (smoothing counts them in int32).
MAX_PASSES_PER_CALL = 2**31 - 1
FORMATS = ("markdown", "latex", "tsv")


@dataclasses.dataclass(frozen=True)
class Options:
  """The settings of one certification run; ``certify.py``'s flags have the same names.

  ``radii`` is a sequence of numbers here (the flag's comma-separated list).
  """

  workdir: str
  outfile: str
  n0: int = 100
  n: int = 100_000
  alpha: float = 0.001
  batch: int | None = None  # None: from the free device memory (sizing.auto_batch)
  inputs_per_step: int | None = None  # None: 1 on CPUs, several on accelerators
  skip: int = 1
  max: int = -1
  count: int | None = None
  split: str = "test"
  noise: str | None = None  # None: the training noise
  sigma: float | None = None  # None: the training noise_sd
  seed: int = 0
  epoch: int | None = None
  predict: bool = False
  adaptive: bool = False
  n_max: int | None = None
  radii: tuple[float, ...] | None = None
  target_radius: float | None = None
  tolerance: float | None = None
  futility: float = 0.01
  growth: float = 1.25
  first_look: int = 100
  plot: str | None = None  # None: OUTFILE.png
  format: str = "markdown"
  max_radius: float | None = None
  norm: str | None = None
  dtype: str = "float32"
  fold_batchnorm: bool = True
  precision: str = "default"
  denoiser: str | None = None  # a denoiser's workdir: certify classifier(denoiser(x))
  denoiser_epoch: int | None = None  # None: the denoiser's latest checkpoint


def estimation_samples(o: Options) -> int:
  """The estimation samples per input: ``n``, or ``n_max`` for sequential CERTIFY."""
  if o.adaptive and o.n_max is not None:
    return o.n_max
  return o.n


def samples_per_input(o: Options) -> int:
  """The forward passes one input takes (n0 + n; n for PREDICT)."""
  return o.n if o.predict else o.n0 + estimation_samples(o)


def inputs_per_step(o: Options) -> int:
  """``inputs_per_step``, or 1 on CPUs and several on accelerators, as one step can count."""
  if o.inputs_per_step is not None:
    return o.inputs_per_step
  room = (MAX_PASSES_PER_CALL - sizing.MAX_BATCH_PER_DEVICE * jax.local_device_count()) // max(
    samples_per_input(o), 1
  )
  return max(1, min(sizing.auto_inputs_per_step(), room))


def plot_path(o: Options) -> str:
  return o.plot or o.outfile + ".png"


def check_report_options(max_radius: float | None, fmt: str = "markdown") -> None:
  """The options of the table and the plot."""
  if max_radius is not None and not (math.isfinite(max_radius) and max_radius > 0):
    raise InputError(f"--max_radius must be a finite number > 0, got {max_radius}")
  if fmt not in FORMATS:
    raise InputError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def check_options(o: Options, num_devices: int | None = None) -> None:
  """Every setting of a certify or predict run, before anything is loaded or written.

  Raises:
    InputError: one line naming the setting (by its flag) and how to fix it.
  """
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  for name in ("workdir", "outfile"):
    if not getattr(o, name):
      raise InputError(f"--{name} is required")
  if o.n0 < 1 or o.n < 1:
    raise InputError(f"--n0 and --n must be >= 1, got n0={o.n0}, n={o.n}")
  _check_adaptive(o)
  if not 0 < o.alpha < 1:
    raise InputError(f"--alpha must be in (0, 1), got {o.alpha}")
  if o.batch is not None and o.batch < 1:
    raise InputError(f"--batch must be >= 1, got {o.batch}")
  if o.inputs_per_step is not None and o.inputs_per_step < 1:
    raise InputError(f"--inputs_per_step must be >= 1, got {o.inputs_per_step}")
  if o.skip < 1:
    raise InputError(f"--skip must be >= 1, got {o.skip}")
  if o.max < -1:
    raise InputError(f"--max must be a dataset index >= 0 (or -1: no bound), got {o.max}")
  if o.max == 0:
    raise InputError(
      "--max 0 selects no inputs: as in Cohen et al.'s certify.py, --max is a dataset index "
      "bound (inputs with index < max are certified); raise it, or use --count N for N inputs"
    )
  if o.count is not None and o.count < 1:
    raise InputError(f"--count must be >= 1, got {o.count}")
  # The family's own checks of its settings and scale.
  common.resolve_noise(None, o.workdir, spec=o.noise, sigma=o.sigma, check_only=True)
  if not 0 <= o.seed < 2**32:
    raise InputError(f"--seed must be in [0, 2^32), got {o.seed}")
  if o.epoch is not None and o.epoch < 0:
    raise InputError(f"--epoch must be >= 0, got {o.epoch}")
  common.check_denoiser_options(o.denoiser, o.denoiser_epoch)
  transforms.compute_dtype(o.dtype)
  numerics.check_precision(o.precision)
  # One vote-counting call takes inputs_per_step inputs of n0 + n samples each, padded by a batch.
  samples = samples_per_input(o)
  group = inputs_per_step(o)
  per_call = group * samples
  most = o.batch or sizing.MAX_BATCH_PER_DEVICE * num_devices
  batch = -(-min(most, per_call) // num_devices) * num_devices
  if per_call + batch > MAX_PASSES_PER_CALL:
    limit = MAX_PASSES_PER_CALL - batch
    if group == 1:
      raise InputError(
        f"{samples} noise samples per input (--n{'' if o.predict else ' plus --n0'}) are more "
        f"forward passes than one step can count ({limit}); lower --n"
      )
    raise InputError(
      f"--inputs_per_step {group} inputs of {samples} noise samples are {per_call} "
      f"forward passes in one step, more than it can count ({limit}); lower --inputs_per_step "
      "or --n"
    )
  check_report_options(o.max_radius, o.format)
  outfile = results.check_output_path(o.outfile, "--outfile")
  for sidecar, what in (
    (results.settings_path(outfile), "settings file"),
    (results.lock_path(outfile), "lock file"),
  ):
    if os.path.isdir(sidecar):
      raise InputError(f"the {what} {sidecar} of --outfile is a directory; move it away")
  if not o.predict:
    plot = results.check_output_path(plot_path(o), "--plot")
    if os.path.abspath(plot) == os.path.abspath(outfile):
      raise InputError("--plot names the --outfile; choose another path for the plot")


ADAPTIVE_ONLY = (
  "n_max",
  "radii",
  "target_radius",
  "tolerance",
  "futility",
  "growth",
  "first_look",
)


def _check_adaptive(o: Options) -> None:
  """The sequential CERTIFY settings: a goal to stop at, sensible looks."""
  if not o.adaptive:
    defaults = Options(workdir="", outfile="")
    for name in ADAPTIVE_ONLY:
      if getattr(o, name) != getattr(defaults, name):
        raise InputError(f"--{name} is a setting of sequential CERTIFY; add --adaptive or drop it")
    return
  if o.predict:
    raise InputError("--adaptive is a mode of CERTIFY, not of --predict; drop one of them")
  if estimation_samples(o) < 1:
    raise InputError(f"--n_max must be >= 1, got {estimation_samples(o)}")
  radii = None if o.radii is None else tuple(o.radii)
  if radii is not None and not radii:
    raise InputError("--radii is empty; e.g. --radii 0,0.25,0.5")
  if radii is not None and o.target_radius is not None:
    raise InputError("--radii and --target_radius both name where to stop; pass one of them")
  if radii is None and o.target_radius is None and o.tolerance is None:
    raise InputError(
      "--adaptive needs a goal to stop at: --radii 0,0.25,0.5, --target_radius R or --tolerance T"
    )
  values = [("--radii", r) for r in radii or ()]
  values += [("--target_radius", o.target_radius), ("--tolerance", o.tolerance)]
  for name, value in values:
    if value is not None and not (math.isfinite(value) and value >= 0):
      raise InputError(f"{name} must be finite numbers >= 0, got {value}")
  if not 0 < o.futility < 1:
    raise InputError(f"--futility must be in (0, 1), got {o.futility}")
  if not (math.isfinite(o.growth) and o.growth > 1):
    raise InputError(f"--growth must be a number > 1, got {o.growth}")
  if o.first_look < 1:
    raise InputError(f"--first_look must be >= 1, got {o.first_look}")


def run(o: Options) -> results.Results | None:
  """Certifies (resuming) the selected inputs of ``o.workdir``'s split into ``o.outfile``.

  Prints the progress, then the table of certified accuracy (accuracy and abstentions
  with ``predict``) and writes the plot.

  Returns:
    The result file as read back (:func:`smoothjax.results.read_results`); None on
    the processes of a multi-process job other than process 0.

  Raises:
    InputError: bad settings (before anything is written), a missing workdir, or an
      output file of other settings, another model or other inputs.
  """
  check_options(o)
  with numerics.precision_scope(o.precision):
    return _run(o)


def _run(o: Options) -> results.Results | None:
  outfile = o.outfile
  run = common.restore(o.workdir, o.epoch, fold=o.fold_batchnorm, dtype=o.dtype)
  denoiser = common.load_denoiser(
    o.denoiser, o.denoiser_epoch, run, fold=o.fold_batchnorm, dtype=o.dtype
  )
  dataset = run.dataset()
  noise_dist = common.resolve_noise(
    *common.noise_source(run, denoiser),
    spec=o.noise,
    sigma=o.sigma,
    dim=math.prod(dataset.info.image_shape),
  )
  run = common.with_denoiser(run, denoiser, noise_dist)
  model = run.model
  split = dataset.split(o.split)
  indices = common.select(len(split), skip=o.skip, max_index=o.max, count=o.count, split=o.split)
  columns = (
    (*results.PREDICT_COLUMNS, results.INPUT_HASH_COLUMN)
    if o.predict
    else (
      *results.CERTIFY_COLUMNS,
      "p_lower",
      "count",
      "n",
      *results.RADIUS_COLUMNS.values(),
      *(("samples", "stop") if o.adaptive else ()),
      results.INPUT_HASH_COLUMN,
    )
  )
  settings = common.settings(
    {"mode": "predict" if o.predict else "certify"}, run, o, model_key="model_fingerprint"
  )
  settings |= {
    "split": o.split,
    "noise": noise_dist.spec,
    "noise_norm": noise_dist.norm,
    "noise_scale": noise_dist.std,
    "n": estimation_samples(o),
    "alpha": o.alpha,
    "seed": o.seed,
  }
  if not o.predict:
    settings["n0"] = o.n0
  if o.adaptive:
    settings.update(
      mode="certify_adaptive",
      radii=None if o.radii is None else list(o.radii),
      target_radius=o.target_radius,
      tolerance=o.tolerance,
      futility=o.futility,
      growth=o.growth,
      first_look=o.first_look,
    )
  hints = {
    "model_fingerprint": (
      f"the checkpoint in {o.workdir} holds other parameters than the model certified "
      "there (the workdir was retrained or replaced)"
    ),
    "dataset": "the workdir's config names another dataset",
    "noise": "the noise (--noise and --sigma, default the training noise) differs",
    "noise_scale": "the noise level (--sigma, default the training noise_sd) differs",
    "mode": "one file holds the certificates of one mode (--predict, --adaptive)",
    **transforms.EVALUATION_HINTS,
    **common.DENOISER_HINTS,
  }
  with shares.open_share(outfile, columns, settings=settings, hints=hints) as share:
    results.check_inputs_unchanged(share.to_check, split, outfile, o.split)
    batch = o.batch or sizing.auto_batch(model, dataset.info.image_shape)
    _certify(o, model, split, indices, share, noise_dist, batch)
  if share.index != 0:
    print(f"process {share.index}: its share is in {share.path}; process 0 merged the parts")
    return None
  res = results.read_results(outfile)
  if o.predict:
    accuracy, abstain = np.mean(res.correct), np.mean(res.predict < 0)
    print(f"accuracy {accuracy:.4f}, abstain {abstain:.4f} on {len(res.idx)} inputs")
    return res
  if o.adaptive:
    _report_samples(o, res)
  report([outfile], plot_path(o), norm=o.norm, fmt=o.format, max_radius=o.max_radius)
  return res


def _report_samples(o: Options, res) -> None:
  """Forward passes sequential CERTIFY spent against fixed-n CERTIFY with n = n_max."""
  n_max = estimation_samples(o)
  spent = int(np.sum(res.extra["samples"])) + o.n0 * len(res.idx)
  fixed = (o.n0 + n_max) * len(res.idx)
  stops = collections.Counter(res.extra["stop"])
  print(
    f"forward passes: {spent:,} on {len(res.idx)} inputs ({spent / len(res.idx):,.0f} each), "
    f"against {fixed:,} for fixed-n CERTIFY with n = n_max = {n_max:,}: "
    f"{fixed / spent:.1f}x fewer"
  )
  print("stopped: " + ", ".join(f"{reason} {count}" for reason, count in stops.most_common()))


def _certify(o: Options, model, split, indices, share, noise_dist, batch) -> None:
  """Certifies (or predicts) this process's share of ``indices`` not done yet, writing each row."""
  todo = share.todo(indices)
  mine = len(share.mine(indices))
  where = share.outfile if share.count == 1 else f"{share.outfile} and its parts"
  if len(todo) < mine:
    print(f"resuming: {mine - len(todo)} of {mine} inputs already in {where}")
  if share.count > 1:
    print(f"process {share.index} of {share.count}: {len(todo)} inputs into {share.path}")
  # The eval-mode model is a pytree: its weights are jit arguments, not compiled-in constants.
  logits_fn = model
  # Each process certifies on its own devices: no process waits on another between inputs.
  local = jax.local_devices()
  mesh = parallel.make_mesh(local) if len(local) > 1 else None
  base_key = jax.random.key(o.seed)
  group = inputs_per_step(o)
  n_est = estimation_samples(o)
  radii = None if o.radii is None else list(o.radii)
  common = dict(noise=noise_dist, alpha=o.alpha, batch_size=batch, mesh=mesh)
  desc = "predict" if o.predict else "certify"
  if share.count > 1:
    desc += f" [{share.index}/{share.count}]"
  # SIGTERM is acted on between two groups of inputs (smoothjax.stopping).
  with tqdm(total=len(todo), desc=desc, unit="input") as bar, stopping.deferred():
    for start in range(0, len(todo), group):
      stopping.check()
      idx = todo[start : start + group]
      images, labels = split.get(idx)
      hashes = hashing.input_hashes(images, labels)
      keys = jax.vmap(jax.random.fold_in, (None, 0))(base_key, idx.astype(np.uint32))
      t0 = time.time()
      if o.predict:
        preds = smoothing.predict_batch(logits_fn, images, keys, n=o.n, **common)
        outs = [{"predict": int(p)} for p in preds]
      else:
        if o.adaptive:
          certs = smoothing.certify_adaptive_batch(
            logits_fn,
            images,
            keys,
            n0=o.n0,
            n_max=n_est,
            radii=radii,
            target_radius=o.target_radius,
            tolerance=o.tolerance,
            futility=o.futility,
            growth=o.growth,
            first=o.first_look,
            **common,
          )
        else:
          certs = smoothing.certify_batch(logits_fn, images, keys, n0=o.n0, n=o.n, **common)
        outs = [
          {
            "predict": c.prediction,
            "radius": c.radius,
            "p_lower": c.p_lower,
            # The votes of the class that p_lower bounds, abstention or not.
            "count": int(c.counts[c.top_class]),
            "n": n_est,
            **{column: c.radii[norm] for norm, column in results.RADIUS_COLUMNS.items()},
            **({"samples": c.samples, "stop": c.stop} if o.adaptive else {}),
          }
          for c in certs
        ]
      elapsed = (time.time() - t0) / len(idx)
      for i, label, out, digest in zip(idx, labels, outs, hashes, strict=True):
        row = {"idx": int(i), "label": int(label), **out}
        row["correct"] = int(out["predict"] == int(label))
        row["time"] = elapsed
        row[results.INPUT_HASH_COLUMN] = digest
        share.write(row)
      bar.update(len(idx))


# --------------------------------------------------------------------------
# The table and the plot of one or several result files.


def merge(outfile: str) -> int:
  """Merges the part files of a multi-process run into ``outfile``, rows sorted by idx.

  Returns:
    The number of rows merged (0 when there are no parts: nothing to merge).
  """
  outfile = results.check_output_path(outfile, "merge OUTFILE")
  parts = results.part_paths(outfile)
  if not parts:
    if not os.path.lexists(outfile):
      raise InputError(f"{outfile} does not exist and has no parts ({outfile}.part-I-of-N)")
    print(f"{outfile} has no part files: nothing to merge")
    return 0
  with locks.exclusive(results.lock_path(outfile), f"--outfile {outfile}"):
    rows = results.merge_parts(outfile)
  print(f"merged {len(parts)} part files into {outfile}: {rows} rows, sorted by idx")
  return rows


def _settings_of(path) -> dict:
  """A result file's settings, or {} (Cohen et al.'s files, a damaged settings file)."""
  try:
    return results.read_settings(path) or {}
  except InputError:
    return {}  # Named by its file alone; the rows are what the table is about.


def run_names(paths, settings):
  """Table and legend names: file names (whole paths if those clash), with the settings."""
  names = [os.path.basename(p) for p in paths]
  if len(set(names)) < len(names):
    names = list(paths)
  out = []
  for name, s in zip(names, settings, strict=True):
    # Older files recorded the Gaussian noise as "sigma" and the family alone as "noise".
    scale = s.get("noise_scale", s.get("sigma"))
    spec = s.get("noise", "gaussian")
    if isinstance(scale, int | float) and isinstance(s.get("n"), int):
      noise_name = spec if ":" in str(spec) else f"{spec}:{scale:g}"
      n = "n_max" if s.get("mode") == "certify_adaptive" else "n"
      name += f" ({noise_name}, {n}={s['n']})"
    out.append(name)
  return out


def report(
  paths,
  plot: str | None,
  *,
  norm: str | None = None,
  fmt: str = "markdown",
  max_radius: float | None = None,
) -> None:
  """Prints the certified-accuracy table of result files ``paths`` and writes the plot.

  Args:
    paths: result files (ours or Cohen et al.'s).
    plot: PNG path of the plot, or None for none.
    norm: the norm of the radii (default: each file's own radius column).
    fmt: the table's format (``markdown``, ``latex``, ``tsv``).
    max_radius: the largest radius in table and plot (default: from the radii).
  """
  settings = [_settings_of(p) for p in paths]  # read once, for names and norms
  loaded = {}
  for name, path in zip(run_names(paths, settings), paths, strict=True):
    res = results.read_results(path)
    loaded[name] = res if norm is None else analysis.in_norm(res, norm)
  if norm is None:
    # Each file's radius column is in its noise's primary norm; name it if they agree.
    primaries = {analysis.primary_norm(s) for s in settings}
    norm_label = primaries.pop() if len(primaries) == 1 else "each file's primary norm"
  else:
    norm_label = norm
  if max_radius is None:
    radii = np.concatenate([r.radius for r in loaded.values()])
    top = float(np.nanmax(radii, initial=0.0)) if radii.size else 0.0
    max_radius = analysis.default_max_radius(top)
  radii = analysis.default_radii(max_radius, analysis.radius_step(max_radius))
  print(f"certified accuracy (%) against radius in {norm_label}")
  print(analysis.table(loaded, radii, fmt=fmt))
  for name, res in loaded.items():
    samples = np.asarray(res.extra.get("samples", ()))
    if samples.size and np.issubdtype(samples.dtype, np.number):
      # Sequential CERTIFY's files: what the inputs cost.
      print(
        f"{name}: estimation samples per input: mean {samples.mean():,.0f}, median "
        f"{np.median(samples):,.0f}, max {samples.max():,.0f}"
      )
  if plot:
    analysis.plot_certified_accuracy(loaded, plot, max_radius=max_radius, norm=norm_label)
    print(f"plot: {plot}")
