"""Tests for smoothjax.models: shapes, parameter counts, normalisation, BatchNorm modes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from smoothjax import models
from smoothjax.errors import InputError

MNIST = dict(mean=(0.1307,), std=(0.3081,), input_shape=(28, 28, 1))
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# (name, constructor kwargs, input shape): the models that tests run for real, one of
# each family with BatchNorm, and LeNet without.
SMALL = [
  ("cnn_tiny", MNIST, (28, 28, 1)),
  ("lenet", MNIST, (28, 28, 1)),
  ("resnet_tiny", CIFAR, (32, 32, 3)),
  ("resnet18_tiny", IMAGENET, (64, 64, 3)),
  ("resnet50_tiny", IMAGENET, (64, 64, 3)),
  ("resnet50_cifar", CIFAR, (32, 32, 3)),
  ("resnet50_cifar_tiny", CIFAR, (32, 32, 3)),
]
WITH_BATCH_NORM = [m for m in SMALL if m[0] != "lenet"]
ONE_PER_CLASS = SMALL[:3]  # CNN, LeNet, ResNet
BATCH = 4  # one batch size throughout, so each model compiles once per mode


def _create(name, kwargs, num_classes=10, seed=0, **extra):
  return models.create(name, num_classes=num_classes, rngs=nnx.Rngs(params=seed), **kwargs, **extra)


def _images(seed, shape, n=BATCH):
  return jax.random.uniform(jax.random.key(seed), (n, *shape), jnp.float32)


# Jitted rather than eager: eager NNX compiles every layer separately for each shape.
# Train-mode calls write the updated BatchNorm statistics back into the model.
_forward = nnx.jit(lambda model, x: model(x))


def _close(a, b, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=atol)


def test_models_lists_every_name():
  assert set(models.MODELS) == {
    "cnn",
    "cnn_tiny",
    "lenet",
    "lenet5",
    "resnet20",
    "resnet56",
    "resnet110",
    "resnet_tiny",
    "resnet18",
    "resnet50",
    "resnet18_tiny",
    "resnet50_tiny",
    "resnet50_cifar",
    "resnet50_cifar_tiny",
  }


def test_unknown_name_raises_listing_the_names():
  with pytest.raises(InputError, match="resnet20.*resnet18_tiny"):
    models.create("resnet21", num_classes=10, rngs=nnx.Rngs(params=0), **CIFAR)


# A model of each layout at its natural input size, abstractly (nothing allocated or compiled).
SHAPES = [
  ("cnn", MNIST, (28, 28, 1)),
  ("cnn_tiny", MNIST, (28, 28, 1)),
  ("lenet", MNIST, (28, 28, 1)),
  ("lenet5", MNIST, (28, 28, 1)),
  ("resnet20", CIFAR, (32, 32, 3)),
  ("resnet_tiny", CIFAR, (32, 32, 3)),
  ("resnet18", IMAGENET, (224, 224, 3)),
  ("resnet50", IMAGENET, (224, 224, 3)),
  ("resnet18_tiny", IMAGENET, (64, 64, 3)),
  ("resnet50_tiny", IMAGENET, (64, 64, 3)),
  ("resnet50_cifar", CIFAR, (32, 32, 3)),
  ("resnet50_cifar_tiny", CIFAR, (32, 32, 3)),
]


@pytest.mark.parametrize("name,kwargs,shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_output_shape_and_dtype(name, kwargs, shape):
  model = nnx.eval_shape(lambda: _create(name, kwargs, num_classes=7))
  x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
  for train in (False, True):
    model.train() if train else model.eval()
    out = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert out.shape == (3, 7) and out.dtype == jnp.float32


def test_bfloat16_computation_keeps_float32_params_and_logits():
  model = _create("cnn_tiny", MNIST, dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype(np.float32)}
  reference = _create("cnn_tiny", MNIST)
  x = _images(2, (28, 28, 1))
  logits = _forward(model, x)
  assert logits.dtype == jnp.float32
  # Same weights, so bfloat16 logits are a low-precision copy of the float32 ones.
  _close(logits, _forward(reference, x), atol=0.1)


def test_cnn_head_is_sized_from_input_shape():
  model = nnx.eval_shape(lambda: _create("cnn_tiny", CIFAR, input_shape=(33, 30, 3)))
  # Two floor-halving 2x2 pools: 33 -> 16 -> 8 and 30 -> 15 -> 7, with 8 channels.
  assert model.head.kernel.shape == (8 * 7 * 8, 10)
  out = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 33, 30, 3), jnp.float32))
  assert out.shape == (2, 10)


# Published counts: torchvision ResNet-18/50 (1000 classes); Cohen et al.'s CIFAR ResNets
# with option-B shortcuts (ResNet-110: 1,727,962 with option A plus 2,752 for the two
# projections); the smoothing literature's LeNet (Caffe's: 20 and 50 5x5 convolutions,
# 500 hidden units): 5*5*20 + 20 + 5*5*20*50 + 50 + 4*4*50*500 + 500 + 500*10 + 10;
# LeNet-5's classic 61,706.
PARAM_COUNTS = [
  ("resnet18", IMAGENET, 1000, 11_689_512),
  ("resnet50", IMAGENET, 1000, 25_557_032),
  ("resnet110", CIFAR, 10, 1_730_714),
  ("resnet56", CIFAR, 10, 855_770),
  ("resnet20", CIFAR, 10, 272_474),
  ("lenet", MNIST, 10, 431_080),
  ("lenet5", MNIST, 10, 61_706),
  # 3*3*32 + 2*32 + 3*3*32*64 + 2*64 + (7*7*64 + 1) * 10.
  ("cnn", MNIST, 10, 50_282),
]


@pytest.mark.parametrize(
  "name,kwargs,num_classes,expected", PARAM_COUNTS, ids=[p[0] for p in PARAM_COUNTS]
)
def test_param_count_matches_published(name, kwargs, num_classes, expected):
  model = nnx.eval_shape(lambda: _create(name, kwargs, num_classes=num_classes))
  assert models.param_count(model) == expected


def test_param_count_of_a_real_model_equals_its_abstract_count():
  real = _create("resnet_tiny", CIFAR)
  abstract = nnx.eval_shape(lambda: _create("resnet_tiny", CIFAR))
  manual = sum(np.size(p) for p in jax.tree.leaves(nnx.state(real, nnx.Param)))
  assert models.param_count(real) == models.param_count(abstract) == manual == 78_042


def test_resnet50_strides_its_3x3_convolution():
  model = nnx.eval_shape(lambda: _create("resnet50", IMAGENET, num_classes=1000))
  first_of_stage2 = model.blocks[3]  # after the 3 blocks of stage 1
  assert first_of_stage2.conv1.strides == 1 and first_of_stage2.conv2.strides == 2
  assert model.blocks[0].shortcut is not None  # 64 -> 256 channels needs a projection
  assert model.blocks[1].shortcut is None


def test_conv_init_is_he_normal_fan_out():
  model = _create("resnet_tiny", CIFAR)
  kernel = np.asarray(model.blocks[-1].conv2.kernel[...])  # 3x3x64x64
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (3 * 3 * 64)), rtol=0.03)
  assert abs(kernel.mean()) < 0.003


@pytest.mark.parametrize("name,kwargs,shape", ONE_PER_CLASS, ids=[r[0] for r in ONE_PER_CLASS])
def test_normalisation_is_the_first_operation(name, kwargs, shape):
  model = _create(name, kwargs)
  # Same weights and statistics, identity normalisation.
  unnormalised = nnx.clone(model)
  unnormalised.normalize.mean.set_value(jnp.zeros(shape[-1]))
  unnormalised.normalize.std.set_value(jnp.ones(shape[-1]))
  x = _images(4, shape)
  mean = jnp.asarray(kwargs["mean"], jnp.float32)
  std = jnp.asarray(kwargs["std"], jnp.float32)
  _close(_forward(model, x), _forward(unnormalised, (x - mean) / std), atol=1e-4)
  # The constants matter: without normalising, the logits differ.
  assert not np.allclose(_forward(model, x), _forward(unnormalised, x), atol=1e-3)


def test_normalisation_constants_are_state_but_not_params():
  model = _create("cnn_tiny", MNIST)
  assert len(jax.tree.leaves(nnx.state(model.normalize, nnx.Param))) == 0
  constants = nnx.state(model, models.NormalizationConstant)
  _close(constants["normalize"]["mean"][...], MNIST["mean"])
  _close(constants["normalize"]["std"][...], MNIST["std"])
  # An optimiser over nnx.Param leaves the constants alone.
  optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(_images(5, (28, 28, 1))) ** 2))(model)
  assert len(jax.tree.leaves(nnx.state(grads, models.NormalizationConstant))) == 0
  optimizer.update(model, grads)
  _close(model.normalize.mean[...], MNIST["mean"])
  _close(model.normalize.std[...], MNIST["std"])


def test_restoring_state_restores_normalisation_constants():
  """A checkpoint of nnx.state(model) brings its mean/std into a model built otherwise."""
  trained = _create("cnn_tiny", MNIST, seed=0)
  graphdef, _ = nnx.split(_create("cnn_tiny", dict(MNIST, mean=(0.0,), std=(1.0,)), seed=1))
  restored = nnx.merge(graphdef, nnx.state(trained))
  x = _images(6, (28, 28, 1))
  _close(restored.normalize.mean[...], MNIST["mean"])
  np.testing.assert_array_equal(_forward(restored, x), _forward(trained, x))


@pytest.mark.parametrize("name,kwargs,shape", ONE_PER_CLASS, ids=[r[0] for r in ONE_PER_CLASS])
def test_split_merge_round_trip_gives_identical_outputs(name, kwargs, shape):
  model = _create(name, kwargs)
  model.train()
  _forward(model, _images(7, shape))  # move the running statistics away from their init
  model.eval()
  x = _images(8, shape)
  reference = _forward(model, x)
  graphdef, state = nnx.split(model)
  np.testing.assert_array_equal(_forward(nnx.merge(graphdef, state), x), reference)
  # The pattern hot paths use: jit over (graphdef, state), merge inside.
  jitted = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)
  _close(jitted, reference)


@pytest.mark.parametrize("name,kwargs,shape", WITH_BATCH_NORM, ids=[r[0] for r in WITH_BATCH_NORM])
def test_eval_mode_is_per_example_and_train_mode_is_not(name, kwargs, shape):
  model = _create(name, kwargs)
  model.train()
  _forward(model, _images(9, shape))  # non-trivial running statistics
  x = _images(10, shape)
  # Same first example, different companions.
  other = jnp.concatenate([x[:1], 1.0 - x[1:]])
  model.eval()
  eval_x, eval_other = _forward(model, x), _forward(model, other)
  assert np.all(np.isfinite(eval_x))
  _close(eval_x[0], eval_other[0])
  model.train()
  train_x, train_other = _forward(model, x), _forward(model, other)
  assert np.all(np.isfinite(train_x))
  assert not np.allclose(train_x[0], train_other[0], atol=1e-4)


def test_lenet_is_the_smoothing_literatures_lenet_with_pytorch_init():
  # jh-jeong/smoothing-consistency code/archs/lenet.py: Conv2d(1, 20, 5), Conv2d(20, 50, 5),
  # Linear(800, 500), Linear(500, classes), PyTorch's default U(+-1/sqrt(fan_in)) init.
  model = _create("lenet", MNIST)
  layers = {
    "conv1": ((5, 5, 1, 20), 25),
    "conv2": ((5, 5, 20, 50), 500),
    "fc1": ((800, 500), 800),
    "head": ((500, 10), 500),
  }
  for name, (shape, fan_in) in layers.items():
    layer = getattr(model, name)
    kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    assert kernel.shape == shape and bias.shape == shape[-1:]
    bound = 1 / np.sqrt(fan_in)
    for w in (kernel, bias):
      assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound, name
    # Uniform on [-bound, bound]: variance bound^2 / 3.
    assert abs(kernel.var() / (bound**2 / 3) - 1) < 0.2, name
  x = _images(13, (28, 28, 1))
  # Two valid 5x5 convolutions and two pools: 28 -> 24 -> 12 -> 8 -> 4.
  features = nnx.max_pool(
    nnx.relu(model.conv2(nnx.max_pool(nnx.relu(model.conv1(model.normalize(x))), (2, 2), (2, 2)))),
    (2, 2),
    (2, 2),
  )
  assert features.shape == (BATCH, 4, 4, 50)
  with pytest.raises(InputError, match="at least 14x14"):
    _create("lenet", MNIST | {"input_shape": (13, 13, 1)})


def test_lenet_has_no_batch_norm_so_modes_agree():
  model = _create("lenet", MNIST)
  x = _images(11, (28, 28, 1))
  eval_logits = _forward(model, x)
  model.train()
  _close(_forward(model, x), eval_logits)
  assert len(jax.tree.leaves(nnx.state(model, nnx.BatchStat))) == 2  # mean and std only


def test_train_forward_updates_running_statistics_with_momentum_0_9():
  model = _create("cnn_tiny", MNIST)
  x = _images(12, (28, 28, 1))
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

  _forward(model, x)  # built in eval mode
  after_eval = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, after_eval, before)

  model.train()
  _forward(model, x)
  # PyTorch convention: running = 0.9 * running + 0.1 * batch, from mean 0 and var 1;
  # the batch variance is the biased one.
  features = np.asarray(model.conv1(model.normalize(x)))
  _close(model.bn1.mean[...], 0.1 * features.mean(axis=(0, 1, 2)), atol=1e-5)
  _close(model.bn1.var[...], 0.9 + 0.1 * features.var(axis=(0, 1, 2)), atol=1e-5)
  # The normalisation constants are BatchStat-like state yet never change.
  _close(model.normalize.mean[...], MNIST["mean"])
  _close(model.normalize.std[...], MNIST["std"])


def test_models_are_built_in_eval_mode():
  model = _create("resnet_tiny", CIFAR)
  assert all(
    bn.use_running_average for _, bn in nnx.iter_graph(model) if isinstance(bn, nnx.BatchNorm)
  )


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(mean=(0.5, 0.5), std=(0.2,)), "channels"),
    (dict(mean=(0.5,), std=(0.0,)), "positive"),
    (dict(mean=(), std=()), "non-empty"),
    (dict(mean=(0.5,), std=(0.2,), input_shape=(28, 28, 3)), "channels"),
    (dict(mean=(0.5,), std=(0.2,), input_shape=(28, 28)), "input_shape"),
  ],
)
def test_bad_construction_arguments_raise(kwargs, match):
  with pytest.raises(InputError, match=match):
    models.create("cnn_tiny", num_classes=10, rngs=nnx.Rngs(params=0), **kwargs)


def test_bad_num_classes_raises():
  with pytest.raises(InputError, match="num_classes"):
    models.create("resnet_tiny", num_classes=0, rngs=nnx.Rngs(params=0), **CIFAR)


def test_wrong_input_shapes_raise():
  cnn = _create("cnn_tiny", MNIST)
  with pytest.raises(InputError, match="1 channels"):
    cnn(jnp.zeros((BATCH, 28, 28, 3)))
  with pytest.raises(InputError, match="built for inputs of shape"):
    cnn(jnp.zeros((BATCH, 32, 32, 1)))
  with pytest.raises(InputError, match="batch axis"):
    cnn(jnp.zeros((28, 28, 1)))


def test_madry_cifar_resnet50_has_their_parameter_count():
  """MadryLab's CIFAR ResNet-50: torchvision's 25,557,032 less the 7x7 stem and 1000-class head."""
  model = nnx.eval_shape(lambda: _create("resnet50_cifar", CIFAR, num_classes=10))
  assert models.param_count(model) == 25_557_032 - (7 * 7 - 3 * 3) * 3 * 64 - 990 * 2049
  assert model.stem_conv.kernel.shape == (3, 3, 3, 64) and not model.imagenet_stem


def test_clip_inputs_clamps_before_the_normalisation():
  """MadryLab's InputNormalize: clamp(x, 0, 1) first; without it, inputs pass unclamped."""
  clipped = _create("cnn_tiny", MNIST, clip_inputs=True)
  plain = _create("cnn_tiny", MNIST)
  x = _images(3, (28, 28, 1)) * 3 - 1  # in [-1, 2]
  _close(_forward(clipped, x), _forward(plain, jnp.clip(x, 0, 1)))
  assert not np.allclose(_forward(plain, x), _forward(plain, jnp.clip(x, 0, 1)), atol=1e-3)
