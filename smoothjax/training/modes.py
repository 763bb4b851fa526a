"""Training modes: each a loss built from the losses and attacks of :mod:`smoothjax.objectives`.

A mode is a factory ``build(settings, noise) -> loss_fn``: it checks its settings
(one-line :class:`~smoothjax.errors.InputError` before anything is written) and
returns ``loss_fn(model, key, images, labels, epoch) -> (loss, aux)``, which the
train step differentiates with respect to the model's parameters. ``aux`` is a
dict of scalar metrics; ``accuracy`` is always there (of the inputs the model
is trained on), other entries are logged as ``train_<name>``.

* ``standard``: cross-entropy on clean images.
* ``noise`` (alias ``gaussian``): cross-entropy on ``x + eps``, ``eps`` drawn from
  the run's noise (:func:`noise_from_config`: ``config.noise`` at ``config.noise_sd``):
  the Gaussian data augmentation of Cohen, Rosenfeld and Kolter, "Certified Adversarial
  Robustness via Randomized Smoothing" (ICML 2019), and its Laplace, uniform and ExpInf
  versions of Yang et al., "Randomized Smoothing of All Shapes and Sizes" (ICML 2020).
  The noise modes below draw from the same noise.
* ``fgsm`` and ``pgd``: adversarial training (Madry et al., "Towards Deep Learning
  Models Resistant to Adversarial Attacks", ICLR 2018) on FGSM / PGD points of
  the cross-entropy, l2 or linf (``config.attack``).
* ``smoothadv``: SmoothAdv (Salman et al., "Provably Robust Deep Learning via
  Adversarially Trained Smoothed Classifiers", NeurIPS 2019): PGD on the soft
  smoothed classifier's cross-entropy ``-log G(x + delta)_y`` estimated with the
  ``m`` noise samples that are then added to the adversarial point for training
  (``config.smoothadv``), with eps warm-up over the first epochs. The attack's
  norm is l2 (Salman et al.) by default; ``smoothadv.norm = "l1"`` is Yang et al.
  2020's adversarial training of Laplace and uniform smoothing in their own norm.
* ``consistency``: Jeong and Shin, "Consistency Regularization for Certified
  Robustness of Smoothed Classifiers" (NeurIPS 2020) (``config.consistency``).
* ``macer``: Zhai et al., "MACER: Attack-free and Scalable Robust Training via
  Maximizing Certified Radius" (ICLR 2020) (``config.macer``).
* ``fixedpoint``: fine-tuning for generation (``config.fixedpoint``): with
  ``psi(x; theta)`` the generation PGD of :mod:`smoothjax.objectives.generation` started at
  a real image towards its own label, minimise ``mean ||x - psi(x; theta)||^2``
  (differentiated through the unrolled steps) plus ``ce_weight`` times the
  cross-entropy under the run's noise (clean without noise), which keeps the
  model a classifier; ``ce_weight = 0`` is the fixed-point objective alone. Start
  it from a trained workdir with ``config.init_from``.

* ``denoiser`` and ``diffusion``: a denoiser for denoised smoothing, and an
  epsilon-prediction diffusion model for one-shot diffusion denoising
  (:mod:`smoothjax.training.denoising`, ``config.denoiser`` and ``config.diffusion``).

A mode's loss may carry two attributes the loop uses: ``evaluate(model, key, images,
labels, frozen) -> sums`` (the test metrics' sums over a batch; the classifiers'
clean and noisy accuracy without it) and ``load_frozen() -> state`` (a frozen model's
state, e.g. the classifier a denoiser is trained against, passed to the loss as
``frozen=``, a jit argument of the train step).

Attacks inside training run on an eval-mode view of the model with its
parameters held constant (:func:`frozen_logits_fn`), so BatchNorm neither
normalises with nor updates batch statistics during attack forward passes (as
SmoothAdv's ``model.eval()`` before attacking), and the adversarial point is a
constant of the training loss (Danskin's theorem, as in Madry et al.).

Example::

  loss_fn = modes.build(config)         # config.mode, config.noise_sd, sections
  (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(
      model, key, images, labels, epoch)
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from smoothjax import models
from smoothjax import noise as noise_lib
from smoothjax.errors import InputError
from smoothjax.objectives import attacks, generation, losses
from smoothjax.training import denoising
from smoothjax.training.settings import for_inputs
from smoothjax.training.settings import number as _number
from smoothjax.training.settings import section as _section

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def frozen_logits_fn(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
  """The model's eval-mode logits with its state held constant (no gradient, no updates).

  Usable inside a jitted loss: the returned function merges a copy of the model
  in eval mode, so BatchNorm uses its running averages and writes nothing back.
  """
  graphdef, state = nnx.split(model)
  state = jax.lax.stop_gradient(state)

  def logits_fn(x):
    copy = nnx.merge(graphdef, state)
    copy.eval()
    return copy(x)

  return logits_fn


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def _noisy_copies(model, key, images, noise, m):
  """Logits ``(m, B, K)`` of ``m`` noisy copies of every image, in one forward pass."""
  eps = losses.noise_batch(for_inputs(noise, images), key, m, images.shape, images.dtype)
  logits = model((images[None] + eps).reshape(-1, *images.shape[1:]))
  return logits.reshape(m, images.shape[0], -1)


# --------------------------------------------------------------------------
# Settings: each mode's section of the config, checked when the mode is built.


def _need_noise(name, noise):
  if noise is None:
    raise InputError(f"mode {name!r} trains under noise: set --config.noise_sd to a value > 0")
  return noise


# --------------------------------------------------------------------------
# The modes.


def _standard(config, noise) -> LossFn:
  del config, noise

  def loss_fn(model, key, images, labels, epoch):
    del key, epoch
    logits = model(images)
    return _ce(logits, labels).mean(), {"accuracy": _accuracy(logits, labels)}

  return loss_fn


def _noise(config, noise) -> LossFn:
  noise = _need_noise(config.get("mode", "noise"), noise)

  def loss_fn(model, key, images, labels, epoch):
    del epoch
    logits = model(images + for_inputs(noise, images).sample(key, images.shape, images.dtype))
    return _ce(logits, labels).mean(), {"accuracy": _accuracy(logits, labels)}

  return loss_fn


ATTACK_DEFAULTS = {"norm": "linf", "eps": 0.3, "steps": 10, "step_size": 0.0, "random_start": True}


def _attack_settings(config):
  s = _section(config, "attack", ATTACK_DEFAULTS)
  if s["norm"] not in ("l2", "linf"):
    raise InputError(f"attack.norm must be 'l2' or 'linf', got {s['norm']!r}")
  s["eps"] = _number(s, "eps", low=0, low_open=True)
  s["steps"] = _number(s, "steps", low=1, integer=True)
  s["step_size"] = _number(s, "step_size", low=0) or None  # 0: the attack's default
  if not isinstance(s["random_start"], bool):
    raise InputError(f"attack.random_start must be True or False, got {s['random_start']!r}")
  return s


def _adversarial(config, noise, *, single_step: bool) -> LossFn:
  del noise
  s = _attack_settings(config)

  def loss_fn(model, key, images, labels, epoch):
    del epoch
    frozen = frozen_logits_fn(model)

    def attack_loss(x, y):
      return _ce(frozen(x), y)

    if single_step:
      attack = attacks.fgsm(attack_loss, eps=s["eps"], norm=s["norm"])
    else:
      attack = attacks.pgd(
        attack_loss,
        eps=s["eps"],
        norm=s["norm"],
        steps=s["steps"],
        step_size=s["step_size"],
        random_start=s["random_start"],
      )
    x_adv = jax.lax.stop_gradient(attack(key, images, labels))
    logits = model(x_adv)
    return _ce(logits, labels).mean(), {"accuracy": _accuracy(logits, labels)}

  return loss_fn


# Salman et al.'s CIFAR-10 settings range over m in {1, 2, 4, 8}, eps in {0.25, 0.5, 1, 2},
# steps in {1, 2, 4, 8, 10}, with a 10-epoch eps warm-up; these defaults are a cheap middle.
# norm: Salman et al.'s l2; "l1" is Yang et al. 2020's attack against Laplace and uniform
# smoothing (sparse sign steps, l1 projection; see smoothjax.objectives.attacks), "linf" sign steps.
SMOOTHADV_DEFAULTS = {
  "m": 2,
  "eps": 0.25,
  "steps": 2,
  "step_size": 0.0,
  "warmup_epochs": 10,
  "norm": "l2",
}


def _smoothadv(config, noise) -> LossFn:
  noise = _need_noise("smoothadv", noise)
  s = _section(config, "smoothadv", SMOOTHADV_DEFAULTS)
  m = _number(s, "m", low=1, integer=True)
  eps = _number(s, "eps", low=0)
  steps = _number(s, "steps", low=1, integer=True)
  step_size = _number(s, "step_size", low=0) or None
  warmup = _number(s, "warmup_epochs", low=1, integer=True)
  if s["norm"] not in attacks.NORMS:
    raise InputError(f"smoothadv.norm must be one of {', '.join(attacks.NORMS)}, got {s['norm']!r}")

  def loss_fn(model, key, images, labels, epoch):
    # Salman et al.'s warm-up: eps grows linearly to its value over the first epochs.
    scale = jnp.minimum(1.0, (epoch + 1) / warmup).astype(images.dtype)
    eps_noise = losses.noise_batch(for_inputs(noise, images), key, m, images.shape, images.dtype)
    attack = attacks.smoothadv(
      frozen_logits_fn(model),
      eps=eps * scale,
      steps=steps,
      step_size=None if step_size is None else step_size * scale,
      norm=s["norm"],
    )
    x_adv = jax.lax.stop_gradient(attack(images, labels, eps_noise))
    logits = model((x_adv[None] + eps_noise).reshape(-1, *images.shape[1:]))
    targets = jnp.tile(labels, m)
    return _ce(logits, targets).mean(), {"accuracy": _accuracy(logits, targets)}

  return loss_fn


CONSISTENCY_DEFAULTS = {"m": 2, "lbd": 10.0, "eta": 0.5}


def _consistency(config, noise) -> LossFn:
  noise = _need_noise("consistency", noise)
  s = _section(config, "consistency", CONSISTENCY_DEFAULTS)
  m = _number(s, "m", low=1, integer=True)
  lbd = _number(s, "lbd", low=0)
  eta = _number(s, "eta", low=0)

  def loss_fn(model, key, images, labels, epoch):
    del epoch
    logits = _noisy_copies(model, key, images, noise, m)
    loss, aux = losses.consistency_loss(logits, labels, lbd=lbd, eta=eta)
    return loss, {"accuracy": _accuracy(logits, labels[None]), **aux}

  return loss_fn


# warmup_epochs > 0 (not in the paper) ramps lbd linearly from 0 over the first epochs:
# from scratch, the radius term's large gradients can drive a small model to confident
# wrong predictions, where -log(G_y + 1e-10) no longer has a gradient to recover with.
MACER_DEFAULTS = {"m": 16, "beta": 16.0, "gamma": 8.0, "lbd": 12.0, "warmup_epochs": 0}


def _macer(config, noise) -> LossFn:
  noise = _need_noise("macer", noise)
  if not isinstance(noise, noise_lib.Gaussian):
    raise InputError(
      f"macer's radius term is for Gaussian noise, not {noise.name}; use --config.noise=gaussian"
    )
  s = _section(config, "macer", MACER_DEFAULTS)
  m = _number(s, "m", low=1, integer=True)
  beta = _number(s, "beta", low=0, low_open=True)
  gamma = _number(s, "gamma", low=0)
  lbd = _number(s, "lbd", low=0)
  warmup = _number(s, "warmup_epochs", low=0, integer=True)

  def loss_fn(model, key, images, labels, epoch):
    logits = _noisy_copies(model, key, images, noise, m)
    weight = lbd if warmup == 0 else lbd * jnp.minimum(1.0, epoch / warmup).astype(logits.dtype)
    loss, aux = losses.macer_loss(
      logits, labels, sigma=noise.sigma, beta=beta, gamma=gamma, lbd=weight
    )
    return loss, {"accuracy": _accuracy(logits, labels[None]), **aux}

  return loss_fn


# psi: l2 steps (a sign step has zero derivative in the parameters), no random start,
# the last iterate (keep_best=True selects among iterates by their scores instead).
# m = 0 generates with the base classifier (a robust model's), m > 0 with the smoothed one
# under the run's noise.
FIXEDPOINT_DEFAULTS = {
  "loss": "ce",
  "m": 0,
  "eps": 2.0,
  "steps": 5,
  "step_size": 0.0,
  "keep_best": False,
  "remat": True,
  "ce_weight": 1.0,
}


def eval_logits_fn(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
  """The model's eval-mode logits, differentiable in its parameters (no state updates)."""
  graphdef, state = nnx.split(model)

  def logits_fn(x):
    copy = nnx.merge(graphdef, state)
    copy.eval()
    return copy(x)

  return logits_fn


