"""Certifies (or predicts with) the smoothed classifier of a trained workdir.

Certify the test split (Cohen et al. 2019, Algorithm 1), one TSV row per input
in Cohen et al.'s format ``idx label predict radius correct time`` (then
``p_lower count n``); rerunning the same command resumes where it stopped::

  python certify.py --workdir workdirs/demo --outfile results/demo.tsv \
      --n0 100 --n 100000 --alpha 0.001 --batch 1000 --skip 20

Predict mode (Algorithm 2) writes ``idx label predict correct time``::

  python certify.py --workdir workdirs/demo --outfile results/pred.tsv --predict --n 1000

Tables and one plot from several result files, ours or Cohen et al.'s::

  python certify.py analyze results/a.tsv results/b.tsv --plot curves.png --format latex
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from tqdm.auto import tqdm

from smoothjax import analysis, checkpointing, noise, parallel, results, smoothing
from smoothjax import data as data_lib
from smoothjax.cli.common import run_main
from smoothjax.errors import InputError

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained run to certify (from train.py).")
_OUTFILE = flags.DEFINE_string("outfile", None, "Output TSV; an existing one is resumed.")
_N0 = flags.DEFINE_integer("n0", 100, "Noise samples to select the top class.")
_N = flags.DEFINE_integer("n", 100_000, "Noise samples to estimate its probability.")
_ALPHA = flags.DEFINE_float("alpha", 0.001, "Failure probability of each certificate.")
_BATCH = flags.DEFINE_integer("batch", 1000, "Forward passes per device step.")
_INPUTS = flags.DEFINE_integer(
  "inputs_per_step", 1, "Inputs certified together per step (larger helps accelerators)."
)
_SKIP = flags.DEFINE_integer("skip", 1, "Certify every skip-th input.")
_MAX = flags.DEFINE_integer("max", -1, "Stop after this many inputs (-1: all).")
_SPLIT = flags.DEFINE_string("split", "test", "Dataset split to certify.")
_SIGMA = flags.DEFINE_float("sigma", None, "Noise level; default: the training noise_sd.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the certification noise.")
_EPOCH = flags.DEFINE_integer("epoch", None, "Checkpoint epoch (default: latest).")
_PREDICT = flags.DEFINE_boolean("predict", False, "Run PREDICT instead of CERTIFY.")
_PLOT = flags.DEFINE_string("plot", None, "PNG path for the plot (default: OUTFILE.png).")
_FORMAT = flags.DEFINE_enum("format", "markdown", ["markdown", "latex", "tsv"], "Table format.")
_MAX_RADIUS = flags.DEFINE_float("max_radius", None, "Largest radius in table and plot.")


def _check_flags():
  if _N0.value < 1 or _N.value < 1:
    raise InputError(f"--n0 and --n must be >= 1, got n0={_N0.value}, n={_N.value}")
  if not 0 < _ALPHA.value < 1:
    raise InputError(f"--alpha must be in (0, 1), got {_ALPHA.value}")
  if _BATCH.value < 1 or _INPUTS.value < 1:
    raise InputError("--batch and --inputs_per_step must be >= 1")
  if _SKIP.value < 1:
    raise InputError(f"--skip must be >= 1, got {_SKIP.value}")
  if _SIGMA.value is not None and not _SIGMA.value > 0:
    raise InputError(f"--sigma must be > 0, got {_SIGMA.value}")


def certify_main():
  for name, flag in (("--workdir", _WORKDIR), ("--outfile", _OUTFILE)):
    if not flag.value:
      raise InputError(f"{name} is required")
  _check_flags()
  model, config, info, meta = checkpointing.restore_model(_WORKDIR.value, _EPOCH.value)
  sigma = _SIGMA.value if _SIGMA.value is not None else float(config.noise_sd)
  if sigma <= 0:
    raise InputError("the run was trained without noise (noise_sd = 0); pass --sigma")
  noise_dist = noise.Gaussian(sigma)
  split = data_lib.load(config.dataset, data_dir=config.get("data_dir") or None).split(_SPLIT.value)

  indices = np.arange(0, len(split), _SKIP.value)
  if _MAX.value >= 0:
    indices = indices[: _MAX.value]
  predict_mode = _PREDICT.value
  columns = (
    results.PREDICT_COLUMNS if predict_mode else (*results.CERTIFY_COLUMNS, "p_lower", "count", "n")
  )
  settings = {
    "mode": "predict" if predict_mode else "certify",
    "workdir": os.path.abspath(_WORKDIR.value),
    "epoch": int(meta["epoch"]),
    "step": int(meta["step"]),
    "split": _SPLIT.value,
    "sigma": sigma,
    "n0": _N0.value,
    "n": _N.value,
    "alpha": _ALPHA.value,
    "seed": _SEED.value,
  }
  # The eval-mode model is a pytree: its weights are jit arguments, not compiled-in constants.
  logits_fn = model
  mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  base_key = jax.random.key(_SEED.value)
  with results.ResultWriter(_OUTFILE.value, columns, settings=settings) as writer:
    todo = np.array([i for i in indices if int(i) not in writer.done], dtype=np.int64)
    if len(todo) < len(indices):
      print(
        f"resuming: {len(indices) - len(todo)} of {len(indices)} inputs already in {_OUTFILE.value}"
      )
    group = _INPUTS.value
    with tqdm(total=len(todo), desc="predict" if predict_mode else "certify", unit="input") as bar:
      for start in range(0, len(todo), group):
        idx = todo[start : start + group]
        images, labels = split.get(idx)
        keys = jax.vmap(jax.random.fold_in, (None, 0))(base_key, idx.astype(np.uint32))
        t0 = time.time()
        common = dict(
          noise=noise_dist, n=_N.value, alpha=_ALPHA.value, batch_size=_BATCH.value, mesh=mesh
        )
        if predict_mode:
          preds = smoothing.predict_batch(logits_fn, images, keys, **common)
          outs = [{"predict": int(p)} for p in preds]
        else:
          certs = smoothing.certify_batch(logits_fn, images, keys, n0=_N0.value, **common)
          outs = [
            {
              "predict": c.prediction,
              "radius": c.radius,
              "p_lower": c.p_lower,
              "count": int(c.counts[c.prediction]) if c.prediction >= 0 else int(np.max(c.counts)),
              "n": _N.value,
            }
            for c in certs
          ]
        elapsed = (time.time() - t0) / len(idx)
        for i, label, out in zip(idx, labels, outs, strict=True):
          row = {"idx": int(i), "label": int(label), **out}
          row["correct"] = int(out["predict"] == int(label))
          row["time"] = elapsed
          writer.write(row)
        bar.update(len(idx))
  if predict_mode:
    res = results.read_results(_OUTFILE.value)
    accuracy, abstain = np.mean(res.correct), np.mean(res.predict < 0)
    print(f"accuracy {accuracy:.4f}, abstain {abstain:.4f} on {len(res.idx)} inputs")
    return
  _report([_OUTFILE.value], _PLOT.value or _OUTFILE.value + ".png")


def _run_names(paths):
  """Table and legend names: file names (whole paths if those clash), with the settings."""
  names = [os.path.basename(p) for p in paths]
  if len(set(names)) < len(names):
    names = list(paths)
  out = []
  for name, path in zip(names, paths, strict=True):
    try:
      with open(results.settings_path(path)) as f:
        settings = json.load(f)
      name += f" (sigma={settings['sigma']:g}, n={settings['n']})"
    except (OSError, ValueError, KeyError, TypeError):
      pass  # Files from other tools (e.g. Cohen et al.'s) have no settings beside them.
    out.append(name)
  return out


def _report(paths, plot_path):
  """Prints the certified-accuracy table and writes the plot."""
  loaded = {name: results.read_results(p) for name, p in zip(_run_names(paths), paths, strict=True)}
  max_radius = _MAX_RADIUS.value
  if max_radius is None:
    radii = np.concatenate([r.radius for r in loaded.values()])
    top = float(np.nanmax(radii, initial=0.0)) if radii.size else 0.0
    max_radius = max(0.25 * np.ceil(top / 0.25), 0.25)
  radii = analysis.default_radii(max_radius)
  print(analysis.table(loaded, radii, fmt=_FORMAT.value))
  if plot_path:
    analysis.plot_certified_accuracy(loaded, plot_path, max_radius=max_radius)
    print(f"plot: {plot_path}")


def analyze_main(paths):
  if not paths:
    raise InputError("analyze needs one or more result files: certify.py analyze A.tsv [B.tsv ...]")
  for p in paths:
    if not os.path.exists(p):
      raise InputError(f"no such result file: {p}")
  _report(paths, _PLOT.value)


def main(argv):
  args = argv[1:]
  if args and args[0] == "analyze":
    return analyze_main(args[1:])
  if args:
    raise app.UsageError(f"unexpected arguments {args}; did you mean 'analyze'?")
  parallel.initialize_distributed()
  if jax.process_count() > 1:
    # Every process would append the same rows to the one output file.
    raise InputError("certify.py runs on one host (all its devices); start it without multi-host")
  return certify_main()


def run():
  app.run(run_main(main))


if __name__ == "__main__":
  sys.exit(run())
