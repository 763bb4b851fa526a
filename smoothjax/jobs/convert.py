"""A published PyTorch checkpoint as a workdir that every program takes.

Reads the checkpoint without PyTorch and without running any of its code
(:mod:`smoothjax.published.pickles`), maps the architecture its authors name onto a
smoothjax model (:mod:`smoothjax.published.architectures`) and writes a workdir::

  WORKDIR/config.json          model, dataset, noise_sd (the training noise), data_dir
  WORKDIR/dataset_info.json    classes, image shape, the checkpoint's normalisation
  WORKDIR/checkpoints/0/       the model (an orbax checkpoint with its checksums)
  WORKDIR/conversion.json      the source file's path, size and SHA-256, its format, and
                               where every key went (mapped, repeated, not needed)

``certify.py``, ``attack.py``, ``generate.py``, ``compare.py`` and ``train.py
--config.init_from=WORKDIR`` take it as they take a trained run. Converting needs no
dataset files; certifying reads the data as usual (``--data_dir`` is recorded for it).
The workdir is written under a temporary name and renamed when complete, so a failed
conversion leaves nothing::

  python convert.py --torch models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar \
      --arch cifar_resnet110 --dataset cifar10 --noise_sd 0.25 --workdir workdirs/cohen_025
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time

import jax
from flax import nnx

from smoothjax import noise
from smoothjax.configs import default as default_config
from smoothjax.errors import InputError
from smoothjax.published import architectures, pickles
from smoothjax.workdir import checkpoints, runs

CONVERSION_FILE = runs.CONVERSION_FILE


@dataclasses.dataclass(frozen=True)
class Options:
  """The options of ``convert.py``: the same names and defaults as its flags."""

  torch: str | None = None  # the PyTorch checkpoint
  arch: str | None = None  # the authors' architecture; default the file's 'arch' entry
  dataset: str | None = None  # cifar10, imagenet or mnist
  noise_sd: float | None = None  # the noise the model was trained with
  workdir: str | None = None  # the workdir to write (must not exist, or be empty)
  normalization: str | None = None  # cohen, center or none; default the architecture's
  noise: str = "gaussian"  # the training noise family (config.noise)
  data_dir: str = ""  # where certify.py and the others read the dataset from


@dataclasses.dataclass(frozen=True)
class Result:
  """What :func:`run` wrote."""

  workdir: str
  model_name: str
  record: dict  # the contents of conversion.json


def check(o: Options) -> None:
  """Refuses options that cannot convert, before anything is read or written."""
  for name in ("torch", "dataset", "workdir"):
    if not getattr(o, name):
      raise InputError(f"--{name} is required")
  if o.noise_sd is None:
    raise InputError(
      "--noise_sd is required: the noise level the model was trained with (the authors' "
      "folder names say it, e.g. noise_0.25)"
    )
  sd = o.noise_sd
  if isinstance(sd, bool) or not isinstance(sd, int | float) or not math.isfinite(sd) or sd < 0:
    raise InputError(f"--noise_sd must be a number >= 0, got {sd!r}")
  if not os.path.isfile(o.torch):
    what = "a directory" if os.path.isdir(o.torch) else "not found"
    raise InputError(f"--torch {o.torch}: {what}; pass the checkpoint file (.pth.tar, .pt)")
  d = architectures.dataset(o.dataset)
  if o.arch is not None:
    architectures.architecture(o.arch, o.dataset)
  if o.normalization is not None and o.normalization not in architectures.NORMALIZATIONS:
    raise InputError(
      f"unknown --normalization {o.normalization!r}; choose one of "
      f"{', '.join(architectures.NORMALIZATIONS)}"
    )
  try:
    noise.parse(o.noise, default_sigma=float(sd) or 1.0, dim=math.prod(d.image_shape))
  except InputError as e:
    raise InputError(f"--noise {o.noise}: {e}") from None
  if os.path.exists(o.workdir):
    if not os.path.isdir(o.workdir):
      raise InputError(f"--workdir {o.workdir} is a file; choose another --workdir")
    if os.listdir(o.workdir):
      raise InputError(
        f"--workdir {o.workdir} exists and is not empty; choose a new --workdir or delete it"
      )
  parent = os.path.dirname(os.path.abspath(o.workdir))
  if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
    raise InputError(f"cannot write in {parent}; choose another --workdir")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _file_arch(obj) -> str | None:
  arch = obj.get("arch") if isinstance(obj, dict) else None
  return arch if isinstance(arch, str) else None


def _entries(obj) -> dict:
  """The checkpoint's plain top-level entries (epoch, arch, accuracies), for the record."""
  if not isinstance(obj, dict):
    return {}
  plain = (str, int, float, bool, type(None))
  return {str(k): v for k, v in obj.items() if isinstance(v, plain)}


