"""Certifies (or predicts with) the smoothed classifier of a trained workdir.

Certify the test split (Cohen et al. 2019, Algorithm 1), one TSV row per input
in Cohen et al.'s format ``idx label predict radius correct time`` (then
``p_lower count n input_hash``); rerunning the same command resumes where it
stopped::

  python certify.py --workdir workdirs/demo --outfile results/demo.tsv \
      --n0 100 --n 100000 --alpha 0.001 --batch 1000 --skip 20

Options keep the names and meanings of Cohen et al.'s ``certify.py``: ``--skip
20 --max 400`` certifies the inputs 0, 20, ..., 380 (``--max`` bounds the
dataset index); ``--count N`` certifies at most N of the selected inputs.

Sequential CERTIFY (``smoothing.certify_adaptive``) spends on each input only the
samples it needs, with the same guarantee; the TSV gains ``samples`` (estimation samples
spent) and ``stop`` (why it stopped) columns, and ``n`` holds ``n_max``::

  python certify.py --workdir workdirs/demo --outfile results/seq.tsv --adaptive \
      --radii 0,0.25,0.5,0.75 --n_max 100000 --alpha 0.001

``--target_radius R`` asks only "certified at R?", ``--tolerance T`` stops an input once
``n_max`` samples could raise its radius by at most T.

Predict mode (Algorithm 2) writes ``idx label predict correct time input_hash``::

  python certify.py --workdir workdirs/demo --outfile results/pred.tsv --predict --n 1000

Tables and one plot from several result files, ours or Cohen et al.'s::

  python certify.py analyze results/a.tsv results/b.tsv --plot curves.png --format latex

How the model is evaluated: BatchNorm folded into its convolutions (``--fold_batchnorm``,
default on), in ``--dtype`` float32 or bfloat16, at ``--precision``; the certificates are
for the model as evaluated, and the settings file records all three. ``--batch`` defaults
to what half the free device memory holds (1000 on CPUs)::

  python certify.py --workdir workdirs/cifar --outfile results/bf16.tsv --dtype bfloat16

What a result file can be trusted for: one process writes it at a time (it
holds ``OUTFILE.lock``); its settings file records the settings, the noise and a
fingerprint of the model's parameters, and each row the hash of its input, so a
rerun resumes only onto rows of the same model, data and settings.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from tqdm.auto import tqdm

from smoothjax import (
  analysis,
  checkpointing,
  locks,
  noise,
  parallel,
  results,
  shares,
  sizing,
  smoothing,
  stopping,
)
from smoothjax import data as data_lib
from smoothjax.cli.common import define_evaluation_flags, run_app
from smoothjax.errors import InputError

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained run to certify (from train.py).")
_OUTFILE = flags.DEFINE_string("outfile", None, "Output TSV; an existing one is resumed.")
_N0 = flags.DEFINE_integer("n0", 100, "Noise samples to select the top class.")
_N = flags.DEFINE_integer("n", 100_000, "Noise samples to estimate its probability.")
_ALPHA = flags.DEFINE_float("alpha", 0.001, "Failure probability of each certificate.")
_BATCH = flags.DEFINE_integer(
  "batch",
  None,
  "Forward passes per step, over this process's devices. Default: as many as half the free "
  f"device memory holds (measured on the model), {sizing.CPU_BATCH} on CPUs.",
)
_INPUTS = flags.DEFINE_integer(
  "inputs_per_step",
  None,
  "Inputs certified together per step (larger helps accelerators). Default: 1 on CPUs, "
  f"{sizing.ACCELERATOR_INPUTS} on accelerators.",
)
_SKIP = flags.DEFINE_integer("skip", 1, "Certify every skip-th input.")
_MAX = flags.DEFINE_integer(
  "max", -1, "Stop at this dataset index, as Cohen et al.'s --max (-1: the whole split)."
)
_COUNT = flags.DEFINE_integer("count", None, "Certify at most this many of the selected inputs.")
_SPLIT = flags.DEFINE_string("split", "test", "Dataset split to certify.")
_NOISE = flags.DEFINE_string(
  "noise",
  None,
  "Noise family and scale (sigma), e.g. gaussian:0.25, laplace:0.5, uniform:0.5, "
  "expinf:0.5:k=1:j=0; a family alone takes --sigma or the training noise_sd. "
  "Default: the training noise.",
)
_SIGMA = flags.DEFINE_float("sigma", None, "Noise level (sigma); default: the training noise_sd.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the certification noise.")
_EPOCH = flags.DEFINE_integer("epoch", None, "Checkpoint epoch (default: latest).")
_PREDICT = flags.DEFINE_boolean("predict", False, "Run PREDICT instead of CERTIFY.")
_ADAPTIVE = flags.DEFINE_boolean(
  "adaptive", False, "Sequential CERTIFY: stop each input once it has what is asked of it."
)
_N_MAX = flags.DEFINE_integer(
  "n_max", None, "With --adaptive: the most estimation samples per input (default: --n)."
)
_RADII = flags.DEFINE_list(
  "radii", None, "With --adaptive: the radii certified accuracy will be read at, e.g. 0,0.5,1."
)
_TARGET = flags.DEFINE_float(
  "target_radius", None, "With --adaptive: the one radius asked about (not with --radii)."
)
_TOLERANCE = flags.DEFINE_float(
  "tolerance", None, "With --adaptive: stop once n_max samples could add at most this radius."
)
_FUTILITY = flags.DEFINE_float(
  "futility", 0.01, "With --adaptive: level of the upper bound that calls a goal out of reach."
)
_GROWTH = flags.DEFINE_float("growth", 1.25, "With --adaptive: ratio of consecutive looks.")
_FIRST_LOOK = flags.DEFINE_integer("first_look", 100, "With --adaptive: samples at the first look.")
_PLOT = flags.DEFINE_string("plot", None, "PNG path for the plot (default: OUTFILE.png).")
_FORMAT = flags.DEFINE_enum("format", "markdown", ["markdown", "latex", "tsv"], "Table format.")
_MAX_RADIUS = flags.DEFINE_float("max_radius", None, "Largest radius in table and plot.")
_EVALUATION = define_evaluation_flags()
_NORM = flags.DEFINE_enum(
  "norm",
  None,
  list(noise.NORMS),
  "Norm of the radii in table and plot (default: each file's own radius column, the "
  "primary norm of its noise: l2 for Gaussian, l1 for Laplace and uniform).",
)

# Forward passes that one vote-counting call can index (smoothing counts them in int32).
_MAX_PASSES_PER_CALL = 2**31 - 1

_ADAPTIVE_ONLY = (
  "n_max",
  "radii",
  "target_radius",
  "tolerance",
  "futility",
  "growth",
  "first_look",
)
_CERTIFY_ONLY = (
  "workdir",
  "outfile",
  "n0",
  "n",
  "alpha",
  "batch",
  "inputs_per_step",
  "skip",
  "max",
  "count",
  "split",
  "noise",
  "sigma",
  "seed",
  "epoch",
  "predict",
  "adaptive",
  "dtype",
  "fold_batchnorm",
  "precision",
  "deterministic",
  *_ADAPTIVE_ONLY,
)
_REPORT_ONLY = ("plot", "format", "max_radius", "norm")


def _present(name: str) -> bool:
  return flags.FLAGS[name].present > 0


def _check_report_flags() -> None:
  if _MAX_RADIUS.value is not None and not (
    math.isfinite(_MAX_RADIUS.value) and _MAX_RADIUS.value > 0
  ):
    raise InputError(f"--max_radius must be a finite number > 0, got {_MAX_RADIUS.value}")


def _check_certify_flags(num_devices: int) -> None:
  """Every flag of a certify or predict run, before anything is loaded or written."""
  for name, flag in (("--workdir", _WORKDIR), ("--outfile", _OUTFILE)):
    if not flag.value:
      raise InputError(f"{name} is required")
  predict = _PREDICT.value
  if predict:
    for name in ("n0", *_REPORT_ONLY):
      if _present(name):
        what = "PREDICT draws only --n samples" if name == "n0" else "predict files have no radii"
        raise InputError(f"--{name} has no effect with --predict ({what}); drop it")
  if _N0.value < 1 or _N.value < 1:
    raise InputError(f"--n0 and --n must be >= 1, got n0={_N0.value}, n={_N.value}")
  _check_adaptive_flags()
  if not 0 < _ALPHA.value < 1:
    raise InputError(f"--alpha must be in (0, 1), got {_ALPHA.value}")
  if _BATCH.value is not None and _BATCH.value < 1:
    raise InputError(f"--batch must be >= 1, got {_BATCH.value}")
  if _INPUTS.value is not None and _INPUTS.value < 1:
    raise InputError(f"--inputs_per_step must be >= 1, got {_INPUTS.value}")
  if _SKIP.value < 1:
    raise InputError(f"--skip must be >= 1, got {_SKIP.value}")
  if _MAX.value < -1:
    raise InputError(f"--max must be a dataset index >= 0 (or -1: no bound), got {_MAX.value}")
  if _MAX.value == 0:
    raise InputError(
      "--max 0 selects no inputs: as in Cohen et al.'s certify.py, --max is a dataset index "
      "bound (inputs with index < max are certified); raise it, or use --count N for N inputs"
    )
  if _COUNT.value is not None and _COUNT.value < 1:
    raise InputError(f"--count must be >= 1, got {_COUNT.value}")
  _noise(None, check_only=True)  # The family's own checks of its settings and scale.
  if not 0 <= _SEED.value < 2**32:
    raise InputError(f"--seed must be in [0, 2^32), got {_SEED.value}")
  if _EPOCH.value is not None and _EPOCH.value < 0:
    raise InputError(f"--epoch must be >= 0, got {_EPOCH.value}")
  # One vote-counting call takes inputs_per_step inputs of n0 + n samples each, padded by a batch.
  samples = _samples()
  per_call = _inputs_per_step() * samples
  most = _BATCH.value or sizing.MAX_BATCH_PER_DEVICE * num_devices
  batch = -(-min(most, per_call) // num_devices) * num_devices
  if per_call + batch > _MAX_PASSES_PER_CALL:
    limit = _MAX_PASSES_PER_CALL - batch
    if _inputs_per_step() == 1:
      raise InputError(
        f"{samples} noise samples per input (--n{'' if predict else ' plus --n0'}) are more "
        f"forward passes than one step can count ({limit}); lower --n"
      )
    raise InputError(
      f"--inputs_per_step {_inputs_per_step()} inputs of {samples} noise samples are {per_call} "
      f"forward passes in one step, more than it can count ({limit}); lower --inputs_per_step "
      "or --n"
    )
  _check_report_flags()
  outfile = results.check_output_path(_OUTFILE.value, "--outfile")
  for sidecar, what in (
    (results.settings_path(outfile), "settings file"),
    (results.lock_path(outfile), "lock file"),
  ):
    if os.path.isdir(sidecar):
      raise InputError(f"the {what} {sidecar} of --outfile is a directory; move it away")
  if not predict:
    plot = results.check_output_path(_plot_path(), "--plot")
    if os.path.abspath(plot) == os.path.abspath(outfile):
      raise InputError("--plot names the --outfile; choose another path for the plot")


def _check_adaptive_flags() -> None:
  """The sequential CERTIFY flags: only with --adaptive, and a goal to stop at."""
  if not _ADAPTIVE.value:
    for name in _ADAPTIVE_ONLY:
      if _present(name):
        raise InputError(f"--{name} is a setting of sequential CERTIFY; add --adaptive or drop it")
    return
  if _PREDICT.value:
    raise InputError("--adaptive is a mode of CERTIFY, not of --predict; drop one of them")
  if _present("n") and _present("n_max"):
    raise InputError("--adaptive takes its sample budget from --n_max (default --n); drop --n")
  if _n() < 1:
    raise InputError(f"--n_max must be >= 1, got {_n()}")
  radii = _radii()
  if radii is not None and _TARGET.value is not None:
    raise InputError("--radii and --target_radius both name where to stop; pass one of them")
  if radii is None and _TARGET.value is None and _TOLERANCE.value is None:
    raise InputError(
      "--adaptive needs a goal to stop at: --radii 0,0.25,0.5, --target_radius R or --tolerance T"
    )
  values = [("--radii", r) for r in radii or ()]
  values += [("--target_radius", _TARGET.value), ("--tolerance", _TOLERANCE.value)]
  for name, value in values:
    if value is not None and not (math.isfinite(value) and value >= 0):
      raise InputError(f"{name} must be finite numbers >= 0, got {value}")
  if not 0 < _FUTILITY.value < 1:
    raise InputError(f"--futility must be in (0, 1), got {_FUTILITY.value}")
  if not (math.isfinite(_GROWTH.value) and _GROWTH.value > 1):
    raise InputError(f"--growth must be a number > 1, got {_GROWTH.value}")
  if _FIRST_LOOK.value < 1:
    raise InputError(f"--first_look must be >= 1, got {_FIRST_LOOK.value}")


def _samples() -> int:
  """The forward passes one input takes (n0 + n; n for PREDICT)."""
  return _N.value if _PREDICT.value else _N0.value + _n()


def _inputs_per_step() -> int:
  """--inputs_per_step, or 1 on CPUs and several on accelerators, as one step can count."""
  if _INPUTS.value is not None:
    return _INPUTS.value
  room = (_MAX_PASSES_PER_CALL - sizing.MAX_BATCH_PER_DEVICE * jax.local_device_count()) // max(
    _samples(), 1
  )
  return max(1, min(sizing.auto_inputs_per_step(), room))


def _radii() -> list[float] | None:
  if _RADII.value is None:
    return None
  try:
    radii = [float(r) for r in _RADII.value]
  except ValueError:
    raise InputError(
      f"--radii must be numbers, got {','.join(_RADII.value)}; e.g. --radii 0,0.25,0.5"
    ) from None
  if not radii:
    raise InputError("--radii is empty; e.g. --radii 0,0.25,0.5")
  return radii


def _n() -> int:
  """The estimation samples per input: --n, or --n_max for sequential CERTIFY."""
  if _ADAPTIVE.value and _N_MAX.value is not None:
    return _N_MAX.value
  return _N.value


def _plot_path() -> str:
  return _PLOT.value or _OUTFILE.value + ".png"


def _noise(config, *, dim: int | None = None, check_only: bool = False) -> noise.Noise:
  """The certification noise: --noise and --sigma, else the run's training noise.

  With ``check_only`` (before the workdir is read) the flags alone are checked, a
  scale left to the training run standing in as 1.
  """
  if _SIGMA.value is not None:
    try:
      noise.Gaussian(sigma=_SIGMA.value)  # Every family's bounds on sigma are these.
    except InputError as e:
      raise InputError(f"--sigma {_SIGMA.value}: {e}") from None
  spec = _NOISE.value
  default = 1.0 if check_only else None
  if not check_only and (spec is None or _SIGMA.value is None):
    sd = config.get("noise_sd")
    where = f"config.json of {_WORKDIR.value}"
    if isinstance(sd, bool) or not isinstance(sd, int | float) or not math.isfinite(sd):
      raise InputError(f"{where} has noise_sd = {sd!r}, not a noise level; pass --sigma")
    if sd < 0:
      raise InputError(f"{where} has noise_sd = {sd}, which is negative; pass --sigma")
    default = float(sd) if sd > 0 else None
    if spec is None:
      spec = config.get("noise", "gaussian")
  if check_only and spec is None:
    spec = "gaussian"
  try:
    return noise.parse(spec, sigma=_SIGMA.value, default_sigma=default, dim=dim)
  except InputError as e:
    if "has no scale" in str(e):
      raise InputError(
        "the run was trained without noise (noise_sd = 0); pass --sigma or --noise FAMILY:SIGMA"
      ) from None
    flag = f"--noise {_NOISE.value}" if _NOISE.value else "the training noise (config.noise)"
    raise InputError(f"{flag}: {e}") from None


def _select(num_inputs: int) -> np.ndarray:
  """Cohen et al.'s selection: every skip-th index below max; then the first --count."""
  indices = np.arange(0, num_inputs, _SKIP.value)
  if _MAX.value >= 0:
    indices = indices[indices < _MAX.value]
  if _COUNT.value is not None:
    indices = indices[: _COUNT.value]
  if not len(indices):
    raise InputError(
      f"--skip {_SKIP.value} --max {_MAX.value} selects none of the {num_inputs} inputs of "
      f"split {_SPLIT.value!r}; lower --skip or raise --max"
    )
  return indices


