"""Input normalisation, layer helpers shared by every model, and small CNNs for MNIST."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smoothjax.errors import InputError

# He et al. (2015) normal init with fan_out, as torchvision's ResNets and Cohen et al.'s
# cifar_resnet.py initialise convolutions (untruncated, std sqrt(2 / (k * k * out))).
he_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class NormalizationConstant(nnx.BatchStat):
  """A per-channel input mean or standard deviation: model state that is never trained.

  It subclasses ``nnx.BatchStat`` so that it travels with the batch statistics: it is
  excluded from ``nnx.Optimizer(..., wrt=nnx.Param)`` and from weight decay, the common
  ``nnx.split(model, nnx.Param, nnx.BatchStat)`` pattern covers it, and checkpoints of
  ``nnx.state(model)`` store it next to the weights. Nothing ever updates it.
  """


def _as_channels(name: str, value) -> np.ndarray:
  arr = np.asarray(value, dtype=np.float64).reshape(-1)
  if arr.size == 0 or not np.all(np.isfinite(arr)):
    raise InputError(
      f"{name} must be a non-empty sequence of finite per-channel values, got {value!r}"
    )
  return arr


class Normalize(nnx.Module):
  """``(x - mean) / std`` per channel, for NHWC images in [0, 1].

  With ``clip`` the input is clamped to [0, 1] first, as MadryLab's ``InputNormalize``
  (``robustness/tools/helpers.py``) does: noisy inputs then reach the network clamped.
  """

  def __init__(self, mean: Sequence[float], std: Sequence[float], *, clip: bool = False):
    mean_arr, std_arr = _as_channels("mean", mean), _as_channels("std", std)
    if mean_arr.shape != std_arr.shape:
      raise InputError(
        f"mean has {mean_arr.size} channels but std has {std_arr.size}; give one value "
        "per image channel for both"
      )
    if np.any(std_arr <= 0):
      raise InputError(f"std must be positive for every channel, got {list(std_arr)}")
    self.num_channels = int(mean_arr.size)
    self.clip = bool(clip)
    self.mean = NormalizationConstant(jnp.asarray(mean_arr, jnp.float32))
    self.std = NormalizationConstant(jnp.asarray(std_arr, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.num_channels:
      raise InputError(
        f"expected NHWC images with {self.num_channels} channels, got shape {x.shape}; "
        "add a batch axis or build the model with one mean/std value per channel"
      )
    x = x.astype(jnp.float32)
    if self.clip:
      x = jnp.clip(x, 0.0, 1.0)
    return (x - self.mean[...]) / self.std[...]


def check_input_shape(input_shape, num_channels: int) -> tuple[int, int, int] | None:
  """Validates an ``(H, W, C)`` input shape against the number of normalisation channels."""
  if input_shape is None:
    return None
  shape = tuple(int(d) for d in input_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise InputError(f"input_shape must be (height, width, channels), got {input_shape!r}")
  if shape[2] != num_channels:
    raise InputError(
      f"input_shape {shape} has {shape[2]} channels but mean/std have {num_channels}; "
      "make them agree"
    )
  return shape


def conv(
  in_features: int,
  out_features: int,
  kernel: int,
  stride: int = 1,
  *,
  padding=None,
  use_bias: bool = False,
  rngs: nnx.Rngs,
  dtype=jnp.float32,
) -> nnx.Conv:
  """A square convolution with He fan-out init; default padding ``kernel // 2`` (PyTorch)."""
  if padding is None:
    padding = [(kernel // 2, kernel // 2)] * 2
  return nnx.Conv(
    in_features,
    out_features,
    (kernel, kernel),
    strides=stride,
    padding=padding,
    use_bias=use_bias,
    kernel_init=he_normal_fan_out,
    dtype=dtype,
    rngs=rngs,
  )


def batch_norm(num_features: int, *, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.BatchNorm:
  """BatchNorm with PyTorch's defaults (running average ``0.9 * old + 0.1 * batch``).

  Built in eval mode (running averages); ``model.train()`` switches to batch statistics.
  """
  return nnx.BatchNorm(
    num_features,
    use_running_average=True,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
    rngs=rngs,
  )


def _max_pool_2(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def _check_spatial(x: jax.Array, input_shape: tuple[int, int, int]) -> None:
  if tuple(x.shape[1:]) != input_shape:
    raise InputError(
      f"this model was built for inputs of shape {input_shape}, got {tuple(x.shape[1:])}; "
      "pass input_shape=(H, W, C) of your images to models.create"
    )


class CNN(nnx.Module):
  """Two conv-BN-ReLU-maxpool stages and a linear head, for MNIST-sized inputs.

  Args:
    num_classes: number of output logits.
    mean: per-channel mean subtracted from the [0, 1] inputs.
    std: per-channel standard deviation the inputs are divided by.
    input_shape: ``(H, W, C)`` of the inputs, fixing the head's size; default
      ``(28, 28, C)``.
    features: channels of the two convolutions.
    rngs: random streams for initialisation (``params``).
    dtype: computation dtype; parameters are float32 and logits are returned in float32.
  """

  # Each BatchNorm and the convolution it follows (models.fold_batchnorm).
  conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

  def __init__(
    self,
    num_classes: int,
    mean,
    std,
    *,
    input_shape=None,
    features: tuple[int, int] = (32, 64),
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    self.normalize = Normalize(mean, std)
    c = self.normalize.num_channels
    self.input_shape = check_input_shape(input_shape, c) or (28, 28, c)
    h, w, _ = self.input_shape
    f1, f2 = features
    if h < 4 or w < 4:
      raise InputError(f"CNN needs inputs of at least 4x4 pixels, got input_shape {input_shape}")
    self.conv1 = conv(c, f1, 3, use_bias=False, rngs=rngs, dtype=dtype)
    self.bn1 = batch_norm(f1, rngs=rngs, dtype=dtype)
    self.conv2 = conv(f1, f2, 3, use_bias=False, rngs=rngs, dtype=dtype)
    self.bn2 = batch_norm(f2, rngs=rngs, dtype=dtype)
    self.head = nnx.Linear((h // 2 // 2) * (w // 2 // 2) * f2, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.normalize(x)
    _check_spatial(x, self.input_shape)
    x = _max_pool_2(nnx.relu(self.bn1(self.conv1(x))))
    x = _max_pool_2(nnx.relu(self.bn2(self.conv2(x))))
    return self.head(x.reshape(x.shape[0], -1)).astype(jnp.float32)


def _torch_default_init(fan_in: int):
  """PyTorch's default init of Conv2d/Linear biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# PyTorch's default init of Conv2d/Linear weights, kaiming_uniform(a=sqrt(5)): also
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_conv(in_features, out_features, kernel, *, rngs, dtype):
  return nnx.Conv(
    in_features,
    out_features,
    (kernel, kernel),
    padding="VALID",
    kernel_init=torch_default_kernel_init,
    bias_init=_torch_default_init(in_features * kernel * kernel),
    dtype=dtype,
    rngs=rngs,
  )


def _torch_linear(in_features, out_features, *, rngs, dtype):
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=torch_default_kernel_init,
    bias_init=_torch_default_init(in_features),
    dtype=dtype,
    rngs=rngs,
  )


class LeNet(nnx.Module):
  """The LeNet of the randomized-smoothing literature's MNIST and Fashion-MNIST results.

  conv 20 5x5 'VALID' -> ReLU -> maxpool 2 -> conv 50 5x5 'VALID' -> ReLU -> maxpool 2 ->
  fc 500 -> ReLU -> fc classes, no BatchNorm: Caffe's LeNet as ported to PyTorch in the
  code of Jeong & Shin 2020 (consistency regularisation, ``code/archs/lenet.py`` of
  jh-jeong/smoothing-consistency), whose MNIST baselines (Cohen-style Gaussian
  augmentation, SmoothAdv, stability training, MACER) all train it; 431,080 parameters
  for 10 classes on 28x28x1 inputs. Weights and biases start as PyTorch's defaults,
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Two differences, neither of which changes what the network can represent: the
  features are flattened in HWC rather than CHW order (permute fc1's rows to load
  PyTorch weights), and the input is normalised first, as in every model here, where
  that code feeds raw [0, 1] MNIST pixels (an affine map the first convolution can
  absorb). Arguments as for :class:`CNN`.
  """

  def __init__(
    self, num_classes: int, mean, std, *, input_shape=None, rngs: nnx.Rngs, dtype=jnp.float32
  ):
    self.normalize = Normalize(mean, std)
    c = self.normalize.num_channels
    self.input_shape = check_input_shape(input_shape, c) or (28, 28, c)
    h, w, _ = self.input_shape
    h, w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if h < 1 or w < 1:
      raise InputError(f"LeNet needs inputs of at least 14x14 pixels, got {self.input_shape}")
    self.conv1 = _torch_conv(c, 20, 5, rngs=rngs, dtype=dtype)
    self.conv2 = _torch_conv(20, 50, 5, rngs=rngs, dtype=dtype)
    self.fc1 = _torch_linear(h * w * 50, 500, rngs=rngs, dtype=dtype)
    self.head = _torch_linear(500, num_classes, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.normalize(x)
    _check_spatial(x, self.input_shape)
    x = _max_pool_2(nnx.relu(self.conv1(x)))
    x = _max_pool_2(nnx.relu(self.conv2(x)))
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.head(x).astype(jnp.float32)


class LeNet5(nnx.Module):
  """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, no BatchNorm.

  conv 5x5 6 'SAME' -> ReLU -> maxpool 2 -> conv 5x5 16 'VALID' -> ReLU -> maxpool 2 ->
  120 -> 84 -> classes: 61,706 parameters for 10 classes on 28x28x1 inputs. Arguments as
  for :class:`CNN`.
  """

  def __init__(
    self, num_classes: int, mean, std, *, input_shape=None, rngs: nnx.Rngs, dtype=jnp.float32
  ):
    self.normalize = Normalize(mean, std)
    c = self.normalize.num_channels
    self.input_shape = check_input_shape(input_shape, c) or (28, 28, c)
    h, w, _ = self.input_shape
    h, w = (h // 2 - 4) // 2, (w // 2 - 4) // 2
    if h < 1 or w < 1:
      raise InputError(f"LeNet5 needs inputs of at least 10x10 pixels, got {self.input_shape}")
    self.conv1 = conv(c, 6, 5, padding="SAME", use_bias=True, rngs=rngs, dtype=dtype)
    self.conv2 = conv(6, 16, 5, padding="VALID", use_bias=True, rngs=rngs, dtype=dtype)
    self.fc1 = nnx.Linear(h * w * 16, 120, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(120, 84, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(84, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.normalize(x)
    _check_spatial(x, self.input_shape)
    x = _max_pool_2(nnx.relu(self.conv1(x)))
    x = _max_pool_2(nnx.relu(self.conv2(x)))
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    x = nnx.relu(self.fc2(x))
    return self.head(x).astype(jnp.float32)


CNNTiny = functools.partial(CNN, features=(4, 8))