def _fixedpoint(config, noise) -> LossFn:
  s = _section(config, "fixedpoint", FIXEDPOINT_DEFAULTS)
  if s["loss"] not in generation.LOSSES:
    raise InputError(
      f"fixedpoint.loss must be one of {', '.join(generation.LOSSES)}, got {s['loss']!r}"
    )
  m = _number(s, "m", low=0, integer=True)
  if m > 0:
    _need_noise("fixedpoint with m > 0", noise)
  eps = _number(s, "eps", low=0, low_open=True)
  steps = _number(s, "steps", low=1, integer=True)
  step_size = _number(s, "step_size", low=0) or None
  ce_weight = _number(s, "ce_weight", low=0)
  for name in ("keep_best", "remat"):
    if not isinstance(s[name], bool):
      raise InputError(f"fixedpoint.{name} must be True or False, got {s[name]!r}")
  settings = dict(
    loss=s["loss"],
    m=m,
    eps=eps,
    norm="l2",
    steps=steps,
    step_size=step_size,
    keep_best=s["keep_best"],
    remat=s["remat"],
  )

  def loss_fn(model, key, images, labels, epoch):
    del epoch
    psi_key, noise_key = jax.random.split(key)
    bound = None if noise is None else for_inputs(noise, images)
    keys = jax.random.split(psi_key, images.shape[0]) if m > 0 else None
    distances = generation.fixed_point_loss(
      eval_logits_fn(model), images, labels, keys, noise=bound, **settings
    )
    fixed_point = jnp.mean(distances)
    inputs = images
    if bound is not None:
      inputs = images + bound.sample(noise_key, images.shape, images.dtype)
    logits = model(inputs)
    cross_entropy = _ce(logits, labels).mean()
    loss = fixed_point + ce_weight * cross_entropy
    return loss, {
      "accuracy": _accuracy(logits, labels),
      "fixed_point": fixed_point,
      "cross_entropy": cross_entropy,
    }

  return loss_fn