def certify_main():
  _check_certify_flags(jax.local_device_count())
  outfile = _OUTFILE.value
  predict_mode = _PREDICT.value
  model, config, info, meta = checkpointing.restore_model(_WORKDIR.value, _EPOCH.value)
  del info
  fingerprint = results.fingerprint(nnx.state(model))  # Of the trained model, as saved.
  model = _EVALUATION.prepare(model)
  dataset = data_lib.load(config.dataset, data_dir=config.get("data_dir") or None)
  noise_dist = _noise(config, dim=math.prod(dataset.info.image_shape))
  split = dataset.split(_SPLIT.value)
  indices = _select(len(split))
  columns = (
    (*results.PREDICT_COLUMNS, results.INPUT_HASH_COLUMN)
    if predict_mode
    else (
      *results.CERTIFY_COLUMNS,
      "p_lower",
      "count",
      "n",
      *results.RADIUS_COLUMNS.values(),
      *(("samples", "stop") if _ADAPTIVE.value else ()),
      results.INPUT_HASH_COLUMN,
    )
  )
  settings = {
    "mode": "predict" if predict_mode else "certify",
    "workdir": os.path.abspath(_WORKDIR.value),
    "epoch": int(meta["epoch"]),
    "step": int(meta["step"]),
    "model_fingerprint": fingerprint,
    **_EVALUATION.settings(),
    "dataset": str(config.dataset),
    "split": _SPLIT.value,
    "noise": noise_dist.spec,
    "noise_norm": noise_dist.norm,
    "noise_scale": noise_dist.std,
    "n": _n(),
    "alpha": _ALPHA.value,
    "seed": _SEED.value,
  }
  if not predict_mode:
    settings["n0"] = _N0.value
  if _ADAPTIVE.value:
    settings.update(
      mode="certify_adaptive",
      radii=_radii(),
      target_radius=_TARGET.value,
      tolerance=_TOLERANCE.value,
      futility=_FUTILITY.value,
      growth=_GROWTH.value,
      first_look=_FIRST_LOOK.value,
    )
  hints = {
    "model_fingerprint": (
      f"the checkpoint in {_WORKDIR.value} holds other parameters than the model certified "
      "there (the workdir was retrained or replaced)"
    ),
    "dataset": "the workdir's config names another dataset",
    "noise": "the noise (--noise and --sigma, default the training noise) differs",
    "noise_scale": "the noise level (--sigma, default the training noise_sd) differs",
    "mode": "one file holds the certificates of one mode (--predict, --adaptive)",
    **_EVALUATION.hints,
  }
  with shares.open_share(outfile, columns, settings=settings, hints=hints) as share:
    results.check_inputs_unchanged(share.to_check, split, outfile, _SPLIT.value)
    batch = _BATCH.value or sizing.auto_batch(model, dataset.info.image_shape)
    _run(model, split, indices, share, noise_dist, predict_mode, batch)
  if share.index != 0:
    print(f"process {share.index}: its share is in {share.path}; process 0 merged the parts")
    return
  if predict_mode:
    res = results.read_results(outfile)
    accuracy, abstain = np.mean(res.correct), np.mean(res.predict < 0)
    print(f"accuracy {accuracy:.4f}, abstain {abstain:.4f} on {len(res.idx)} inputs")
    return
  if _ADAPTIVE.value:
    _report_samples(results.read_results(outfile))
  _report([outfile], _plot_path())