def run(o: Options) -> Result:
  """Converts ``o.torch`` into the workdir ``o.workdir``; see the module docstring.

  Returns:
    The :class:`Result`: the workdir, the smoothjax model and the record written.

  Raises:
    InputError: bad options, a file that is not a checkpoint (or is damaged), or one
      whose keys do not fit the architecture; nothing is written then.
  """
  check(o)
  start = time.time()
  torch_file = pickles.read(o.torch)
  obj = torch_file.obj
  arch_name = o.arch
  in_file = _file_arch(obj)
  if arch_name is None:
    if in_file is None:
      raise InputError(
        f"{o.torch} does not say its architecture; pass --arch (one of "
        f"{', '.join(architectures.ARCH_NAMES)})"
      )
    arch_name = in_file
  elif in_file is not None and in_file != arch_name:
    raise InputError(
      f"{o.torch} says it holds {in_file!r}, not --arch {arch_name}; drop --arch or pass "
      f"--arch {in_file}"
    )
  arch = architectures.architecture(arch_name, o.dataset)
  state, where = architectures.find_state_dict(obj)
  try:
    converted = architectures.convert(arch, state, normalization=o.normalization)
  except InputError as e:
    raise InputError(f"{o.torch}: {e}") from None
  dataset = architectures.DATASETS[arch.dataset]

  config = default_config.get_config()
  config.model = converted.model_name
  config.dataset = dataset.name
  config.noise = o.noise
  config.noise_sd = float(o.noise_sd)
  config.data_dir = o.data_dir or ""
  config.clip_inputs = converted.clip_inputs
  info = architectures.info(arch, converted.mean, converted.std)
  record = {
    "source": os.path.abspath(o.torch),
    "bytes": os.path.getsize(o.torch),
    "sha256": _sha256(o.torch),
    "format": torch_file.format,
    "arch": arch.name,
    "dataset": arch.dataset,
    "model": converted.model_name,
    "state_dict": where,
    "prefix": converted.prefix,
    "normalization": {
      "kind": converted.normalization,
      "mean": list(converted.mean),
      "std": list(converted.std),
      "clip_inputs": converted.clip_inputs,
    },
    "entries": _entries(obj),
    "placeholders": list(torch_file.placeholders),
    "mapped": converted.mapped,
    "repeated": converted.duplicates,
    "not_needed": list(converted.unused),
  }
  workdir = os.path.abspath(o.workdir)
  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(workdir)}.converting-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    runs.make_workdir(tmp)
    runs.save_run_files(tmp, config, info)
    ckpt = checkpoints.Checkpointer(tmp)
    try:
      state = jax.device_get(nnx.state(converted.model))
      meta = {"step": 0, "epoch": 0, "steps_per_epoch": 1, "converted_from": record["sha256"]}
      ckpt.save(0, state, None, meta)
    finally:
      ckpt.close()
    runs.save_json(os.path.join(tmp, CONVERSION_FILE), record)
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # checked empty above
    os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  print(
    f"converted {o.torch} ({torch_file.format} format, {arch.label}, {len(converted.mapped)} "
    f"arrays) into {o.workdir} as smoothjax's {converted.model_name} in "
    f"{time.time() - start:.1f} s; normalisation: {_describe(converted)}",
    file=sys.stderr,
  )
  if torch_file.placeholders:
    print(
      f"note: entries of the file outside its state_dict were not read (their code was not "
      f"run): {', '.join(torch_file.placeholders)}",
      file=sys.stderr,
    )
  return Result(workdir=o.workdir, model_name=converted.model_name, record=record)


def _describe(c: architectures.Converted) -> str:
  name = {
    "cohen": "NormalizeLayer",
    "center": "InputCenterLayer",
    "none": "none",
    "file": "the file's InputNormalize, clamping to [0, 1]",
  }[c.normalization]
  return f"{name} (mean {list(c.mean)}, std {list(c.std)})"

