"""A small epsilon-prediction U-Net for 28x28 and 32x32 images, conditioned on time.

The architecture of DDPM's U-Net (Ho, Jain and Abbeel, NeurIPS 2020, ``diffusion_tf/
models/unet.py``) without attention or dropout: a 3x3 stem; per resolution ``blocks``
residual blocks and a stride-2 3x3 convolution down; per resolution ``blocks + 1``
residual blocks on the concatenation with the matching skip activations and a
nearest-neighbour x2 upsampling followed by a 3x3 convolution; GroupNorm, SiLU and a 3x3
convolution out. A residual block is GroupNorm -> SiLU -> 3x3 conv -> + a projection of
the time embedding (a per-channel bias) -> GroupNorm -> SiLU -> 3x3 conv, plus the input
(through a 1x1 convolution where the channels change). The time embedding is DDPM's
sinusoidal embedding of ``1000 t`` through a two-layer SiLU MLP.

Weights start from DDPM's default initialisation (``variance_scaling(1, "fan_avg",
"uniform")``). DDPM starts the second convolution of every block and the last
convolution at zero; here only the last convolution starts small (a hundredth of that
variance), so the untrained model predicts almost no noise (a loss near 1) while its
output already depends on the input and the time.

Sizes, parameters for one channel (three for CIFAR):

* ``UNetSmall``: 32 features, multipliers (1, 2, 2), one block: 28 -> 14 -> 7 for the
  digits, 1.04 M parameters.
* ``UNetCifar``: 64 features, multipliers (1, 2, 2, 2), two blocks: 32 -> 16 -> 8 -> 4,
  for GPUs, 8.6 M parameters.
* ``UNetTiny``: 8 features, multipliers (1, 2), for tests.

Example::

  model = UNetSmall(1, input_shape=(28, 28, 1), rngs=nnx.Rngs(params=0))
  eps_hat = model(x_t, t)  # x_t (N, 28, 28, 1), t (N,) in [0, 1]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax.errors import InputError

# DDPM's default_init (diffusion_tf/nn.py): Glorot-uniform.
_default_init = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_small_init = jax.nn.initializers.variance_scaling(1e-2, "fan_avg", "uniform")

TIME_SCALE = 1000.0
"""Times in [0, 1] are multiplied by this before the sinusoidal embedding (DDPM's range)."""


def _conv3(in_features, out_features, stride=1, *, rngs, dtype, kernel_init=_default_init):
  return nnx.Conv(
    in_features,
    out_features,
    (3, 3),
    strides=stride,
    padding=[(1, 1), (1, 1)],
    kernel_init=kernel_init,
    dtype=dtype,
    rngs=rngs,
  )


def _group_norm(num_features: int, *, rngs, dtype) -> nnx.GroupNorm:
  # At most 8 groups, always a divisor of the channels (which are multiples of features).
  return nnx.GroupNorm(num_features, num_groups=math.gcd(num_features, 8), dtype=dtype, rngs=rngs)


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
  """DDPM's timestep embedding: ``sin`` and ``cos`` of ``t`` at ``dim // 2`` frequencies.

  Frequencies run geometrically from 1 to 1/10000 (Vaswani et al. 2017), float32.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) / max(half - 1, 1) * jnp.arange(half, dtype=jnp.float32))
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


class ResBlock(nnx.Module):
  """GroupNorm-SiLU-conv, + time, GroupNorm-SiLU-conv, with a residual connection."""

  def __init__(self, in_features: int, out_features: int, time_features: int, *, rngs, dtype):
    self.norm1 = _group_norm(in_features, rngs=rngs, dtype=dtype)
    self.conv1 = _conv3(in_features, out_features, rngs=rngs, dtype=dtype)
    self.time = nnx.Linear(
      time_features, out_features, kernel_init=_default_init, dtype=dtype, rngs=rngs
    )
    self.norm2 = _group_norm(out_features, rngs=rngs, dtype=dtype)
    self.conv2 = _conv3(out_features, out_features, rngs=rngs, dtype=dtype)
    self.skip = (
      None
      if in_features == out_features
      else nnx.Conv(
        in_features, out_features, (1, 1), kernel_init=_default_init, dtype=dtype, rngs=rngs
      )
    )

  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = h + self.time(nnx.silu(temb))[:, None, None, :]
    h = self.conv2(nnx.silu(self.norm2(h)))
    return h + (x if self.skip is None else self.skip(x))


class Downsample(nnx.Module):
  """A stride-2 3x3 convolution: halves the resolution."""

  def __init__(self, features: int, *, rngs, dtype):
    self.conv = _conv3(features, features, 2, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour x2 upsampling, then a 3x3 convolution."""

  def __init__(self, features: int, *, rngs, dtype):
    self.conv = _conv3(features, features, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class UNet(nnx.Module):
  """An epsilon-prediction U-Net ``eps(x_t, t)`` for NHWC images (DDPM's, no attention).

  Args:
    channels: image channels C, in and out.
    features: channels at the first resolution.
    multipliers: channels of each resolution, as multiples of ``features``; the model
      halves the resolution ``len(multipliers) - 1`` times, so H and W must be divisible
      by ``2 ** (len(multipliers) - 1)``.
    blocks: residual blocks per resolution on the way down (one more on the way up).
    time_features: width of the time embedding's MLP; default ``4 * features`` (DDPM).
    input_shape: optional ``(H, W, C)`` of the images, checked here (the network is fully
      convolutional, so any divisible size works).
    rngs: random streams for initialisation (``params``).
    dtype: computation dtype; parameters are float32 and outputs float32.

  Calling it: ``model(x_t, t)`` with ``x_t`` (N, H, W, C) and ``t`` (N,) (or a scalar)
  returns the predicted noise, (N, H, W, C) float32. Times are floats; this library's
  models are trained on t in [0, 1] (:func:`smoothjax.models.diffusion.diffusion_loss`),
  which is multiplied by :data:`TIME_SCALE` before the embedding. Integer times are cast
  to float32 and used as they are, as continuous times: an integer index of a discrete
  schedule is not what such a model expects.
  """

  def __init__(
    self,
    channels: int,
    *,
    features: int = 32,
    multipliers: Sequence[int] = (1, 2, 2),
    blocks: int = 1,
    time_features: int | None = None,
    input_shape=None,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ):
    multipliers = tuple(int(m) for m in multipliers)
    if channels < 1 or features < 1 or blocks < 1 or not multipliers or min(multipliers) < 1:
      raise InputError(
        f"UNet needs channels, features, blocks and multipliers >= 1, got channels={channels}"
        f", features={features}, blocks={blocks}, multipliers={multipliers}"
      )
    self.channels = int(channels)
    self.factor = 2 ** (len(multipliers) - 1)
    if input_shape is not None:
      shape = tuple(int(d) for d in input_shape)
      if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input_shape must be (height, width, channels), got {input_shape!r}")
      self._check_shape(shape)
    self.time_dim = int(features)
    time_features = int(time_features or 4 * features)
    self.time_mlp1 = nnx.Linear(
      self.time_dim, time_features, kernel_init=_default_init, dtype=dtype, rngs=rngs
    )
    self.time_mlp2 = nnx.Linear(
      time_features, time_features, kernel_init=_default_init, dtype=dtype, rngs=rngs
    )
    self.stem = _conv3(channels, features, rngs=rngs, dtype=dtype)

    def block(i, o):
      return ResBlock(i, o, time_features, rngs=rngs, dtype=dtype)

    down, skips, ch = [], [features], features
    for level, m in enumerate(multipliers):
      for _ in range(blocks):
        down.append(block(ch, features * m))
        ch = features * m
        skips.append(ch)
      if level < len(multipliers) - 1:
        down.append(Downsample(ch, rngs=rngs, dtype=dtype))
        skips.append(ch)
    self.down = nnx.List(down)
    self.middle = nnx.List([block(ch, ch), block(ch, ch)])
    up = []
    for level, m in reversed(list(enumerate(multipliers))):
      for _ in range(blocks + 1):
        up.append(block(ch + skips.pop(), features * m))
        ch = features * m
      if level > 0:
        up.append(Upsample(ch, rngs=rngs, dtype=dtype))
    self.up = nnx.List(up)
    self.out_norm = _group_norm(ch, rngs=rngs, dtype=dtype)
    self.out_conv = _conv3(ch, channels, rngs=rngs, dtype=dtype, kernel_init=_small_init)

  def _check_shape(self, shape: tuple[int, ...]) -> None:
    h, w, c = shape
    if c != self.channels:
      raise InputError(
        f"this UNet was built for {self.channels} channels, got images of shape {shape}; "
        "build it with channels equal to the images'"
      )
    if h % self.factor or w % self.factor:
      raise InputError(
        f"this UNet halves the resolution {self.factor.bit_length() - 1} times, so H and W "
        f"must be divisible by {self.factor}, got {h}x{w}; pad or crop the images, or use "
        "fewer multipliers"
      )

  def __call__(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
    x_t = jnp.asarray(x_t)
    if x_t.ndim != 4:
      raise InputError(f"UNet takes NHWC images, got shape {x_t.shape}; add a batch axis")
    self._check_shape(tuple(x_t.shape[1:]))
    n = x_t.shape[0]
    t = jnp.asarray(t).astype(jnp.float32)
    if t.ndim == 0:
      t = jnp.broadcast_to(t, (n,))
    if t.shape != (n,):
      raise InputError(
        f"t must hold one time per image, shape ({n},), got {t.shape}; pass a (N,) array"
      )
    temb = sinusoidal_embedding(TIME_SCALE * t, self.time_dim).astype(self.time_mlp1.dtype)
    temb = self.time_mlp2(nnx.silu(self.time_mlp1(temb)))
    h = self.stem(x_t)
    hs = [h]
    for layer in self.down:
      h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
      hs.append(h)
    for layer in self.middle:
      h = layer(h, temb)
    for layer in self.up:
      if isinstance(layer, ResBlock):
        h = layer(jnp.concatenate([h, hs.pop()], axis=-1), temb)
      else:
        h = layer(h)
    return self.out_conv(nnx.silu(self.out_norm(h))).astype(jnp.float32)


UNetSmall = functools.partial(UNet, features=32, multipliers=(1, 2, 2), blocks=1)
UNetTiny = functools.partial(UNet, features=8, multipliers=(1, 2), blocks=1)
UNetCifar = functools.partial(UNet, features=64, multipliers=(1, 2, 2, 2), blocks=2)

__all__ = [
  "TIME_SCALE",
  "Downsample",
  "ResBlock",
  "UNet",
  "UNetCifar",
  "UNetSmall",
  "UNetTiny",
  "Upsample",
  "sinusoidal_embedding",
]
