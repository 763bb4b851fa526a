"""Tests for smoothjax.models.diffusion and smoothjax.models.unet.

The one-shot denoiser is checked against closed forms on Gaussian data, where the exact
epsilon predictor is known: with it, one-shot denoising must be the MMSE denoiser.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from smoothjax.errors import InputError
from smoothjax.models import diffusion, unet

MU, S = 0.5, 0.1  # every pixel of the Gaussian data is N(MU, S^2)
SHAPE = (4096, 4, 4, 1)


def _gaussian_pair(seed, sigma, shape=SHAPE):
  """Clean Gaussian images x and their smoothing samples y = x + sigma * delta."""
  x_key, d_key = jax.random.split(jax.random.key(seed))
  x = MU + S * jax.random.normal(x_key, shape, jnp.float32)
  return x, x + sigma * jax.random.normal(d_key, shape, jnp.float32)


def _close(a, b, atol):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


# Schedules.


def test_linear_schedule_is_ddpm():
  betas = np.linspace(1e-4, 0.02, 1000)
  ab = diffusion.linear_schedule()
  assert ab.dtype == np.float64 and ab.shape == (1000,)
  np.testing.assert_allclose(ab, np.cumprod(1 - betas), rtol=1e-14)
  assert ab[0] == pytest.approx(1 - 1e-4)  # index 0 is DDPM's t = 1
  assert ab[-1] == pytest.approx(4.0358e-5, rel=1e-4)  # guided-diffusion's last alphas_cumprod
  assert np.all(np.diff(ab) < 0)


def test_cosine_schedule_telescopes_to_the_continuous_one():
  ab = diffusion.cosine_schedule(1000)
  assert np.all(np.diff(ab) < 0) and np.all(ab > 0)
  times = np.arange(1, 1001) / 1000
  continuous = diffusion.cosine_alpha_bar(times)
  # Where no beta is clipped at 0.999 (all but the last few steps), the product of
  # alpha(t_{i+1}) / alpha(t_i) is alpha_bar(t_{i+1}) / alpha_bar(0).
  betas = 1 - ab / np.concatenate([[1.0], ab[:-1]])
  unclipped = np.cumprod(betas < 0.999).astype(bool) & (continuous > diffusion.MIN_ALPHA_BAR)
  assert unclipped.sum() > 990
  np.testing.assert_allclose(ab[unclipped], continuous[unclipped], rtol=1e-10)
  assert np.max(betas) == pytest.approx(0.999)


def test_cosine_time_inverts_cosine_alpha_bar():
  t = np.linspace(0, 0.99, 200)
  ab = diffusion.cosine_alpha_bar(t)
  assert ab[0] == pytest.approx(1.0) and np.all(np.diff(ab) < 0)
  np.testing.assert_allclose(diffusion.cosine_time(ab), t, atol=1e-6)
  assert np.isfinite(diffusion.sigma_of_alpha_bar(diffusion.cosine_alpha_bar(1.0)))
  # The JAX path: float32, jittable and differentiable.
  t32 = jnp.linspace(0.01, 0.95, 50)
  ab32 = jax.jit(diffusion.cosine_alpha_bar)(t32)
  assert ab32.dtype == jnp.float32
  _close(diffusion.cosine_time(ab32), t32, 1e-5)
  grad = jax.grad(lambda t: diffusion.cosine_alpha_bar(t))(jnp.float32(0.3))
  s = 0.008
  expected = -math.pi / (2 * (1 + s)) * math.sin(math.pi * (0.3 + s) / (1 + s))
  assert float(grad) == pytest.approx(expected / math.cos(s / (1 + s) * math.pi / 2) ** 2, 1e-4)


def test_sigma_and_alpha_bar_are_inverse():
  sigmas = np.array([0.01, 0.12, 0.25, 0.5, 1.0, 3.0])
  ab = diffusion.alpha_bar_of_sigma(sigmas)
  np.testing.assert_allclose(ab, 1 / (1 + 4 * sigmas**2))
  np.testing.assert_allclose(diffusion.sigma_of_alpha_bar(ab), sigmas, rtol=1e-12)
  # The noise of sqrt(ab) * 2 * delta is sqrt(1 - ab): the point of the mapping.
  np.testing.assert_allclose(np.sqrt(ab) * 2 * sigmas, np.sqrt(1 - ab), rtol=1e-12)


# Timesteps.


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_timestep_for_sigma_is_exact_on_cosine(sigma):
  step = diffusion.timestep_for_sigma(sigma, "cosine")
  assert isinstance(step.t, float) and not step.discrete
  assert step.sigma == step.target_sigma == sigma
  assert float(diffusion.cosine_alpha_bar(step.t)) == pytest.approx(step.alpha_bar, rel=1e-12)
  assert step.alpha_bar == pytest.approx(1 / (1 + 4 * sigma**2), rel=1e-12)


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_timestep_for_sigma_rounds_to_the_nearest_discrete_step(sigma):
  ab = diffusion.linear_schedule()
  step = diffusion.timestep_for_sigma(sigma, ab)
  assert isinstance(step.t, int) and step.discrete
  assert step.alpha_bar == ab[step.t] and step.target_sigma == sigma
  log_sigmas = np.log(diffusion.sigma_of_alpha_bar(ab))
  assert step.sigma == pytest.approx(math.exp(log_sigmas[step.t]))
  gaps = np.diff(log_sigmas)[step.t - 1 : step.t + 1]
  assert abs(math.log(step.sigma / sigma)) <= gaps.max() / 2 + 1e-12
  assert np.argmin(np.abs(log_sigmas - math.log(sigma))) == step.t


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), float("inf"), "x", None])
def test_timestep_for_sigma_rejects_bad_sigmas(sigma):
  with pytest.raises(InputError, match="sigma must be a finite number > 0"):
    diffusion.timestep_for_sigma(sigma, "cosine")


def test_timestep_for_sigma_rejects_sigmas_outside_a_discrete_schedule():
  ab = diffusion.linear_schedule()  # covers sigmas 0.005 .. 78.7
  for sigma in (1e-3, 100.0):
    with pytest.raises(InputError, match=r"outside the range 0\.005 \.\. 78\.7"):
      diffusion.timestep_for_sigma(sigma, ab)
  assert diffusion.timestep_for_sigma(diffusion.sigma_of_alpha_bar(ab[0]), ab).t == 0
  assert diffusion.timestep_for_sigma(diffusion.sigma_of_alpha_bar(ab[-1]), ab).t == 999
  with pytest.raises(InputError, match="unknown schedule"):
    diffusion.timestep_for_sigma(0.25, "linear")
  with pytest.raises(InputError, match="decreasing alpha_bar"):
    diffusion.timestep_for_sigma(0.25, ab[::-1])
  with pytest.raises(InputError, match="beyond the cosine schedule"):
    diffusion.timestep_for_sigma(1e3, "cosine")


# One-shot denoising against closed forms.


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_one_shot_with_the_exact_predictor_is_the_mmse_denoiser(sigma):
  _, y = _gaussian_pair(0, sigma)
  eps_fn = diffusion.gaussian_epsilon_fn(MU, S, "cosine")
  step = diffusion.timestep_for_sigma(sigma, "cosine")
  out = diffusion.one_shot_denoise(eps_fn, y, step, clip=False)
  assert out.dtype == jnp.float32 and out.shape == y.shape
  _close(out, diffusion.gaussian_mmse_denoiser(y, MU, S, sigma), 1e-5)


@pytest.mark.parametrize("sigma", [0.12, 0.25])
def test_one_shot_on_a_discrete_schedule_is_off_by_the_rounding(sigma):
  ab = diffusion.linear_schedule()
  _, y = _gaussian_pair(1, sigma)
  step = diffusion.timestep_for_sigma(sigma, ab)
  out = diffusion.one_shot_denoise(diffusion.gaussian_epsilon_fn(MU, S, ab), y, step, clip=False)
  # By hand, in float64, from the rounded timestep's alpha_bar.
  a = step.alpha_bar
  y64 = np.asarray(y, np.float64)
  x_t = math.sqrt(a) * (2 * y64 - 1)
  eps = math.sqrt(1 - a) * (x_t - math.sqrt(a) * (2 * MU - 1)) / (4 * S**2 * a + 1 - a)
  by_hand = ((x_t - math.sqrt(1 - a) * eps) / math.sqrt(a) + 1) / 2
  _close(out, by_hand, 1e-5)
  # That is the MMSE denoiser for noise step.sigma, not the noise actually added.
  _close(out, diffusion.gaussian_mmse_denoiser(y, MU, S, step.sigma), 1e-5)
  off = np.max(
    np.abs(np.asarray(out) - np.asarray(diffusion.gaussian_mmse_denoiser(y, MU, S, sigma)))
  )
  k, k_step = (S**2 / (S**2 + v**2) for v in (sigma, step.sigma))
  predicted = abs(k - k_step) * np.max(np.abs(y64 - MU))
  assert 1e-4 < off == pytest.approx(predicted, rel=0.05)


def test_one_shot_mse_is_the_mmse():
  sigma = 0.12
  x, y = _gaussian_pair(2, sigma, (4096, 4, 4, 1))
  eps_fn = diffusion.gaussian_epsilon_fn(MU, S, "cosine")

  def mse(step):
    out = diffusion.one_shot_denoise(eps_fn, y, step, clip=False)
    return float(np.mean((np.asarray(out, np.float64) - np.asarray(x, np.float64)) ** 2))

  mmse = S**2 * sigma**2 / (S**2 + sigma**2)
  se = mmse * math.sqrt(2 / x.size)  # the error is N(0, mmse) per pixel
  right = mse(diffusion.timestep_for_sigma(sigma, "cosine"))
  assert abs(right - mmse) < 4 * se
  # The timestep of twice the noise shrinks too much: its MSE is the closed form's
  # (1 - k)^2 s^2 + k^2 sigma^2 with k = s^2 / (s^2 + 4 sigma^2), about 28% more.
  wrong = mse(diffusion.timestep_for_sigma(2 * sigma, "cosine"))
  k = S**2 / (S**2 + 4 * sigma**2)
  assert abs(wrong - ((1 - k) ** 2 * S**2 + k**2 * sigma**2)) < 4 * se * 1.3
  assert wrong > mmse + 20 * se


def test_one_shot_clips_and_passes_the_timestep():
  seen = {}

  def eps_fn(x_t, t):
    seen["t"] = t
    return -5.0 * jnp.ones_like(x_t)  # pushes every estimate far above 1

  y = jnp.full((3, 2, 2, 1), 0.5)
  out = diffusion.one_shot_denoise(eps_fn, y, diffusion.timestep_for_sigma(0.5, "cosine"))
  _close(out, jnp.ones_like(y), 0)
  assert seen["t"].dtype == jnp.float32 and seen["t"].shape == (3,)
  step = diffusion.timestep_for_sigma(0.5, diffusion.linear_schedule())
  diffusion.one_shot_denoise(eps_fn, y, step)
  assert seen["t"].dtype == jnp.int32 and np.all(np.asarray(seen["t"]) == step.t)
  with pytest.raises(InputError, match="step must be a Timestep"):
    diffusion.one_shot_denoise(eps_fn, y, 0.5)


# The training objective.


def test_diffusion_loss_ranks_predictors_and_matches_its_expectation():
  images = MU + S * jax.random.normal(jax.random.key(3), SHAPE, jnp.float32)
  key = jax.random.key(4)

  def loss(eps_fn, **kw):
    return float(diffusion.diffusion_loss(eps_fn, jax.random.clone(key), images, **kw)[0])

  exact = loss(diffusion.gaussian_epsilon_fn(MU, S, "cosine"))
  wrong_mu = loss(diffusion.gaussian_epsilon_fn(0.3, S, "cosine"))
  zeros = loss(lambda x_t, t: jnp.zeros_like(x_t))
  assert exact < wrong_mu < zeros
  assert zeros == pytest.approx(1.0, abs=0.02)
  # The exact predictor's loss is E_t[1 - (1 - ab) / (4 s^2 ab + 1 - ab)], t ~ U(T_MIN, 1).
  t = np.linspace(diffusion.T_MIN, 1, 100_001)
  ab = diffusion.cosine_alpha_bar(t)
  g = 1 - (1 - ab) / (4 * S**2 * ab + 1 - ab)
  pixels = math.prod(SHAPE[1:])
  se = math.sqrt((np.var(g) + np.mean(2 * g**2) / pixels) / SHAPE[0])
  assert abs(exact - np.mean(g)) < 5 * se


def test_diffusion_loss_max_sigma_bounds_the_times():
  seen = {}

  def eps_fn(x_t, t):
    seen["t"] = np.asarray(t)
    return jnp.zeros_like(x_t)

  images = jnp.full((4096, 2, 2, 1), 0.5)
  loss, aux = diffusion.diffusion_loss(eps_fn, jax.random.key(5), images, max_sigma=0.5)
  assert float(aux["eps_mse"]) == float(loss)
  t_hi = float(diffusion.cosine_time(diffusion.alpha_bar_of_sigma(0.5)))
  t = seen["t"]
  assert t.dtype == np.float32 and t.shape == (4096,)
  assert t.min() >= diffusion.T_MIN and t.max() <= t_hi + 1e-6
  assert t.max() > t_hi - 0.01 and abs(t.mean() - (diffusion.T_MIN + t_hi) / 2) < 0.01
  with pytest.raises(InputError, match="continuous 'cosine' schedule only"):
    diffusion.diffusion_loss(eps_fn, jax.random.key(6), images, schedule="linear")
  with pytest.raises(InputError, match="sigma must be a finite number > 0"):
    diffusion.diffusion_loss(eps_fn, jax.random.key(7), images, max_sigma=-1.0)


# The U-Net.

_apply = nnx.jit(lambda model, x, t: model(x, t))


@pytest.mark.parametrize("shape, multipliers", [((28, 28, 1), (1, 2, 2)), ((32, 32, 3), (1, 2))])
def test_unet_shapes_and_time_conditioning(shape, multipliers):
  model = unet.UNet(
    shape[2], features=8, multipliers=multipliers, input_shape=shape, rngs=nnx.Rngs(params=0)
  )
  x = jax.random.normal(jax.random.key(8), (2, *shape))
  out = _apply(model, x, jnp.array([0.1, 0.1]))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))
  # Another time changes the prediction, the time of one image changes only its own.
  other = _apply(model, x, jnp.array([0.1, 0.9]))
  _close(other[0], out[0], 1e-6)
  assert np.max(np.abs(np.asarray(other[1] - out[1]))) > 1e-3 * np.max(np.abs(np.asarray(out)))


def test_unet_bfloat16_returns_float32():
  model = unet.UNetTiny(1, rngs=nnx.Rngs(params=0), dtype=jnp.bfloat16)
  assert model.stem.dtype == jnp.bfloat16
  assert model.stem.kernel.dtype == jnp.float32  # parameters stay float32
  x = jax.random.normal(jax.random.key(9), (2, 8, 8, 1))
  out = _apply(model, x, jnp.array([0.2, 0.7]))
  assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
  reference = unet.UNetTiny(1, rngs=nnx.Rngs(params=0))
  expected = _apply(reference, x, jnp.array([0.2, 0.7]))
  _close(out, expected, 0.05 * float(jnp.max(jnp.abs(expected))))


def test_unet_rejects_shapes_it_cannot_halve():
  with pytest.raises(InputError, match="divisible by 4, got 30x30"):
    unet.UNet(1, multipliers=(1, 2, 2), input_shape=(30, 30, 1), rngs=nnx.Rngs(params=0))
  with pytest.raises(InputError, match="built for 1 channels"):
    unet.UNetTiny(1, input_shape=(8, 8, 3), rngs=nnx.Rngs(params=0))
  model = unet.UNetTiny(1, rngs=nnx.Rngs(params=0))
  with pytest.raises(InputError, match="divisible by 2, got 7x8"):
    model(jnp.zeros((1, 7, 8, 1)), jnp.zeros(1))
  with pytest.raises(InputError, match="one time per image"):
    model(jnp.zeros((2, 8, 8, 1)), jnp.zeros(3))


def _param_count(constructor, channels):
  model = nnx.eval_shape(lambda: constructor(channels, rngs=nnx.Rngs(params=0)))
  return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_unet_parameter_counts():
  small = _param_count(unet.UNetSmall, 1)
  print(f"UNetSmall: {small:,} parameters; UNetCifar: {_param_count(unet.UNetCifar, 3):,}")
  assert small == 1_045_729
  assert 5e5 < small < 1.5e6
  assert _param_count(unet.UNetTiny, 1) < 1e5


def test_training_unet_tiny_lowers_the_loss():
  model = unet.UNetTiny(1, input_shape=(8, 8, 1), rngs=nnx.Rngs(params=0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  data_key, eval_key, train_key = jax.random.split(jax.random.key(10), 3)
  images = MU + S * jax.random.normal(data_key, (256, 8, 8, 1))

  @nnx.jit
  def evaluate(model, key):
    return diffusion.diffusion_loss(model, key, images, max_sigma=1.0)[0]

  @nnx.jit
  def train_step(model, optimizer, key, batch):
    def loss_fn(model):
      return diffusion.diffusion_loss(model, key, batch, max_sigma=1.0)

    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss

  before = float(evaluate(model, jax.random.clone(eval_key)))
  for step in range(50):
    batch = images[(step % 8) * 32 : (step % 8 + 1) * 32]
    train_step(model, optimizer, jax.random.fold_in(train_key, step), batch)
  after = float(evaluate(model, jax.random.clone(eval_key)))
  exact = float(
    diffusion.diffusion_loss(
      diffusion.gaussian_epsilon_fn(MU, S, "cosine"), eval_key, images, max_sigma=1.0
    )[0]
  )
  assert before == pytest.approx(1.0, abs=0.05)  # the small last layer predicts ~no noise
  assert exact < after < 0.5 * before


# The module.


def test_one_shot_module_under_jit_equals_the_function():
  model = unet.UNetTiny(1, input_shape=(8, 8, 1), rngs=nnx.Rngs(params=0))
  denoiser = diffusion.OneShot(model, 0.25, "cosine")
  assert denoiser.step == diffusion.timestep_for_sigma(0.25, "cosine") and denoiser.clip
  y = jax.random.uniform(jax.random.key(11), (4, 8, 8, 1))
  graphdef, state = nnx.split(denoiser)
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(nnx.state(model)))

  @jax.jit
  def apply(state, y):
    return nnx.merge(graphdef, state)(y)

  out = apply(state, y)
  expected = jax.jit(lambda y: diffusion.one_shot_denoise(model, y, denoiser.step))(y)
  _close(out, expected, 1e-6)
  _close(nnx.jit(lambda d, y: d(y))(denoiser, y), expected, 1e-6)
  assert out.dtype == jnp.float32 and float(out.min()) >= 0 and float(out.max()) <= 1
  # The weights are the state: other weights, another output, no retracing needed.
  state2 = jax.tree.map(lambda p: p * 1.5, state)
  assert np.max(np.abs(np.asarray(apply(state2, y) - out))) > 1e-6
