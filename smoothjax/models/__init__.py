"""Flax NNX image classifiers, denoisers and diffusion models over NHWC images in [0, 1].

Every model normalises its input first, ``(x - mean) / std`` per channel, so noise and
attacks act in [0, 1] pixel space and any ``logits_fn = model`` can be smoothed. The
constants are :class:`NormalizationConstant` state (a subclass of ``nnx.BatchStat``, not
``nnx.Param``): ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` never trains them, and
``nnx.split``/``nnx.merge`` and checkpoints of ``nnx.state(model)`` carry them.

Models are built in eval mode. ``model.train()`` (flax's ``Module.train``, which sets
``use_running_average=False`` on every BatchNorm) makes BatchNorm normalise with batch
statistics and update its running averages (``0.9 * old + 0.1 * batch``, PyTorch's
default, with epsilon 1e-5); ``model.eval()`` switches back to the running averages, which
makes each example's logits independent of the rest of its batch. The mode is a static
attribute, so split after setting it, or call ``train()``/``eval()`` after ``nnx.merge``
inside the jitted function. Unlike PyTorch, the running variance is the biased batch
variance.

Beside the classifiers (:data:`MODELS`, built by :func:`create`) live the denoisers of
denoised smoothing (:data:`DENOISERS`, :mod:`smoothjax.models.denoisers`) and the
epsilon-prediction diffusion models of one-shot diffusion denoising
(:data:`DIFFUSION_MODELS`, :mod:`smoothjax.models.unet` and
:mod:`smoothjax.models.diffusion`), built by :func:`create_denoiser`; :func:`from_config`
builds whichever a run's ``config.model`` names, and :func:`kind` says which it is.

Example::

  model = models.create("resnet20", num_classes=10, mean=(0.4914, 0.4822, 0.4465),
                        std=(0.2470, 0.2435, 0.2616), rngs=nnx.Rngs(params=0))
  logits = model(images)  # (N, 10) float32
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax.errors import InputError
from smoothjax.models.cnn import (
  CNN,
  CNNTiny,
  LeNet,
  LeNet5,
  NormalizationConstant,
  Normalize,
)
from smoothjax.models.denoisers import (
  AtNoise,
  Denoised,
  DnCNN,
  DnCNNConditioned,
  DnCNNSmall,
  DnCNNSmallConditioned,
  DnCNNTiny,
  denoised,
)
from smoothjax.models.diffusion import OneShot
from smoothjax.models.resnet import (
  BasicBlock,
  Bottleneck,
  ResNet,
  ResNet18,
  ResNet18Tiny,
  ResNet20,
  ResNet50,
  ResNet50Cifar,
  ResNet50CifarTiny,
  ResNet50Tiny,
  ResNet56,
  ResNet110,
  ResNetTiny,
)
from smoothjax.models.transforms import (
  COMPUTE_DTYPES,
  compute_dtype,
  count_batchnorms,
  fold_batchnorm,
  for_inference,
  with_dtype,
)
from smoothjax.models.unet import UNet, UNetCifar, UNetSmall, UNetTiny

_CONSTRUCTORS = {
  "cnn": CNN,
  "cnn_tiny": CNNTiny,
  "lenet": LeNet,
  "lenet5": LeNet5,
  "resnet20": ResNet20,
  "resnet56": ResNet56,
  "resnet110": ResNet110,
  "resnet_tiny": ResNetTiny,
  "resnet18": ResNet18,
  "resnet50": ResNet50,
  "resnet18_tiny": ResNet18Tiny,
  "resnet50_tiny": ResNet50Tiny,
  "resnet50_cifar": ResNet50Cifar,
  "resnet50_cifar_tiny": ResNet50CifarTiny,
}

MODELS: tuple[str, ...] = tuple(_CONSTRUCTORS)
"""The classifiers."""

_DENOISERS = {
  "dncnn": DnCNN,
  "dncnn_small": DnCNNSmall,
  "dncnn_tiny": DnCNNTiny,
  "dncnn_conditioned": DnCNNConditioned,
  "dncnn_small_conditioned": DnCNNSmallConditioned,
}
_DIFFUSION = {
  "unet_small": UNetSmall,
  "unet_tiny": UNetTiny,
  "unet_cifar": UNetCifar,
}
DENOISERS: tuple[str, ...] = tuple(_DENOISERS)
"""Denoisers ``D(y)`` of noisy images (``D(y, sigma)`` for the ``_conditioned`` ones)."""
DIFFUSION_MODELS: tuple[str, ...] = tuple(_DIFFUSION)
"""Epsilon-prediction diffusion models ``eps(x_t, t)``, continuous time t in [0, 1]."""
ALL_MODELS: tuple[str, ...] = MODELS + DENOISERS + DIFFUSION_MODELS


def kind(name: str) -> str:
  """``"classifier"``, ``"denoiser"`` or ``"diffusion"``: what the model ``name`` is.

  Raises:
    InputError: no model has that name.
  """
  if name in _CONSTRUCTORS:
    return "classifier"
  if name in _DENOISERS:
    return "denoiser"
  if name in _DIFFUSION:
    return "diffusion"
  raise InputError(f"unknown model {name!r}; choose one of {', '.join(ALL_MODELS)}")


def is_conditioned(name: str) -> bool:
  """Whether the denoiser ``name`` takes the noise level as an input (``D(y, sigma)``)."""
  return name in _DENOISERS and name.endswith("_conditioned")


def create_denoiser(
  name: str,
  *,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  dtype=jnp.float32,
) -> nnx.Module:
  """Builds the denoiser or diffusion model called ``name``, in eval mode.

  Args:
    name: one of :data:`DENOISERS` or :data:`DIFFUSION_MODELS`.
    input_shape: ``(H, W, C)`` of the images.
    rngs: random streams for parameter initialisation (the ``params`` stream is used).
    dtype: computation dtype; parameters and outputs stay float32.

  Returns:
    A denoiser mapping ``(N, H, W, C)`` noisy images in [0, 1] to images of that shape
    (``model(y)``, or ``model(y, sigma)`` for a conditioned one), or a diffusion model
    mapping ``(x_t, t)`` to the predicted noise.
  """
  constructors = {**_DENOISERS, **_DIFFUSION}
  if name not in constructors:
    raise InputError(
      f"unknown denoiser {name!r}; choose one of {', '.join(DENOISERS + DIFFUSION_MODELS)}"
    )
  shape = tuple(int(d) for d in input_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise InputError(f"input_shape must be (height, width, channels), got {input_shape!r}")
  return constructors[name](shape[2], input_shape=shape, rngs=rngs, dtype=dtype)


def create(
  name: str,
  *,
  num_classes: int,
  mean,
  std,
  rngs: nnx.Rngs,
  dtype=jnp.float32,
  input_shape: tuple[int, int, int] | None = None,
  clip_inputs: bool = False,
) -> nnx.Module:
  """Builds the model called ``name``, in eval mode.

  Args:
    name: one of :data:`MODELS`.
    num_classes: number of output logits.
    mean: per-channel mean of the [0, 1] training images (one value per channel).
    std: per-channel standard deviation of the [0, 1] training images.
    rngs: random streams for parameter initialisation (the ``params`` stream is used).
    dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and the
      logits are float32.
    input_shape: ``(H, W, C)`` of the inputs. ``cnn``, ``cnn_tiny``, ``lenet`` and
      ``lenet5`` size their linear layers from it (default ``(28, 28, C)``); ResNets
      only check ``C``.
    clip_inputs: clamp the inputs to [0, 1] before normalising them (MadryLab's
      ``InputNormalize``; models converted from their checkpoints).

  Returns:
    An ``nnx.Module`` mapping ``(N, H, W, C)`` float images in [0, 1] to
    ``(N, num_classes)`` float32 logits.
  """
  if name not in _CONSTRUCTORS:
    raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
  if int(num_classes) < 1:
    raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
  model = _CONSTRUCTORS[name](
    int(num_classes), mean, std, input_shape=input_shape, rngs=rngs, dtype=dtype
  )
  model.normalize.clip = bool(clip_inputs)
  return model


def from_config(config, info, *, seed: int = 0, dtype=jnp.float32) -> nnx.Module:
  """The model named by a run's ``config.model`` for a dataset (a classifier normalising
  inside, a denoiser, or a diffusion model).

  Args:
    config: a training config (anything with a ``model`` field, e.g. a ConfigDict);
      ``config.clip_inputs``, when present and true, clamps the inputs to [0, 1].
    info: the dataset's :class:`smoothjax.data.DatasetInfo` (classes, image shape,
      normalisation constants).
    seed: seed of the ``params`` stream that initialises the weights.
    dtype: computation dtype.

  Returns:
    The model, in eval mode.
  """
  if kind(config.model) != "classifier":
    return create_denoiser(
      config.model,
      input_shape=tuple(info.image_shape),
      rngs=nnx.Rngs(params=seed),
      dtype=dtype,
    )
  return create(
    config.model,
    num_classes=info.num_classes,
    mean=info.mean,
    std=info.std,
    input_shape=tuple(info.image_shape),
    rngs=nnx.Rngs(params=seed),
    dtype=dtype,
    clip_inputs=bool(config.get("clip_inputs", False)),
  )


def param_count(model: nnx.Module) -> int:
  """Number of trainable (``nnx.Param``) scalars; works on ``nnx.eval_shape`` models too."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = [
  "ALL_MODELS",
  "COMPUTE_DTYPES",
  "DENOISERS",
  "DIFFUSION_MODELS",
  "MODELS",
  "AtNoise",
  "Denoised",
  "DnCNN",
  "DnCNNConditioned",
  "DnCNNSmall",
  "DnCNNSmallConditioned",
  "DnCNNTiny",
  "OneShot",
  "UNet",
  "UNetCifar",
  "UNetSmall",
  "UNetTiny",
  "create_denoiser",
  "denoised",
  "is_conditioned",
  "kind",
  "BasicBlock",
  "Bottleneck",
  "CNN",
  "CNNTiny",
  "LeNet",
  "LeNet5",
  "NormalizationConstant",
  "Normalize",
  "ResNet",
  "ResNet18",
  "ResNet18Tiny",
  "ResNet20",
  "ResNet50",
  "ResNet50Cifar",
  "ResNet50CifarTiny",
  "ResNet50Tiny",
  "ResNet56",
  "ResNet110",
  "ResNetTiny",
  "compute_dtype",
  "count_batchnorms",
  "create",
  "fold_batchnorm",
  "for_inference",
  "from_config",
  "param_count",
  "with_dtype",
]
