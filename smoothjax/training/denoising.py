"""Training modes of denoisers and diffusion models: ``mode = "denoiser"`` and ``"diffusion"``.

Both are modes like the classifiers' (:mod:`smoothjax.training.modes`), so resume,
sharding, checkpoints, bfloat16 and multi-host training are the loop's, as for any run.

* ``denoiser`` trains the denoiser ``config.model`` (:data:`smoothjax.models.DENOISERS`)
  at the run's noise (``config.noise`` at ``config.noise_sd``, any family) with
  ``config.denoiser.loss``, the objectives of Salman et al., "Denoised Smoothing: A
  Provable Defense for Pretrained Classifiers" (NeurIPS 2020), Section 3.2:

  - ``mse``: ``mean ||D(x + delta) - x||^2`` over pixels;
  - ``stability``: ``CE(f(D(x + delta)), argmax f(x))`` with the frozen classifier ``f``
    of ``config.denoiser.classifier`` (a workdir, trained by smoothjax or converted
    from PyTorch by ``convert.py``); no labels needed;
  - ``classification``: ``CE(f(D(x + delta)), y)`` with the labels;
  - ``mse+stability`` and ``mse+classification``: the sums, as their fine-tuning of an
    MSE denoiser does (start it from one with ``config.init_from``).

  ``f`` runs in eval mode, its weights are constants of the loss (jit arguments of the
  step, not compiled in) and are never trained. A conditioned denoiser
  (``dncnn_conditioned``) draws each example's noise level from ``config.denoiser.sigmas``
  (default: ``noise_sd`` alone) and is told it.
* ``diffusion`` trains the epsilon-prediction model ``config.model``
  (:data:`smoothjax.models.DIFFUSION_MODELS`) with the DDPM objective over continuous
  time on the cosine schedule (:func:`smoothjax.models.diffusion.diffusion_loss`);
  ``config.diffusion.max_sigma > 0`` keeps the times whose noise is at most that pixel
  sigma, where one-shot denoising uses a small model. ``noise_sd`` is only the level at
  which the test images are denoised for the epoch's report.

Each epoch reports the test images' denoising error: ``test_mse`` of ``D(x + delta)``
against ``x`` beside ``test_mse_noisy`` of ``x + delta`` itself, and with a classifier
``test_accuracy_noisy`` (of ``f(D(x + delta))``) and ``test_accuracy`` (of ``f(D(x))``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from smoothjax import models
from smoothjax import noise as noise_lib
from smoothjax import workdir as workdir_lib
from smoothjax.errors import InputError
from smoothjax.models import diffusion
from smoothjax.training.settings import for_inputs, number, section
from smoothjax.workdir import checkpoints

LOSSES = ("mse", "stability", "classification", "mse+stability", "mse+classification")
DENOISER_DEFAULTS = {"loss": "mse", "classifier": "", "classifier_epoch": -1, "sigmas": ()}
DIFFUSION_DEFAULTS = {"max_sigma": 0.0}


def _per_image_mse(a, b):
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))


def check_classifier(source: str, config: Mapping) -> None:
  """Refuses a frozen classifier workdir that cannot judge this run's denoiser.

  Raises:
    InputError: not a workdir of a trained classifier, or of another dataset.
  """
  if not isinstance(source, str):
    raise InputError(f"denoiser.classifier must be a workdir path, got {source!r}")
  saved = workdir_lib.load_config(source)
  if models.kind(saved.model) != "classifier":
    raise InputError(
      f"denoiser.classifier {source} holds a {models.kind(saved.model)} ({saved.model}), not a "
      "classifier; name the workdir of the classifier the denoiser serves"
    )
  if saved.dataset != config.get("dataset"):
    raise InputError(
      f"denoiser.classifier {source} was trained on dataset={saved.dataset!r}, this run is on "
      f"{config.get('dataset')!r}; train the denoiser on the classifier's dataset"
    )
  checkpoints.require_checkpoints(source, "denoiser.classifier")


def _sigmas(s, noise, conditioned: bool) -> tuple[float, ...]:
  raw = s["sigmas"]
  values = tuple(raw) if isinstance(raw, list | tuple) else None
  if values is None or not all(
    isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    for v in values
  ):
    raise InputError(f"denoiser.sigmas must be a list of noise levels > 0, got {raw!r}")
  if values and not conditioned:
    raise InputError(
      "denoiser.sigmas trains at several noise levels, which only a conditioned denoiser "
      "(e.g. dncnn_conditioned) is told; drop it or choose a conditioned model"
    )
  return tuple(float(v) for v in values) or (noise.sigma,)


def denoiser_mode(config: Mapping, noise: noise_lib.Noise | None):
  """The ``denoiser`` mode's loss; see the module docstring."""
  if noise is None:
    raise InputError("mode 'denoiser' trains at a noise level: set --config.noise_sd > 0")
  s = section(config, "denoiser", DENOISER_DEFAULTS)
  if s["loss"] not in LOSSES:
    raise InputError(f"denoiser.loss must be one of {', '.join(LOSSES)}, got {s['loss']!r}")
  terms = s["loss"].split("+")
  needs_classifier = any(t in ("stability", "classification") for t in terms)
  source = s["classifier"]
  if needs_classifier and not source:
    raise InputError(
      f"denoiser.loss={s['loss']!r} needs the frozen classifier: set "
      "--config.denoiser.classifier=WORKDIR"
    )
  if source:
    check_classifier(source, config)
  epoch = number(s, "classifier_epoch", low=-1, integer=True)  # -1: the latest
  name = config.get("model")
  conditioned = models.is_conditioned(name)
  sigmas = _sigmas(s, noise, conditioned)
  table = jnp.asarray(sigmas, jnp.float32)

  def draw(key, images):
    """Noisy images and each one's noise level."""
    level_key, noise_key = jax.random.split(key)
    delta = for_inputs(noise, images).sample(noise_key, images.shape, images.dtype)
    level = jnp.full((images.shape[0],), noise.sigma, jnp.float32)
    if len(sigmas) > 1 or sigmas[0] != noise.sigma:
      level = table[jax.random.randint(level_key, (images.shape[0],), 0, len(sigmas))]
      delta = delta * (level / noise.sigma).reshape(-1, 1, 1, 1).astype(delta.dtype)
    return images + delta, level

  def denoise(model, y, level):
    return model(y, level) if conditioned else model(y)

  def loss_fn(model, key, images, labels, epoch, frozen=None):
    del epoch
    y, level = draw(key, images)
    out = denoise(model, y, level)
    mse = jnp.mean(_per_image_mse(out, images))
    aux = {"mse": mse}
    loss = mse if "mse" in terms else jnp.zeros((), jnp.float32)
    if needs_classifier:
      classifier = frozen_classifier(frozen)
      logits = classifier(out)
      if "stability" in terms:
        targets = jnp.argmax(classifier(images), -1)
        aux["agreement"] = jnp.mean(jnp.argmax(logits, -1) == targets)
      else:
        targets = labels
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
      loss = loss + ce
      aux["cross_entropy"] = ce
      aux["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, aux

  graphdef = None

  def frozen_classifier(frozen):
    clf = nnx.merge(graphdef, jax.lax.stop_gradient(frozen))
    clf.eval()
    return clf

  def load_frozen():
    nonlocal graphdef
    model, _, _, _ = checkpoints.restore_model(source, None if epoch < 0 else epoch)
    graphdef, state = nnx.split(model)
    return state

  def evaluate(model, key, images, labels, frozen=None):
    """Sums over the batch's real rows (padding rows have label -1)."""
    real = (labels >= 0).astype(jnp.float32)
    delta = for_inputs(noise, images).sample(key, images.shape, images.dtype)
    y = images + delta
    level = jnp.full((images.shape[0],), noise.sigma, jnp.float32)
    out = denoise(model, y, level)
    sums = {
      "mse": jnp.sum(real * _per_image_mse(out, images)),
      "mse_noisy": jnp.sum(real * _per_image_mse(y, images)),
    }
    if source:
      classifier = frozen_classifier(frozen)
      clean = jnp.argmax(classifier(denoise(model, images, level)), -1)
      noisy = jnp.argmax(classifier(out), -1)
      sums["accuracy"] = jnp.sum(clean == labels)
      sums["accuracy_noisy"] = jnp.sum(noisy == labels)
    return sums

  loss_fn.evaluate = evaluate
  if source:
    loss_fn.load_frozen = load_frozen
  return loss_fn


def diffusion_mode(config: Mapping, noise: noise_lib.Noise | None):
  """The ``diffusion`` mode's loss; see the module docstring."""
  s = section(config, "diffusion", DIFFUSION_DEFAULTS)
  max_sigma = number(s, "max_sigma", low=0)  # 0: every time
  if noise is not None and not isinstance(noise, noise_lib.Gaussian):
    raise InputError(
      f"one-shot diffusion denoising undoes Gaussian noise, not {noise.name}; use "
      "--config.noise=gaussian (noise_sd is the level the test images are denoised at)"
    )
  max_sigma = float(max_sigma) or None

  def loss_fn(model, key, images, labels, epoch, frozen=None):
    del labels, epoch, frozen
    return diffusion.diffusion_loss(model, key, images, max_sigma=max_sigma)

  def evaluate(model, key, images, labels, frozen=None):
    del frozen
    real = (labels >= 0).astype(jnp.float32)
    loss_key, noise_key = jax.random.split(key)
    sums = {}
    # The objective per image: the loss of a batch of one image each.
    per_image = jax.vmap(
      lambda k, x: diffusion.diffusion_loss(model, k, x[None], max_sigma=max_sigma)[0]
    )(jax.random.split(loss_key, images.shape[0]), images)
    sums["eps_mse"] = jnp.sum(real * per_image)
    if noise is not None:
      y = images + noise.sample(noise_key, images.shape, images.dtype)
      out = diffusion.one_shot_denoise(
        model, y, diffusion.timestep_for_sigma(noise.sigma, "cosine")
      )
      sums["mse"] = jnp.sum(real * _per_image_mse(out, images))
      sums["mse_noisy"] = jnp.sum(real * _per_image_mse(y, images))
    return sums

  loss_fn.evaluate = evaluate
  return loss_fn


__all__ = ["DENOISER_DEFAULTS", "DIFFUSION_DEFAULTS", "LOSSES", "denoiser_mode", "diffusion_mode"]