# Mode name -> factory ``build(config, noise) -> loss_fn``.
MODES: dict[str, Callable[[Mapping[str, Any], noise_lib.Noise | None], LossFn]] = {
  "standard": _standard,
  "noise": _noise,
  "gaussian": _noise,
  "fgsm": functools.partial(_adversarial, single_step=True),
  "pgd": functools.partial(_adversarial, single_step=False),
  "smoothadv": _smoothadv,
  "consistency": _consistency,
  "macer": _macer,
  "fixedpoint": _fixedpoint,
  "denoiser": denoising.denoiser_mode,
  "diffusion": denoising.diffusion_mode,
}

# The kind of model (smoothjax.models.kind) each mode trains; every other mode a classifier.
MODEL_KINDS = {"denoiser": "denoiser", "diffusion": "diffusion"}


def check_model_kind(config: Mapping[str, Any]) -> None:
  """Refuses a mode and a model of different kinds (a classifier under ``denoiser``, ...).

  Raises:
    InputError: unknown model, or one the mode cannot train.
  """
  name, mode = config.get("model"), config.get("mode")
  have = models.kind(name)
  want = MODEL_KINDS.get(mode, "classifier")
  if have != want:
    choices = {
      "classifier": models.MODELS,
      "denoiser": models.DENOISERS,
      "diffusion": models.DIFFUSION_MODELS,
    }[want]
    raise InputError(
      f"mode {mode!r} trains a {want}, but model {name!r} is a {have}; choose one of "
      f"{', '.join(choices)}"
    )


