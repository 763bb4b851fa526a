"""Residual networks (He et al. 2016): CIFAR ResNet-20/56/110, ImageNet ResNet-18/50, and
the CIFAR ResNet-50 of MadryLab's ``robustness``.

The CIFAR models follow Cohen et al.'s ``cifar_resnet.py`` (3x3 stem, three stages of
widths 16/32/64, depth 6n + 2, no stem max-pool, global average pool); the ImageNet
models follow torchvision (7x7/2 stem with 3x3/2 max-pool, four stages of widths
64..512, bottlenecks strided on their 3x3 convolution as in "ResNet v1.5"). Both use
1x1 convolution + BatchNorm projections where a block changes shape ("option B"), so
parameter counts and layouts match those implementations. MadryLab's CIFAR ResNet-50
(``robustness/cifar_models/resnet.py``) is the ImageNet ResNet-50's bottleneck stages on
the CIFAR stem (3x3 convolution, no max-pool); their final ``avg_pool2d(out, 4)`` on 32x32
inputs is the global average pool.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax.errors import InputError
from smoothjax.models.cnn import Normalize, batch_norm, check_input_shape, conv


def _projection(in_features: int, out_features: int, stride: int, *, rngs, dtype):
  """The identity when shapes agree, else a 1x1 convolution + BatchNorm (option B)."""
  if stride == 1 and in_features == out_features:
    return None
  return nnx.Sequential(
    conv(in_features, out_features, 1, stride, padding="VALID", rngs=rngs, dtype=dtype),
    batch_norm(out_features, rngs=rngs, dtype=dtype),
  )


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers with a residual connection (ResNet-18/34, CIFAR ResNets)."""

  expansion = 1
  conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # For models.fold_batchnorm.

  def __init__(
    self, in_features: int, width: int, stride: int, *, rngs: nnx.Rngs, dtype=jnp.float32
  ):
    self.conv1 = conv(in_features, width, 3, stride, rngs=rngs, dtype=dtype)
    self.bn1 = batch_norm(width, rngs=rngs, dtype=dtype)
    self.conv2 = conv(width, width, 3, rngs=rngs, dtype=dtype)
    self.bn2 = batch_norm(width, rngs=rngs, dtype=dtype)
    self.shortcut = _projection(in_features, width, stride, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (strided, as torchvision v1.5), 1x1 expand by 4, residual (ResNet-50)."""

  expansion = 4
  conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

  def __init__(
    self, in_features: int, width: int, stride: int, *, rngs: nnx.Rngs, dtype=jnp.float32
  ):
    out_features = width * self.expansion
    self.conv1 = conv(in_features, width, 1, padding="VALID", rngs=rngs, dtype=dtype)
    self.bn1 = batch_norm(width, rngs=rngs, dtype=dtype)
    self.conv2 = conv(width, width, 3, stride, rngs=rngs, dtype=dtype)
    self.bn2 = batch_norm(width, rngs=rngs, dtype=dtype)
    self.conv3 = conv(width, out_features, 1, padding="VALID", rngs=rngs, dtype=dtype)
    self.bn3 = batch_norm(out_features, rngs=rngs, dtype=dtype)
    self.shortcut = _projection(in_features, out_features, stride, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nnx.Module):
  """A residual network for NHWC images in [0, 1], normalising them first.

  Args:
    num_classes: number of output logits.
    mean: per-channel mean subtracted from the [0, 1] inputs.
    std: per-channel standard deviation the inputs are divided by.
    stage_sizes: number of blocks per stage; each stage after the first halves the
      resolution with a stride-2 first block.
    block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
    widths: block width of each stage (the stem has ``widths[0]`` channels).
    stem: ``"cifar"`` (3x3 conv) or ``"imagenet"`` (7x7/2 conv then 3x3/2 max-pool).
    input_shape: optional ``(H, W, C)``, only checked against the channels of mean/std;
      any spatial size works thanks to global average pooling.
    rngs: random streams for initialisation (``params``).
    dtype: computation dtype; parameters are float32 and logits are returned in float32.
  """

  conv_bn_pairs = (("stem_conv", "stem_bn"),)  # For models.fold_batchnorm.

  def __init__(
    self,
    num_classes: int,
    mean,
    std,
    *,
    stage_sizes: Sequence[int],
    block_cls: type[BasicBlock] | type[Bottleneck],
    widths: Sequence[int],
    stem: str,
    input_shape=None,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    if stem not in ("cifar", "imagenet") or len(stage_sizes) != len(widths):
      raise InputError(
        f"ResNet needs stem 'cifar' or 'imagenet' and one width per stage, got stem={stem!r},"
        f" stage_sizes={tuple(stage_sizes)}, widths={tuple(widths)}"
      )
    self.normalize = Normalize(mean, std)
    c = self.normalize.num_channels
    check_input_shape(input_shape, c)
    self.imagenet_stem = stem == "imagenet"
    if self.imagenet_stem:
      self.stem_conv = conv(c, widths[0], 7, 2, rngs=rngs, dtype=dtype)
    else:
      self.stem_conv = conv(c, widths[0], 3, rngs=rngs, dtype=dtype)
    self.stem_bn = batch_norm(widths[0], rngs=rngs, dtype=dtype)
    blocks, features = [], widths[0]
    for stage, (size, width) in enumerate(zip(stage_sizes, widths, strict=True)):
      for i in range(size):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(block_cls(features, width, stride, rngs=rngs, dtype=dtype))
        features = width * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem_conv(self.normalize(x))))
    if self.imagenet_stem:
      x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


def _cifar_resnet(depth: int):
  blocks_per_stage = (depth - 2) // 6
  return functools.partial(
    ResNet,
    stage_sizes=(blocks_per_stage,) * 3,
    block_cls=BasicBlock,
    widths=(16, 32, 64),
    stem="cifar",
  )


ResNet20 = _cifar_resnet(20)
ResNet56 = _cifar_resnet(56)
ResNet110 = _cifar_resnet(110)
ResNetTiny = _cifar_resnet(8)

_IMAGENET_WIDTHS = (64, 128, 256, 512)
ResNet18 = functools.partial(
  ResNet,
  stage_sizes=(2, 2, 2, 2),
  block_cls=BasicBlock,
  widths=_IMAGENET_WIDTHS,
  stem="imagenet",
)
ResNet50 = functools.partial(
  ResNet,
  stage_sizes=(3, 4, 6, 3),
  block_cls=Bottleneck,
  widths=_IMAGENET_WIDTHS,
  stem="imagenet",
)
ResNet18Tiny = functools.partial(ResNet18, widths=tuple(w // 8 for w in _IMAGENET_WIDTHS))
ResNet50Tiny = functools.partial(ResNet50, widths=tuple(w // 8 for w in _IMAGENET_WIDTHS))
ResNet50Cifar = functools.partial(ResNet50, stem="cifar")
ResNet50CifarTiny = functools.partial(ResNet50Tiny, stem="cifar")
