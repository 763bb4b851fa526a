"""The workdir's run files: the config and the dataset description beside the checkpoints.

A workdir holds everything needed to use a trained model without the original
command line::

  WORKDIR/config.json         the run's ml_collections config
  WORKDIR/dataset_info.json   classes, image shape and normalisation constants
  WORKDIR/checkpoints/        orbax checkpoints (:mod:`smoothjax.workdir.checkpoints`)
  WORKDIR/metrics.jsonl       one line of metrics per epoch (:mod:`smoothjax.training`)
  WORKDIR/conversion.json     instead of metrics: where a converted model came from

This module writes the two run files and reads them back, checking the fields
that evaluation needs, so a missing or hand-edited file is one line of error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Any

import ml_collections

from smoothjax import data as data_lib
from smoothjax import models
from smoothjax.errors import InputError, one_line

CONFIG_FILE = "config.json"
INFO_FILE = "dataset_info.json"
CONVERSION_FILE = "conversion.json"  # a model converted from PyTorch (convert.py)


def check_workdir(workdir: str) -> None:
  """Raises InputError if ``workdir`` exists and is not a directory."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"workdir {workdir} is a file, not a directory; pass the run's directory")


def make_workdir(workdir: str) -> None:
  """Creates ``workdir`` for a training run; InputError if it cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise InputError(f"cannot create --workdir {workdir} ({e.strerror}); choose another") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise InputError(f"--workdir {workdir} is not writable; choose another or fix its permissions")


def save_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def save_run_files(workdir: str, config: ml_collections.ConfigDict, info: data_lib.DatasetInfo):
  """Saves the config and the dataset description beside the checkpoints."""
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  save_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()))
  save_json(os.path.join(workdir, INFO_FILE), dataclasses.asdict(info))


def _read_json(path: str, fix: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"cannot read {path} as JSON ({one_line(e)}); {fix}") from None


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value, least: int) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from ``WORKDIR/config.json``, with the fields evaluation needs checked.

  Args:
    workdir: a directory written by ``train.py``.

  Returns:
    The config. ``model`` names a known model, ``dataset`` is a non-empty string and
    ``noise_sd`` a finite number >= 0; anything else raises InputError.
  """
  check_workdir(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise InputError(
      f"no trained run in {workdir!r} ({CONFIG_FILE} missing); train one with "
      f"python train.py --config default --workdir {workdir}"
    )
  fix = "restore the config.json that train.py wrote, or retrain"
  raw = _read_json(path, fix)
  if not isinstance(raw, dict):
    raise InputError(f"{path} holds a JSON {type(raw).__name__}, not a config object; {fix}")
  problems = []
  if "model" not in raw:
    problems.append("it lacks 'model'")
  elif raw["model"] not in models.ALL_MODELS:
    problems.append(f"'model' is {raw['model']!r}, not one of {', '.join(models.ALL_MODELS)}")
  if not (isinstance(raw.get("dataset"), str) and raw["dataset"]):
    problems.append(f"'dataset' must be a dataset name, got {raw.get('dataset')!r}")
  if not (_is_real(raw.get("noise_sd")) and raw["noise_sd"] >= 0):
    problems.append(f"'noise_sd' must be a number >= 0, got {raw.get('noise_sd')!r}")
  if not isinstance(raw.get("data_dir", ""), str):
    problems.append(f"'data_dir' must be a string, got {raw['data_dir']!r}")
  if problems:
    raise InputError(f"{path} is not a valid run config: {problems[0]}; {fix}")
  return ml_collections.ConfigDict(raw)


def load_info(workdir: str) -> data_lib.DatasetInfo:
  """The dataset description from ``WORKDIR/dataset_info.json``, checked field by field."""
  check_workdir(workdir)
  path = os.path.join(workdir, INFO_FILE)
  fix = "restore the dataset_info.json that train.py wrote, or retrain"
  if not os.path.isfile(path):
    raise InputError(f"{path} is missing; {fix}")
  raw = _read_json(path, fix)
  fields = [f.name for f in dataclasses.fields(data_lib.DatasetInfo)]
  if not isinstance(raw, dict):
    raise InputError(f"{path} holds a JSON {type(raw).__name__}, not a dataset description; {fix}")
  missing = [f for f in fields if f not in raw]
  if missing:
    raise InputError(f"{path} lacks {', '.join(missing)}; {fix}")
  shape, mean, std, sizes = raw["image_shape"], raw["mean"], raw["std"], raw["split_sizes"]
  checks = [
    (isinstance(raw["name"], str), "'name' must be a string"),
    (_is_count(raw["num_classes"], 1), "'num_classes' must be an integer >= 1"),
    (
      isinstance(shape, list) and len(shape) == 3 and all(_is_count(d, 1) for d in shape),
      "'image_shape' must be [height, width, channels], positive integers",
    ),
    (
      isinstance(mean, list) and mean and all(_is_real(v) for v in mean),
      "'mean' must be a list of numbers, one per channel",
    ),
    (
      isinstance(std, list) and std and all(_is_real(v) and v > 0 for v in std),
      "'std' must be a list of positive numbers, one per channel",
    ),
    (
      isinstance(sizes, dict) and all(_is_count(v, 0) for v in sizes.values()),
      "'split_sizes' must map split names to example counts",
    ),
  ]
  for ok, problem in checks:
    if not ok:
      raise InputError(f"{path}: {problem}; {fix}")
  if not len(mean) == len(std) == shape[2]:
    raise InputError(
      f"{path}: 'mean' and 'std' must have one value per channel of 'image_shape' "
      f"{shape}, got {len(mean)} and {len(std)}; {fix}"
    )
  return data_lib.DatasetInfo(
    name=raw["name"],
    num_classes=raw["num_classes"],
    image_shape=tuple(shape),
    mean=tuple(mean),
    std=tuple(std),
    split_sizes=dict(sizes),
  )
