"""Image denoisers for denoised smoothing, and a classifier composed with one.

Denoised smoothing (Salman, Sun, Yang, Kapoor and Kolter, "Denoised Smoothing: A
Provable Defense for Pretrained Classifiers", NeurIPS 2020) certifies ``f(D(x + delta))``:
a denoiser ``D`` in front of a classifier ``f`` that was never trained under noise. A
denoiser maps noisy NHWC images in [0, 1] pixel space to images of the same shape.

* :class:`DnCNN` is theirs (Zhang et al., "Beyond a Gaussian Denoiser", IEEE TIP 2017, as
  in ``code/archs/dncnn.py`` of microsoft/denoised-smoothing): a 3x3 convolution and ReLU,
  ``depth - 2`` blocks of 3x3 convolution, BatchNorm and ReLU, and a last 3x3 convolution
  that predicts the *noise*; the input minus that prediction is returned. Convolutions
  are orthogonally initialised, as theirs are.
* With ``conditioned=True`` the noise level is a second input, ``model(y, sigma)``: a
  constant map of ``sigma`` joins the image's channels (as FFDNet, Zhang, Zuo and Zhang,
  IEEE TIP 2018, does), so one model denoises at several noise levels.
  :class:`AtNoise` fixes the level, which makes it a one-argument denoiser again.
* :class:`Denoised` is the composition ``classifier(denoiser(x))``, itself a model: an
  ``nnx.Module`` whose parameters are jit arguments, which CERTIFY, PREDICT, attacks and
  generation take as any ``logits_fn``. :func:`denoised` composes any two callables.

Sizes: ``dncnn`` is Salman et al.'s 17 layers of 64 channels (CIFAR-10 and ImageNet,
556,096 parameters for one channel); ``dncnn_small`` (8 layers of 32 channels, 56,288) is
the one for 28x28 digits, chosen by measuring: after 3 epochs of MSE at sigma 0.25 on the
embedded digits its test MSE is 0.016 against the large one's 0.023 and ``dncnn_tiny``'s
0.050, at a seventh of the large one's training time and a fifth of its forward cost
(benchmarks/RESULTS.md, "Denoised smoothing").

Example::

  denoiser = models.create_denoiser("dncnn_small", input_shape=(28, 28, 1),
                                    rngs=nnx.Rngs(params=0))
  clean_estimate = denoiser(noisy_images)          # (N, 28, 28, 1)
  model = models.Denoised(denoiser, classifier)    # logits of the denoised images
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax.errors import InputError
from smoothjax.models.cnn import batch_norm


def _orthogonal_conv(in_features, out_features, *, use_bias, rngs, dtype):
  return nnx.Conv(
    in_features,
    out_features,
    (3, 3),
    padding=[(1, 1), (1, 1)],
    use_bias=use_bias,
    kernel_init=jax.nn.initializers.orthogonal(),
    dtype=dtype,
    rngs=rngs,
  )


def _check_images(x: jax.Array, channels: int, what: str) -> None:
  if x.ndim != 4 or x.shape[-1] != channels:
    raise InputError(
      f"{what} takes NHWC images with {channels} channels, got shape {tuple(x.shape)}; "
      "add a batch axis or build the denoiser for your images' channels"
    )


class DnCNN(nnx.Module):
  """DnCNN: predicts the noise of ``y`` and returns ``y`` minus it.

  Args:
    channels: image channels (1 for digits, 3 for colour).
    depth: convolutions in all (Salman et al.: 17).
    features: channels of the hidden convolutions (Salman et al.: 64).
    conditioned: take the noise level as a second input, ``model(y, sigma)``.
    input_shape: ``(H, W, C)`` of the images, checked against ``channels`` (any spatial
      size works: the network is fully convolutional).
    rngs: random streams for initialisation (``params``).
    dtype: computation dtype; parameters are float32 and outputs float32.
  """

  def __init__(
    self,
    channels: int,
    *,
    depth: int = 17,
    features: int = 64,
    conditioned: bool = False,
    input_shape=None,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    if int(depth) < 3:
      raise InputError(f"DnCNN needs depth >= 3 convolutions, got {depth}")
    if input_shape is not None and (len(input_shape) != 3 or int(input_shape[2]) != channels):
      raise InputError(
        f"input_shape {tuple(input_shape)} does not have {channels} channels; make them agree"
      )
    self.channels = int(channels)
    self.conditioned = bool(conditioned)
    layers = [
      _orthogonal_conv(
        channels + self.conditioned, features, use_bias=True, rngs=rngs, dtype=dtype
      ),
      jax.nn.relu,
    ]
    for _ in range(int(depth) - 2):
      layers += [
        _orthogonal_conv(features, features, use_bias=False, rngs=rngs, dtype=dtype),
        batch_norm(features, rngs=rngs, dtype=dtype),
        jax.nn.relu,
      ]
    layers.append(_orthogonal_conv(features, channels, use_bias=False, rngs=rngs, dtype=dtype))
    # A Sequential: models.fold_batchnorm folds each BatchNorm into the convolution before it.
    self.layers = nnx.Sequential(*layers)

  def __call__(self, y: jax.Array, sigma=None) -> jax.Array:
    _check_images(y, self.channels, "the denoiser")
    y = y.astype(jnp.float32)
    x = y
    if self.conditioned:
      if sigma is None:
        raise InputError(
          "this denoiser is conditioned on the noise level: call it as model(y, sigma), or "
          "wrap it in models.AtNoise(model, sigma)"
        )
      level = jnp.broadcast_to(
        jnp.asarray(sigma, jnp.float32).reshape(-1, 1, 1, 1), (y.shape[0], *y.shape[1:3], 1)
      )
      x = jnp.concatenate([y, level], axis=-1)
    elif sigma is not None:
      raise InputError(
        "this denoiser was built for one noise level and takes no sigma; build it with "
        "conditioned=True to denoise at several"
      )
    return y - self.layers(x).astype(jnp.float32)


DnCNNSmall = functools.partial(DnCNN, depth=8, features=32)
DnCNNConditioned = functools.partial(DnCNN, conditioned=True)
DnCNNSmallConditioned = functools.partial(DnCNN, depth=8, features=32, conditioned=True)
DnCNNTiny = functools.partial(DnCNN, depth=3, features=8)


class AtNoise(nnx.Module):
  """A noise-level-conditioned denoiser at one level: ``model(y, sigma)`` as ``f(y)``."""

  def __init__(self, denoiser: nnx.Module, sigma: float):
    self.denoiser = denoiser
    self.sigma = float(sigma)

  def __call__(self, y: jax.Array) -> jax.Array:
    return self.denoiser(y, self.sigma)


class Denoised(nnx.Module):
  """``classifier(denoiser(x))``: the base classifier of denoised smoothing.

  Both parts are state of one module, so the composition is a pytree like any model:
  its weights travel as jit arguments, ``models.for_inference`` folds both parts'
  BatchNorms, and ``model.eval()`` reaches both.
  """

  def __init__(self, denoiser: nnx.Module, classifier: nnx.Module):
    self.denoiser = denoiser
    self.classifier = classifier

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.classifier(self.denoiser(x))


def denoised(classifier: Callable, denoiser: Callable) -> Callable:
  """The logits function ``classifier(denoiser(x))`` of any two callables.

  Two ``nnx.Module``s give a :class:`Denoised` module (a pytree whose weights are jit
  arguments); plain functions give a plain function, e.g. a notebook's own denoiser in
  front of a model::

    logits_fn = models.denoised(my_classifier, lambda y: my_denoise(params, y))
    certs = smoothing.certify_batch(logits_fn, images, keys, ...)
  """
  for name, fn in (("classifier", classifier), ("denoiser", denoiser)):
    if not callable(fn):
      raise InputError(f"the {name} must be callable (a model or a function), got {fn!r}")
  if isinstance(classifier, nnx.Module) and isinstance(denoiser, nnx.Module):
    return Denoised(denoiser, classifier)

  def logits_fn(x):
    return classifier(denoiser(x))

  return logits_fn


__all__ = [
  "AtNoise",
  "Denoised",
  "DnCNN",
  "DnCNNConditioned",
  "DnCNNSmall",
  "DnCNNSmallConditioned",
  "DnCNNTiny",
  "denoised",
]
