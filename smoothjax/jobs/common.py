"""What the jobs share: the restored run, its noise, the inputs chosen, the settings prefix.

Every job evaluates one trained workdir: :func:`restore` gives its model as trained
(whose :func:`~smoothjax.hashing.fingerprint` guards resumes) and as evaluated (BatchNorm
folded, in the compute dtype), :func:`resolve_noise` its smoothing noise,
:func:`select` the inputs of Cohen et al.'s ``--skip``/``--max`` and :func:`settings`
the first entries of the settings file every output records.

With ``--denoiser`` the model evaluated is ``f(D(x))`` (denoised smoothing):
:func:`load_denoiser` restores and checks the denoiser's workdir against the
classifier's, :func:`noise_source` says whose training noise is the default, and
:func:`with_denoiser` composes the two (a one-shot diffusion denoiser at the smoothing
noise's sigma); both fingerprints then guard resumes.
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
from smoothjax import hashing, models, noise
from smoothjax.errors import InputError
from smoothjax.models import diffusion, transforms
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
  denoiser: Denoiser | None = None  # model is classifier(denoiser(x)) when given

  def dataset(self) -> data_lib.Dataset:
    """The run's dataset (``config.dataset``, from ``config.data_dir`` if it has one)."""
    return data_lib.load(self.config.dataset, data_dir=self.config.get("data_dir") or None)


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """A denoiser's or diffusion model's workdir restored for denoised smoothing."""

  workdir: str
  model: nnx.Module  # ready for inference
  fingerprint: str
  config: ml_collections.ConfigDict
  meta: dict
  kind: str  # "denoiser" or "diffusion" (smoothjax.models.kind)
  level: str | None = None  # the noise it undoes, once composed (with_denoiser)


def restore(workdir: str, epoch: int | None, *, fold: bool, dtype: str) -> Run:
  """The classifier of ``workdir`` at ``epoch`` (default the latest), fingerprinted and prepared.

  Raises:
    InputError: the workdir holds no classifier (a denoiser's belongs to ``--denoiser``).
  """
  config = checkpoints.load_config(workdir)
  if models.kind(config.model) != "classifier":
    raise InputError(
      f"{workdir} holds a {models.kind(config.model)} ({config.model}), not a classifier; "
      f"certify a classifier with --workdir CLASSIFIER --denoiser {workdir}"
    )
  model, config, info, meta = checkpoints.restore_model(workdir, epoch)
  fingerprint = hashing.fingerprint(nnx.state(model))  # of the trained model, as saved
  model = transforms.for_inference(model, fold=fold, dtype=dtype)
  return Run(workdir, model, fingerprint, config, info, meta)


def load_denoiser(
  path: str | None, epoch: int | None, run: Run, *, fold: bool, dtype: str
) -> Denoiser | None:
  """The denoiser of workdir ``path`` (None: none), checked against the classifier's ``run``.

  Raises:
    InputError: ``path`` holds a classifier, or a denoiser of another image shape or
      dataset, or is the classifier's own workdir.
  """
  if not path:
    return None
  if os.path.abspath(path) == os.path.abspath(run.workdir):
    raise InputError(
      f"--denoiser names the classifier's own workdir {path}; pass the workdir of a denoiser "
      "trained with --config.mode=denoiser (or diffusion)"
    )
  config = checkpoints.load_config(path)
  kind = models.kind(config.model)
  if kind == "classifier":
    raise InputError(
      f"--denoiser {path} holds a classifier ({config.model}), not a denoiser; pass a workdir "
      "trained with --config.mode=denoiser (or diffusion), e.g. --config embedded_denoiser"
    )
  info = checkpoints.load_info(path)
  if tuple(info.image_shape) != tuple(run.info.image_shape):
    raise InputError(
      f"--denoiser {path} denoises images of shape {tuple(info.image_shape)}, the classifier "
      f"in {run.workdir} takes {tuple(run.info.image_shape)}; train a denoiser on its dataset"
    )
  if str(config.dataset) != str(run.config.dataset):
    raise InputError(
      f"--denoiser {path} was trained on dataset={config.dataset!r}, the classifier in "
      f"{run.workdir} on {run.config.dataset!r}; train a denoiser on the classifier's dataset"
    )
  model, config, _, meta = checkpoints.restore_model(path, epoch)
  fingerprint = hashing.fingerprint(nnx.state(model))
  model = transforms.for_inference(model, fold=fold, dtype=dtype)
  return Denoiser(path, model, fingerprint, config, meta, kind)


