"""Evaluation numerics: folded BatchNorm, bfloat16, matmul precision, step sizes from memory."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smoothjax import models, noise, smoothing
from smoothjax.devices import numerics, sizing
from smoothjax.errors import InputError
from smoothjax.models import transforms

MNIST = dict(mean=(0.1307,), std=(0.3081,), input_shape=(28, 28, 1))
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
BOTTLENECK = functools.partial(
  models.ResNet,
  stage_sizes=(1, 1),
  block_cls=models.Bottleneck,
  widths=(4, 8),
  stem="imagenet",
)
# (name, builder, input shape, BatchNorm layers): the CNN, basic blocks (with projections)
# and bottleneck blocks.
MODELS = [
  (
    "cnn_tiny",
    lambda r: models.create("cnn_tiny", num_classes=10, rngs=r, **MNIST),
    (28, 28, 1),
    2,
  ),
  (
    "resnet_tiny",
    lambda r: models.create("resnet_tiny", num_classes=10, rngs=r, **CIFAR),
    (32, 32, 3),
    9,
  ),
  (
    "bottleneck",
    lambda r: BOTTLENECK(10, IMAGENET["mean"], IMAGENET["std"], rngs=r),
    (32, 32, 3),
    9,
  ),
]


def trained_like(build, shape):
  """A model whose BatchNorms hold statistics far from their initial ones (as after training)."""
  del shape
  model = build(nnx.Rngs(params=0))
  rng = np.random.default_rng(0)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      for name, draw in (
        ("mean", lambda n: rng.normal(0, 0.5, n)),
        ("var", lambda n: rng.uniform(0.2, 3.0, n)),
        ("scale", lambda n: rng.uniform(0.5, 2.0, n)),
        ("bias", lambda n: rng.normal(0, 0.5, n)),
      ):
        getattr(node, name)[...] = jnp.asarray(draw(node.mean.shape), jnp.float32)
  return model


# One jitted forward pass (NNX compiles it once per model structure and shape).
_forward = nnx.jit(lambda model, x: model(x))


def logits(model, x):
  return np.asarray(_forward(model, x))


@pytest.mark.parametrize("name,build,shape,count", MODELS, ids=[m[0] for m in MODELS])
def test_folded_batchnorm_gives_the_same_logits_and_leaves_the_model_alone(
  name, build, shape, count
):
  model = trained_like(build, shape)
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  folded = transforms.fold_batchnorm(model)
  assert transforms.count_batchnorms(model) == count and transforms.count_batchnorms(folded) == 0
  x = jax.random.uniform(jax.random.key(2), (16, *shape))
  want, got = logits(model, x), logits(folded, x)
  scale = np.max(np.abs(want))
  assert scale > 1.0  # logits of some size, so the comparison means something
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)
  assert (got.argmax(1) == want.argmax(1)).all()
  # The model given is untouched: same state, BatchNorms in place.
  after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  # Folding really changes the computation: a wrong statistic would show.
  bn = next(n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm))
  bn.var[...] = bn.var[...] * 4.0
  assert np.max(np.abs(logits(transforms.fold_batchnorm(model), x) - got)) > 1e-2 * scale


def test_folding_needs_an_eval_mode_model_and_keeps_models_without_batchnorm():
  model = trained_like(MODELS[0][1], MODELS[0][2])
  model.train()
  with pytest.raises(InputError, match="eval-mode model"):
    transforms.fold_batchnorm(model)
  lenet = models.create("lenet", num_classes=10, rngs=nnx.Rngs(params=0), **MNIST)
  x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
  np.testing.assert_array_equal(logits(transforms.fold_batchnorm(lenet), x), logits(lenet, x))


def test_bfloat16_computes_in_bfloat16_with_float32_parameters_and_logits():
  model = trained_like(MODELS[1][1], MODELS[1][2])
  x = jax.random.uniform(jax.random.key(4), (16, 32, 32, 3))
  half = transforms.with_dtype(model, "bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(half)))
  jaxpr = str(jax.make_jaxpr(lambda x: half(x))(x))
  assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr
  out, ref = logits(half, x), logits(model, x)
  assert out.dtype == np.float32
  # bfloat16 keeps 8 bits of mantissa: close to the float32 logits, not equal to them.
  err = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
  assert 1e-5 < err < 0.1, err
  assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.9
  assert "bf16" not in str(jax.make_jaxpr(lambda x: model(x))(x))  # the original is float32
  # Folded, then bfloat16: what certify.py --dtype bfloat16 evaluates.
  both = transforms.for_inference(model, fold=True, dtype="bfloat16")
  assert transforms.count_batchnorms(both) == 0
  assert np.max(np.abs(logits(both, x) - ref)) / np.max(np.abs(ref)) < 0.1
  with pytest.raises(InputError, match="unknown compute dtype 'float16'"):
    transforms.with_dtype(model, "float16")
  with pytest.raises(InputError, match="unknown compute dtype float16"):
    transforms.with_dtype(model, jnp.float16)


def test_certificates_of_the_folded_model_are_those_of_the_model():
  model = trained_like(MODELS[0][1], MODELS[0][2])
  xs = jax.random.uniform(jax.random.key(5), (3, 28, 28, 1))
  keys = jax.random.split(jax.random.key(6), 3)
  common = dict(noise=noise.Gaussian(sigma=0.25), n0=20, n=300, alpha=0.001, batch_size=128)
  plain = smoothing.certify_batch(model, xs, keys, **common)
  folded = smoothing.certify_batch(transforms.fold_batchnorm(model), xs, keys, **common)
  for a, b in zip(plain, folded, strict=True):
    assert a.prediction == b.prediction
    # A vote moves only where a noisy copy sits on a decision boundary to within 1e-6.
    assert np.abs(np.asarray(a.counts) - np.asarray(b.counts)).sum() <= 2


def test_precision_scope_and_configure():
  session = jax.config.jax_default_matmul_precision  # conftest's "highest"
  with numerics.precision_scope("high"):
    assert jax.config.jax_default_matmul_precision == "high"
  assert jax.config.jax_default_matmul_precision == session
  with numerics.precision_scope("default"):  # leaves the process's setting alone
    assert jax.config.jax_default_matmul_precision == session
  with pytest.raises(InputError, match="unknown matmul precision 'fp64'; choose one of default"):
    numerics.precision_scope("fp64")
  # Deterministic operations asked for once JAX runs on CPUs: nothing to do, no error.
  jnp.ones(1).block_until_ready()
  numerics.require_deterministic(True)


def test_configure_before_jax_starts_sets_the_xla_flag():
  code = (
    "import os; from smoothjax.devices import numerics;"
    "numerics.configure(precision='highest', deterministic=True);"
    "import jax, jax.numpy as jnp; jnp.ones(1).block_until_ready();"
    "print(os.environ['XLA_FLAGS'], jax.config.jax_default_matmul_precision)"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_cpu_enable_fast_math=false")
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
  ).stdout.split()
  assert out == ["--xla_cpu_enable_fast_math=false", numerics.DETERMINISTIC_FLAG, "highest"]


def test_choose_batch_fits_the_memory_in_powers_of_two():
  mib = 2**20
  assert sizing.choose_batch(mib, 1024 * mib) == 512  # half of 1 GiB at 1 MiB each
  assert sizing.choose_batch(mib, 1000 * mib) == 256  # 500 fit: the power of two below
  assert sizing.choose_batch(mib, 1024 * mib, devices=8) == 8 * 512
  assert sizing.choose_batch(mib, 1024 * mib, fraction=1.0) == 1024
  assert sizing.choose_batch(1, 2**40) == sizing.MAX_BATCH_PER_DEVICE
  assert sizing.choose_batch(2**30, 2**20) == 1  # nothing fits: one at a time, still
  with pytest.raises(InputError, match="choose_batch needs per_example >= 1"):
    sizing.choose_batch(0, 2**30)


class _Accelerator:
  """A device as an accelerator runtime describes it: a platform and memory statistics."""

  platform = "gpu"

  def __init__(self, limit, in_use):
    self.stats = {"bytes_limit": limit, "bytes_in_use": in_use}

  def memory_stats(self):
    return self.stats


def test_auto_batch_measures_the_model_and_the_free_memory():
  small = models.create("cnn_tiny", num_classes=10, rngs=nnx.Rngs(params=0), **MNIST)
  big = models.create("resnet_tiny", num_classes=10, rngs=nnx.Rngs(params=0), **CIFAR)
  per_small = sizing.bytes_per_example(small, (28, 28, 1))
  per_big = sizing.bytes_per_example(big, (32, 32, 3))
  # At least the input and the first layer's activations; the ResNet's many more.
  assert per_small >= 28 * 28 * 4 * 4 and per_big > 4 * per_small
  gib = 2**30
  devices = [_Accelerator(16 * gib, 2 * gib), _Accelerator(16 * gib, 6 * gib)]
  got = sizing.auto_batch(big, (32, 32, 3), devices)
  assert got == sizing.choose_batch(per_big, 10 * gib, devices=2)  # the fuller device rules
  assert got % 2 == 0 and got // 2 * per_big <= 5 * gib < got * per_big
  # CPUs (no memory statistics): the fixed default.
  assert sizing.auto_batch(big, (32, 32, 3)) == sizing.CPU_BATCH
  assert sizing.free_memory(jax.devices()[0]) is None
  assert sizing.auto_inputs_per_step() == 1 and sizing.auto_inputs_per_step(devices) == 8