def _report_samples(res) -> None:
  """Forward passes sequential CERTIFY spent against fixed-n CERTIFY with n = n_max."""
  spent = int(np.sum(res.extra["samples"])) + _N0.value * len(res.idx)
  fixed = (_N0.value + _n()) * len(res.idx)
  stops = collections.Counter(res.extra["stop"])
  print(
    f"forward passes: {spent:,} on {len(res.idx)} inputs ({spent / len(res.idx):,.0f} each), "
    f"against {fixed:,} for fixed-n CERTIFY with n = n_max = {_n():,}: "
    f"{fixed / spent:.1f}x fewer"
  )
  print("stopped: " + ", ".join(f"{reason} {count}" for reason, count in stops.most_common()))


def _run(model, split, indices, share, noise_dist, predict_mode, batch) -> None:
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
  base_key = jax.random.key(_SEED.value)
  group = _inputs_per_step()
  common = dict(noise=noise_dist, alpha=_ALPHA.value, batch_size=batch, mesh=mesh)
  desc = "predict" if predict_mode else "certify"
  if share.count > 1:
    desc += f" [{share.index}/{share.count}]"
  # SIGTERM is acted on between two groups of inputs (smoothjax.stopping).
  with tqdm(total=len(todo), desc=desc, unit="input") as bar, stopping.deferred():
    for start in range(0, len(todo), group):
      stopping.check()
      idx = todo[start : start + group]
      images, labels = split.get(idx)
      hashes = results.input_hashes(images, labels)
      keys = jax.vmap(jax.random.fold_in, (None, 0))(base_key, idx.astype(np.uint32))
      t0 = time.time()
      if predict_mode:
        preds = smoothing.predict_batch(logits_fn, images, keys, n=_N.value, **common)
        outs = [{"predict": int(p)} for p in preds]
      else:
        if _ADAPTIVE.value:
          certs = smoothing.certify_adaptive_batch(
            logits_fn,
            images,
            keys,
            n0=_N0.value,
            n_max=_n(),
            radii=_radii(),
            target_radius=_TARGET.value,
            tolerance=_TOLERANCE.value,
            futility=_FUTILITY.value,
            growth=_GROWTH.value,
            first=_FIRST_LOOK.value,
            **common,
          )
        else:
          certs = smoothing.certify_batch(
            logits_fn, images, keys, n0=_N0.value, n=_N.value, **common
          )
        outs = [
          {
            "predict": c.prediction,
            "radius": c.radius,
            "p_lower": c.p_lower,
            # The votes of the class that p_lower bounds, abstention or not.
            "count": int(c.counts[c.top_class]),
            "n": _n(),
            **{column: c.radii[norm] for norm, column in results.RADIUS_COLUMNS.items()},
            **({"samples": c.samples, "stop": c.stop} if _ADAPTIVE.value else {}),
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


def _settings_of(path) -> dict:
  """A result file's settings, or {} (Cohen et al.'s files, a damaged settings file)."""
  try:
    return results.read_settings(path) or {}
  except InputError:
    return {}  # Named by its file alone; the rows are what the table is about.


def _run_names(paths, settings):
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


def _report(paths, plot_path):
  """Prints the certified-accuracy table and writes the plot."""
  norm = _NORM.value
  settings = [_settings_of(p) for p in paths]  # read once, for names and norms
  loaded = {}
  for name, path in zip(_run_names(paths, settings), paths, strict=True):
    res = results.read_results(path)
    loaded[name] = res if norm is None else analysis.in_norm(res, norm)
  if norm is None:
    # Each file's radius column is in its noise's primary norm; name it if they agree.
    primaries = {analysis.primary_norm(s) for s in settings}
    norm_label = primaries.pop() if len(primaries) == 1 else "each file's primary norm"
  else:
    norm_label = norm
  max_radius = _MAX_RADIUS.value
  if max_radius is None:
    radii = np.concatenate([r.radius for r in loaded.values()])
    top = float(np.nanmax(radii, initial=0.0)) if radii.size else 0.0
    max_radius = analysis.default_max_radius(top)
  radii = analysis.default_radii(max_radius, analysis.radius_step(max_radius))
  print(f"certified accuracy (%) against radius in {norm_label}")
  print(analysis.table(loaded, radii, fmt=_FORMAT.value))
  for name, res in loaded.items():
    samples = np.asarray(res.extra.get("samples", ()))
    if samples.size and np.issubdtype(samples.dtype, np.number):
      # Sequential CERTIFY's files: what the inputs cost.
      print(
        f"{name}: estimation samples per input: mean {samples.mean():,.0f}, median "
        f"{np.median(samples):,.0f}, max {samples.max():,.0f}"
      )
  if plot_path:
    analysis.plot_certified_accuracy(loaded, plot_path, max_radius=max_radius, norm=norm_label)
    print(f"plot: {plot_path}")


def analyze_main(paths):
  for name in _CERTIFY_ONLY:
    if _present(name):
      raise InputError(f"--{name} has no effect with analyze; drop it")
  if not paths:
    raise InputError("analyze needs one or more result files: certify.py analyze A.tsv [B.tsv ...]")
  _check_report_flags()
  if _PLOT.value:
    plot = results.check_output_path(_PLOT.value, "--plot")
    if any(os.path.abspath(plot) == os.path.abspath(p) for p in paths):
      raise InputError(f"--plot {plot} is one of the result files; choose another path")
  _report(paths, _PLOT.value)


def merge_main(paths):
  """Merges the part files of a multi-process run into one TSV, rows sorted by idx."""
  for name in (*_CERTIFY_ONLY, *_REPORT_ONLY):
    if _present(name):
      raise InputError(f"--{name} has no effect with merge; drop it")
  if len(paths) != 1:
    raise InputError("merge takes one result file: certify.py merge OUTFILE (the --outfile path)")
  outfile = results.check_output_path(paths[0], "merge OUTFILE")
  parts = results.part_paths(outfile)
  if not parts:
    if not os.path.lexists(outfile):
      raise InputError(f"{outfile} does not exist and has no parts ({outfile}.part-I-of-N)")
    print(f"{outfile} has no part files: nothing to merge")
    return
  with locks.exclusive(results.lock_path(outfile), f"--outfile {outfile}"):
    rows = results.merge_parts(outfile)
  print(f"merged {len(parts)} part files into {outfile}: {rows} rows, sorted by idx")


def main(argv):
  args = argv[1:]
  if args and args[0] == "analyze":
    return analyze_main(args[1:])
  if args and args[0] != "merge":
    raise app.UsageError(f"unexpected arguments {args}; did you mean 'analyze' or 'merge'?")
  if args and args[0] == "merge":
    return merge_main(args[1:])
  _EVALUATION.configure()  # Before JAX starts: XLA reads its flags once.
  parallel.initialize_distributed(shutdown_timeout_seconds=shares.FINISH_TIMEOUT_SECONDS)
  return certify_main()


def run():
  run_app(main)


if __name__ == "__main__":
  sys.exit(run())