def check_denoiser_options(path: str | None, epoch: int | None) -> None:
  """``--denoiser`` and ``--denoiser_epoch``, before anything is read."""
  if path is not None and not isinstance(path, str):
    raise InputError(f"--denoiser must be a workdir path, got {path!r}")
  if epoch is not None and (not path):
    raise InputError("--denoiser_epoch is an epoch of --denoiser; pass --denoiser DIR or drop it")
  if epoch is not None and epoch < 0:
    raise InputError(f"--denoiser_epoch must be >= 0, got {epoch}")


def noise_source(run: Run, denoiser: Denoiser | None) -> tuple[Any, str]:
  """The config and workdir whose training noise is the default smoothing noise.

  The denoiser's when there is one (a classifier in front of a denoiser was usually
  trained without noise), the classifier's otherwise.
  """
  if denoiser is None:
    return run.config, run.workdir
  return denoiser.config, denoiser.workdir


def with_denoiser(run: Run, denoiser: Denoiser | None, smoothing_noise: noise.Noise | None) -> Run:
  """``run`` evaluating ``classifier(denoiser(x))``; ``run`` itself without a denoiser.

  A one-shot diffusion denoiser is set to the smoothing noise's sigma (Gaussian only); a
  conditioned denoiser is told it; a denoiser of one noise level must have been trained
  at the smoothing noise.

  Raises:
    InputError: the denoiser does not undo this noise.
  """
  if denoiser is None:
    return run
  path = denoiser.workdir
  if denoiser.kind == "diffusion":
    if smoothing_noise is None:
      raise InputError(
        f"--denoiser {path} is a diffusion model, set to the smoothing noise's sigma: pass --sigma"
      )
    if not isinstance(smoothing_noise, noise.Gaussian):
      raise InputError(
        f"one-shot diffusion denoising (--denoiser {path}) undoes Gaussian noise, not "
        f"{smoothing_noise.name}; pass --noise gaussian"
      )
    front = diffusion.OneShot(denoiser.model, smoothing_noise.sigma, "cosine")
  else:
    trained = noise.parse(denoiser.config.get("noise", "gaussian"), sigma=denoiser.config.noise_sd)
    if models.is_conditioned(denoiser.config.model):
      if smoothing_noise is not None and smoothing_noise.name != trained.name:
        raise InputError(
          f"--denoiser {path} was trained on {trained.name} noise, the smoothing noise is "
          f"{smoothing_noise.name}; pass --noise {trained.name} or train a denoiser for it"
        )
      sigma = trained.sigma if smoothing_noise is None else smoothing_noise.sigma
      front = models.AtNoise(denoiser.model, sigma)
    else:
      if smoothing_noise is not None and smoothing_noise.spec != trained.spec:
        raise InputError(
          f"--denoiser {path} was trained at noise {trained.spec}, the smoothing noise is "
          f"{smoothing_noise.spec}; smooth at its noise (--noise/--sigma), or train a denoiser "
          "at this one (or a conditioned one, dncnn_conditioned, at several)"
        )
      front = denoiser.model
    smoothing_noise = smoothing_noise or trained
  denoiser = dataclasses.replace(denoiser, level=smoothing_noise.spec)
  return dataclasses.replace(run, model=models.Denoised(front, run.model), denoiser=denoiser)


def settings(first: dict[str, Any], run: Run, options, *, model_key: str = "model") -> dict:
  """The settings every output starts with: ``first``, then the run and its evaluation.

  ``options`` has the evaluation options (``dtype``, ``fold_batchnorm``, ``precision``);
  ``model_key`` names the fingerprint's entry (``model_fingerprint`` in certify's files).
  """
  out = {
    **first,
    "workdir": os.path.abspath(run.workdir),
    "epoch": int(run.meta["epoch"]),
    "step": int(run.meta["step"]),
    model_key: run.fingerprint,
    **transforms.evaluation_settings(options.dtype, options.fold_batchnorm, options.precision),
    "dataset": str(run.config.dataset),
  }
  if run.denoiser is not None:  # recorded only with one: older files stay resumable
    out |= {
      "denoiser": os.path.abspath(run.denoiser.workdir),
      "denoiser_epoch": int(run.denoiser.meta["epoch"]),
      "denoiser_fingerprint": run.denoiser.fingerprint,
      "denoiser_noise": run.denoiser.level,
    }
  return out


DENOISER_HINTS = {
  "denoiser": "the denoiser (--denoiser) differs, or one was added or dropped",
  "denoiser_fingerprint": (
    "the denoiser's checkpoint holds other parameters (its workdir was retrained or replaced)"
  ),
  "denoiser_epoch": "the denoiser's checkpoint (--denoiser_epoch) differs",
  "denoiser_noise": "the noise level the denoiser is set to (--sigma) differs",
}
"""What a difference in the denoiser's settings means, for a refused resume."""


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