def noise_from_config(config: Mapping[str, Any]) -> noise_lib.Noise | None:
  """The run's training and evaluation noise; None when ``noise_sd`` is 0.

  ``config.noise`` names the family (default ``"gaussian"``; ``"laplace"``,
  ``"uniform"``, ``"expinf:k=1:j=0"``, see :func:`smoothjax.noise.parse`) and
  ``config.noise_sd`` its scale as sigma, the per-coordinate standard deviation.
  """
  sd = config.get("noise_sd", 0.0)
  if isinstance(sd, bool) or not isinstance(sd, numbers.Real) or not math.isfinite(sd) or sd < 0:
    raise InputError(f"noise_sd must be a finite number >= 0, got {sd!r}")
  if sd == 0:
    return None
  try:
    return noise_lib.parse(config.get("noise", "gaussian"), sigma=float(sd))
  except InputError as e:
    raise InputError(f"config.noise: {e} (config.noise_sd gives the scale)") from None


def build(config: Mapping[str, Any]) -> LossFn:
  """The loss of ``config.mode``, its settings checked.

  Args:
    config: a training config: ``mode``, ``noise_sd`` and the mode's section
      (``attack``, ``smoothadv``, ``consistency`` or ``macer``; missing keys take
      the papers' defaults).

  Returns:
    ``loss_fn(model, key, images, labels, epoch) -> (loss, aux)``.

  Raises:
    InputError: unknown mode or bad settings.
  """
  name = config.get("mode")
  if name not in MODES:
    raise InputError(f"unknown training mode {name!r}; choose one of {', '.join(MODES)}")
  return MODES[name](config, noise_from_config(config))
