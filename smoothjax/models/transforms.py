"""Inference transforms of a trained model: computation dtype and folded BatchNorm.

Both return a new model and leave the one given untouched; both are for evaluation
(certification, prediction, attacks' evaluation, generation), not for training.

* :func:`with_dtype` sets the computation dtype of every layer: bfloat16 activations
  and matrix products, float32 parameters, float32 logits. The classifier that is then
  certified is the bfloat16 one, so a certificate holds for the model as evaluated.
* :func:`fold_batchnorm` folds each eval-mode BatchNorm into the convolution before
  it: ``BN(conv(x))`` becomes ``conv'(x)`` with kernel ``W * s`` and bias
  ``beta + (b - mean) * s``, ``s = gamma / sqrt(var + eps)``. One pass over the
  activations fewer per layer; the same function up to float rounding.

Which convolution a BatchNorm follows is not in a module's attributes but in its
``__call__``; a module declares its pairs in ``conv_bn_pairs`` (attribute names), and in
an ``nnx.Sequential`` a BatchNorm right after a convolution is folded into it.
BatchNorms in no declared pair are left as they are (still correct, only not faster).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax.errors import InputError

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype called ``name`` ("float32" or "bfloat16"); InputError otherwise."""
  if name not in COMPUTE_DTYPES:
    raise InputError(f"unknown compute dtype {name!r}; choose one of {', '.join(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def _layers(model: nnx.Module):
  """The layers of ``model`` with a computation dtype (convolutions, linear, norms)."""
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module) and "dtype" in vars(node):
      yield node


def with_dtype(model: nnx.Module, dtype) -> nnx.Module:
  """A copy of ``model`` computing in ``dtype`` (``jnp.float32``, ``jnp.bfloat16`` or a name).

  Parameters and batch statistics keep their float32 values; every convolution, linear
  layer and BatchNorm casts its inputs and weights to ``dtype`` (Flax's ``dtype``
  attribute). Logits stay float32 (the models cast them).
  """
  if isinstance(dtype, str):
    dtype = compute_dtype(dtype)
  if jnp.dtype(dtype) not in {jnp.dtype(d) for d in COMPUTE_DTYPES.values()}:
    raise InputError(
      f"unknown compute dtype {jnp.dtype(dtype).name}; choose one of {', '.join(COMPUTE_DTYPES)}"
    )
  model = nnx.clone(model)
  for layer in _layers(model):
    layer.dtype = dtype
  return model


def _fold_pair(conv: nnx.Conv, bn: nnx.BatchNorm) -> None:
  """Folds eval-mode ``bn`` into ``conv`` in place (``conv`` gains a bias)."""
  if not bn.use_running_average:
    raise InputError(
      "fold_batchnorm needs an eval-mode model (BatchNorm on running averages); call "
      "model.eval() first"
    )
  features = conv.kernel.shape[-1]
  if bn.mean.shape != (features,) or conv.feature_group_count != 1:
    raise InputError(
      f"cannot fold a BatchNorm of {bn.mean.shape[-1]} features into a convolution with "
      f"{features} outputs and feature groups {conv.feature_group_count}"
    )
  f32 = jnp.float32
  scale = jax.lax.rsqrt(bn.var[...].astype(f32) + bn.epsilon)
  if bn.scale is not None:
    scale = scale * bn.scale[...].astype(f32)
  bias = -bn.mean[...].astype(f32) * scale
  if conv.bias is not None:
    bias = bias + conv.bias[...].astype(f32) * scale
  if bn.bias is not None:
    bias = bias + bn.bias[...].astype(f32)
  kernel = conv.kernel[...]
  conv.kernel = nnx.Param((kernel.astype(f32) * scale).astype(kernel.dtype))
  conv.bias = nnx.Param(bias.astype(kernel.dtype))
  conv.use_bias = True


class Folded(nnx.Module):
  """The identity: what stands where a BatchNorm was folded into its convolution."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


def fold_batchnorm(model: nnx.Module) -> nnx.Module:
  """A copy of eval-mode ``model`` with each BatchNorm folded into its convolution.

  Predictions equal the unfolded model's up to float rounding (the folded kernel is
  rounded once, where the unfolded model rounds the convolution's output and then the
  normalisation's). The model's ``nnx.state`` changes (convolutions gain biases,
  BatchNorms lose their statistics): take fingerprints and checkpoints from the model
  before folding.

  Raises:
    InputError: a BatchNorm of a declared pair is in train mode, or does not match its
      convolution.
  """
  model = nnx.clone(model)
  for _, node in list(nnx.iter_graph(model)):
    pairs = getattr(type(node), "conv_bn_pairs", ())
    for conv_name, bn_name in pairs:
      conv, bn = getattr(node, conv_name), getattr(node, bn_name)
      if isinstance(conv, nnx.Conv) and isinstance(bn, nnx.BatchNorm):
        _fold_pair(conv, bn)
        setattr(node, bn_name, Folded())
    if isinstance(node, nnx.Sequential):
      layers = list(node.layers)
      for i in range(1, len(layers)):
        if isinstance(layers[i - 1], nnx.Conv) and isinstance(layers[i], nnx.BatchNorm):
          _fold_pair(layers[i - 1], layers[i])
          node.layers[i] = Folded()
  return model


def count_batchnorms(model: nnx.Module) -> int:
  """The BatchNorm layers left in ``model`` (none after folding a model of this package)."""
  return sum(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(model))


def for_inference(model: nnx.Module, *, fold: bool = True, dtype="float32") -> nnx.Module:
  """A copy of ``model`` as programs evaluate it: BatchNorm folded (if ``fold``), in ``dtype``."""
  half = jnp.dtype(compute_dtype(dtype) if isinstance(dtype, str) else dtype) != jnp.float32
  if not (fold or half):
    return nnx.clone(model)
  if fold:
    model = fold_batchnorm(model)  # a copy
  return with_dtype(model, dtype) if half else model


__all__ = [
  "COMPUTE_DTYPES",
  "Folded",
  "compute_dtype",
  "count_batchnorms",
  "fold_batchnorm",
  "for_inference",
  "with_dtype",
]


def evaluation_settings(dtype: str, fold_batchnorm: bool, precision: str) -> dict:
  """What a result's settings record of how its model was evaluated."""
  return {
    "compute_dtype": dtype,
    "fold_batchnorm": bool(fold_batchnorm),
    "precision": precision,
  }


EVALUATION_HINTS = {
  "compute_dtype": "the model was evaluated in another dtype (--dtype)",
  "fold_batchnorm": "BatchNorm was folded or not (--fold_batchnorm)",
  "precision": "the matmul precision (--precision) differs",
}
"""What a difference in each of :func:`evaluation_settings` means, for a refused resume."""
