"""What the jobs share: the restored run, its noise, the inputs chosen, the settings prefix.

Every job evaluates one trained workdir: :func:`restore` gives its model as trained
(whose :func:`~smoothjax.hashing.fingerprint` guards resumes) and as evaluated (BatchNorm
folded, in the compute dtype), :func:`resolve_noise` its smoothing noise,
:func:`select` the inputs of Cohen et al.'s ``--skip``/``--max`` and :func:`settings`
the first entries of the settings file every output records.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from smoothjax import data as data_lib
from smoothjax import hashing, noise
from smoothjax.errors import InputError
from smoothjax.models import transforms
from smoothjax.workdir import checkpoints


@dataclasses.dataclass(frozen=True)
class Run:
  """A workdir's model restored for evaluation."""

  workdir: str
  model: nnx.Module  # ready for inference: BatchNorm folded, in the compute dtype
  fingerprint: str  # of the parameters as trained (hashing.fingerprint)
  config: ml_collections.ConfigDict
  info: data_lib.DatasetInfo
  meta: dict

  def dataset(self) -> data_lib.Dataset:
    """The run's dataset (``config.dataset``, from ``config.data_dir`` if it has one)."""
    return data_lib.load(self.config.dataset, data_dir=self.config.get("data_dir") or None)


def restore(workdir: str, epoch: int | None, *, fold: bool, dtype: str) -> Run:
  """The model of ``workdir`` at ``epoch`` (default the latest), fingerprinted and prepared."""
  model, config, info, meta = checkpoints.restore_model(workdir, epoch)
  fingerprint = hashing.fingerprint(nnx.state(model))  # of the trained model, as saved
  model = transforms.for_inference(model, fold=fold, dtype=dtype)
  return Run(workdir, model, fingerprint, config, info, meta)


def settings(first: dict[str, Any], run: Run, options, *, model_key: str = "model") -> dict:
  """The settings every output starts with: ``first``, then the run and its evaluation.

  ``options`` has the evaluation options (``dtype``, ``fold_batchnorm``, ``precision``);
  ``model_key`` names the fingerprint's entry (``model_fingerprint`` in certify's files).
  """
  return {
    **first,
    "workdir": os.path.abspath(run.workdir),
    "epoch": int(run.meta["epoch"]),
    "step": int(run.meta["step"]),
    model_key: run.fingerprint,
    **transforms.evaluation_settings(options.dtype, options.fold_batchnorm, options.precision),
    "dataset": str(run.config.dataset),
  }


def select(num_inputs: int, *, skip: int, max_index: int, count: int | None, split: str):
  """Cohen et al.'s selection: every ``skip``-th index below ``max_index``, the first ``count``.

  Raises:
    InputError: the selection is empty.
  """
  indices = np.arange(0, num_inputs, skip, dtype=np.int64)
  if max_index >= 0:
    indices = indices[indices < max_index]
  if count is not None:
    indices = indices[:count]
  if not len(indices):
    raise InputError(
      f"--skip {skip} --max {max_index} selects none of the {num_inputs} inputs of "
      f"split {split!r}; lower --skip or raise --max"
    )
  return indices


def resolve_noise(
  config,
  workdir: str | None,
  *,
  spec: str | None = None,
  sigma: float | None = None,
  dim: int | None = None,
  check_only: bool = False,
  advice: str = "pass --sigma or --noise FAMILY:SIGMA",
) -> noise.Noise:
  """The smoothing noise: ``spec`` and ``sigma``, else the run's training noise.

  ``spec`` (``gaussian:0.25``, ``laplace``, ...) defaults to the run's ``config.noise``,
  ``sigma`` to its ``noise_sd``. With ``check_only`` (before the workdir is read) the
  options alone are checked, a scale left to the training run standing in as 1.

  Raises:
    InputError: a bad spec or scale, or a run trained without noise and no ``sigma``
      (``advice`` says what to pass).
  """
  if sigma is not None:
    try:
      noise.Gaussian(sigma=sigma)  # Every family's bounds on sigma are these.
    except InputError as e:
      raise InputError(f"--sigma {sigma}: {e}") from None
  given = spec
  default = 1.0 if check_only else None
  if not check_only and (spec is None or sigma is None):
    sd = config.get("noise_sd")
    where = f"config.json of {workdir}"
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
    return noise.parse(spec, sigma=sigma, default_sigma=default, dim=dim)
  except InputError as e:
    if "has no scale" in str(e):
      raise InputError(f"the run was trained without noise (noise_sd = 0); {advice}") from None
    flag = f"--noise {given}" if given else f"the training noise (config.noise) of {workdir}"
    raise InputError(f"{flag}: {e}") from None

