"""Training modes: each a loss; the same step on 8 devices as on 1; settings checked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_with_devices
from flax import nnx

from smoothjax import data, models, training
from smoothjax.configs import default
from smoothjax.data import augment
from smoothjax.errors import InputError
from smoothjax.training import modes

ALL_MODES = [
  "standard",
  "gaussian",
  "fgsm",
  "pgd",
  "smoothadv",
  "consistency",
  "macer",
  "fixedpoint",
]
# fixedpoint's generation PGD is attacks.pgd, which the smoothadv and pgd modes cover on
# 8 devices; generate.py's own 8-device test covers generation.
MULTI_DEVICE_MODES = ALL_MODES[:-1]


def mode_config(mode, **overrides):
  config = default.get_config()
  config.model = "cnn_tiny"
  config.mode = mode
  config.batch_size = 32
  config.progress = False
  config.attack.steps = 3
  config.smoothadv.warmup_epochs = 1
  config.macer.m = 4
  config.fixedpoint.steps = 2
  if mode in ("fgsm", "pgd", "standard"):
    config.noise_sd = 0.0
  for k, v in overrides.items():
    config[k] = v
  return config


@pytest.fixture(scope="module")
def batches():
  split = data.load("embedded_mnist").split("train")
  return data.load("embedded_mnist").info, split


def flat(state):
  return jax.tree.leaves(jax.tree.map(np.asarray, nnx.to_pure_dict(state)))


@pytest.mark.parametrize("mode", ["standard", "gaussian"])
def test_standard_and_gaussian_equal_the_input_transform_step(batches, mode):
  """The loss-shaped mode gives bit for bit the step of the former input-transform modes."""
  info, split = batches
  config = mode_config(mode, noise_sd=0.25, augment="flip")
  trainer = training.make_trainer(config, info, steps_per_epoch=10)
  reference = training.make_trainer(config, info, steps_per_epoch=10)
  graphdef, ref_state = nnx.split((reference.model, reference.optimizer))

  @jax.jit
  def reference_step(state, images, labels, key):
    # The step as written before modes became losses: a mode mapped images to inputs.
    model, optimizer = nnx.merge(graphdef, state)
    model.train()
    augment_key, mode_key = jax.random.split(key)
    images = augment.apply("flip", augment_key, images)
    if mode == "gaussian":
      images = images + 0.25 * jax.random.normal(mode_key, images.shape, images.dtype)

    def loss_fn(model):
      logits = model(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  state = trainer.state()
  for step in range(3):
    images, labels = split.get(np.arange(32 * step, 32 * (step + 1)))
    labels = labels.astype(np.int32)
    key = jax.random.fold_in(jax.random.key(0), step)
    state, m = trainer.train_step(state, images, labels, key, 0)
    key = jax.random.fold_in(jax.random.key(0), step)  # the same key, made again
    ref_state, loss, accuracy = reference_step(ref_state, images, labels, key)
    assert float(m["loss"]) == float(loss) and float(m["accuracy"]) == float(accuracy)
    assert set(m) == {"loss", "accuracy", "finite"}
  for a, b in zip(flat(state), flat(ref_state), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_loss_falls_on_the_embedded_digits(batches, mode):
  info, split = batches
  config = mode_config(mode)
  trainer = training.make_trainer(config, info, steps_per_epoch=40)
  state = trainer.state()
  losses = []
  order = np.random.default_rng(0).permutation(len(split))  # the split is sorted by label
  for step in range(40):
    images, labels = split.get(np.sort(order[32 * step : 32 * (step + 1)]))
    key = jax.random.fold_in(jax.random.key(1), step)
    state, m = trainer.train_step(state, images, labels.astype(np.int32), key, 0)
    assert bool(m["finite"])
    losses.append(float(m["loss"]))
  assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


def test_attacks_in_training_use_eval_mode_and_leave_batch_statistics_alone(batches):
  info, split = batches
  model = models.create(
    "cnn_tiny", num_classes=10, mean=info.mean, std=info.std, rngs=nnx.Rngs(params=0)
  )
  images, _ = split.get(np.arange(16))
  model.train()
  before = flat(nnx.state(model, nnx.BatchStat))
  frozen = modes.frozen_logits_fn(model)
  out = frozen(images)
  np.testing.assert_array_equal(flat(nnx.state(model, nnx.BatchStat))[0], before[0])
  for a, b in zip(flat(nnx.state(model, nnx.BatchStat)), before, strict=True):
    np.testing.assert_array_equal(a, b)
  model.eval()
  np.testing.assert_allclose(out, model(images), rtol=1e-6, atol=1e-6)
  model.train()

  # No gradient reaches the parameters through the frozen view.
  def loss(model):
    return jnp.sum(modes.frozen_logits_fn(model)(images))

  grads = nnx.grad(loss)(model)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
  "section,key,value,message",
  [
    ("attack", "eps", -0.1, "attack.eps"),
    ("attack", "steps", 0, "attack.steps"),
    ("attack", "norm", "l7", "attack.norm"),
    ("smoothadv", "m", 0, "smoothadv.m"),
    ("smoothadv", "eps", float("nan"), "smoothadv.eps"),
    ("smoothadv", "warmup_epochs", 0, "smoothadv.warmup_epochs"),
    ("smoothadv", "norm", "l3", "smoothadv.norm"),
    ("consistency", "m", 0, "consistency.m"),
    ("consistency", "lbd", -1.0, "consistency.lbd"),
    ("macer", "beta", 0.0, "macer.beta"),
    ("macer", "gamma", -1.0, "macer.gamma"),
    ("macer", "m", 0, "macer.m"),
    ("macer", "warmup_epochs", -1, "macer.warmup_epochs"),
    ("fixedpoint", "loss", "hinge", "fixedpoint.loss"),
    ("fixedpoint", "eps", 0.0, "fixedpoint.eps"),
    ("fixedpoint", "m", -1, "fixedpoint.m"),
    ("fixedpoint", "steps", 0, "fixedpoint.steps"),
    ("fixedpoint", "ce_weight", -1.0, "fixedpoint.ce_weight"),
  ],
)
def test_bad_mode_settings_are_refused_before_writing(tmp_path, section, key, value, message):
  mode = {"attack": "pgd"}.get(section, section)
  config = mode_config(mode)
  config[section][key] = value
  workdir = tmp_path / "w"
  with pytest.raises(InputError, match=message.replace(".", r"\.")):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("mode", ["gaussian", "smoothadv", "consistency", "macer"])
def test_noise_modes_need_noise(mode):
  with pytest.raises(InputError, match="noise_sd"):
    modes.build(mode_config(mode, noise_sd=0.0))


def test_unknown_mode_setting_is_refused():
  config = mode_config("consistency")
  config.consistency.lamda = 3.0
  with pytest.raises(InputError, match="consistency.lamda"):
    modes.build(config)


def print_one_and_eight_devices(configs) -> None:
  """In a process of 8 devices: two steps of each named config on 1 device and on 8.

  Prints ``MODE name worst dloss`` per config: the largest parameter difference and the
  loss difference. A frozen model the mode trains against is replicated like the state.
  """
  from smoothjax.devices import parallel

  ds = data.load("embedded_mnist")
  images, labels = ds.split("train").get(np.arange(16))
  labels = labels.astype(np.int32)

  def run(config, mesh):
    trainer = training.make_trainer(config, ds.info, steps_per_epoch=10)
    state = parallel.replicate(trainer.state(), mesh)
    if trainer.frozen is not None:
      trainer.frozen = parallel.replicate(trainer.frozen, mesh)
    for step in range(2):
      batch = parallel.shard_batch((images, labels), mesh)
      key = jax.random.fold_in(jax.random.key(0), step)
      state, m = trainer.train_step(state, *batch, key, 0)
    return flat(state), float(m["loss"])

  assert len(jax.devices()) == 8
  for name, config in configs.items():
    one, loss1 = run(config, parallel.make_mesh(jax.devices()[:1]))
    eight, loss8 = run(config, parallel.make_mesh())
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(one, eight, strict=True))
    print("MODE", name, worst, abs(loss1 - loss8))


def test_every_mode_steps_the_same_on_8_devices_as_on_1():
  out = run_with_devices(
    """
      import sys
      sys.path.insert(0, "tests")
      from test_modes import MULTI_DEVICE_MODES, mode_config, print_one_and_eight_devices
      print_one_and_eight_devices(
        {mode: mode_config(mode, batch_size=16) for mode in MULTI_DEVICE_MODES}
      )
      """
  )
  lines = [ln.split() for ln in out.splitlines() if ln.startswith("MODE")]
  assert [ln[1] for ln in lines] == MULTI_DEVICE_MODES
  for _, mode, worst, dloss in lines:
    # The plain modes (gaussian, the default config's mode, among them) agree to float32
    # rounding; the attack and Monte Carlo modes sum more terms in other orders.
    tolerance = 1e-5 if mode in ("standard", "gaussian") else 1e-4
    assert float(worst) < tolerance and float(dloss) < tolerance, (mode, worst, dloss)


def test_macer_warmup_ramps_the_radius_term_from_zero():
  """With warmup_epochs = 2 the loss is the plain soft smoothed CE in epoch 0, half in 1."""
  images = np.full((4, 28, 28, 1), 0.5, np.float32)
  labels = np.array([0, 1, 2, 3], np.int32)
  base = jax.random.normal(jax.random.key(3), (1, 10))

  def model(x):
    return jnp.tile(base, (x.shape[0], 1)) + 0.1 * x.reshape(x.shape[0], -1)[:, :10]

  def loss(warmup, epoch, lbd=12.0):
    config = mode_config("macer", noise_sd=0.25)
    config.macer.warmup_epochs = warmup
    config.macer.lbd = lbd
    return modes.build(config)(model, jax.random.key(0), images, labels, epoch)

  full, aux = loss(0, 0)
  plain, _ = loss(0, 0, lbd=0.0)
  assert float(aux["robustness"]) > 0 and float(full) > float(plain)
  assert float(loss(2, 0)[0]) == pytest.approx(float(plain), rel=1e-6)
  assert float(loss(2, 1)[0]) == pytest.approx((float(full) + float(plain)) / 2, rel=1e-5)
  assert float(loss(2, 5)[0]) == pytest.approx(float(full), rel=1e-6)


@pytest.mark.parametrize("family", ["laplace", "uniform", "expinf"])
def test_noise_mode_trains_under_the_configured_family(family):
  """``config.noise`` picks the family; ``noise_sd`` is its per-coordinate std."""
  import scipy.stats

  from smoothjax import noise as noise_lib

  images = np.full((64, 28, 28, 1), 0.5, np.float32)
  labels = np.zeros(64, np.int32)
  seen = []

  def model(x):
    seen.append(np.asarray(x))
    return jnp.zeros((x.shape[0], 10))

  config = mode_config("noise", noise_sd=0.3, noise=family)
  modes.build(config)(model, jax.random.key(5), images, labels, 0)
  eps = (seen[0] - 0.5).astype(np.float64)
  assert abs(eps.std() / 0.3 - 1) < 0.02
  expected = noise_lib.parse(family, sigma=0.3, dim=784)
  assert modes.noise_from_config(config) == noise_lib.parse(family, sigma=0.3)
  if family == "expinf":
    # One sample per image: its linf norm is lambda * Gamma(d)^(1/k) with k = 1.
    radius = np.abs(eps.reshape(64, -1)).max(axis=1) / expected.lambda_
    assert scipy.stats.kstest(radius, scipy.stats.gamma(784).cdf).pvalue > 1e-3
  else:
    law = {"laplace": scipy.stats.laplace, "uniform": scipy.stats.uniform}[family]
    dist = (
      law(0, expected.lambda_)
      if family == "laplace"
      else law(-expected.lambda_, 2 * expected.lambda_)
    )
    assert scipy.stats.kstest(eps.ravel()[:20_000], dist.cdf).pvalue > 1e-3


def test_noise_family_errors_name_the_config_field():
  with pytest.raises(InputError, match="config.noise: unknown noise 'cauchy'"):
    modes.build(mode_config("noise", noise="cauchy"))
  with pytest.raises(InputError, match="config.noise: .*sets its own scale"):
    modes.build(mode_config("noise", noise="laplace:0.5"))
  with pytest.raises(InputError, match="macer's radius term is for Gaussian noise, not laplace"):
    modes.build(mode_config("macer", noise="laplace"))


@pytest.mark.parametrize(("family", "norm"), [("laplace", "l1"), ("gaussian", "linf")])
def test_smoothadv_attacks_in_the_configured_norm(batches, family, norm):
  """SmoothAdv under Laplace / uniform noise in l1 (Yang et al.) raises the training loss."""
  info, split = batches
  images, labels = split.get(np.arange(8))
  labels = labels.astype(np.int32)

  def loss(eps):
    config = mode_config("smoothadv", noise=family, noise_sd=0.25)
    config.smoothadv.norm = norm
    config.smoothadv.eps = eps
    config.smoothadv.steps = 4
    model = training.make_trainer(config, info, steps_per_epoch=10).model
    return float(modes.build(config)(model, jax.random.key(1), images, labels, 5)[0])

  clean = loss(0.0)
  attacked = loss(4.0 if norm == "l1" else 0.1)
  assert np.isfinite(clean) and attacked > clean + 1e-3
