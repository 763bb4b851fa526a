"""Tests for FGSM, PGD and SmoothAdv's attack.

Two models: a small fixed random MLP, and a linear two-class model with logits
``(w.x + b, 0)``, whose smallest adversarial perturbation is known in closed form:
``|w.x + b| / ||w||_2`` in l2 and ``|w.x + b| / ||w||_1`` in linf (the dual norm of
``w``), as long as the clipping to [0, 1] does not bind.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax import attacks, losses
from smoothjax.errors import InputError
from smoothjax.noise import Gaussian

NORMS = ["l2", "linf"]
SHAPE = (4, 4, 1)  # d = 16
EPS = {"l2": 0.5, "linf": 0.1}
TOL = 1e-6  # float rounding of x + delta - x

_rng = np.random.RandomState(0)
W1 = jnp.asarray(_rng.randn(16, 32) / 2, jnp.float32)
B1 = jnp.asarray(_rng.randn(32), jnp.float32)
W2 = jnp.asarray(_rng.randn(32, 5), jnp.float32)


def mlp_logits(x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ W1 + B1) @ W2


def cross_entropy(logits, y):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


def mlp_loss(x, y):
  return cross_entropy(mlp_logits(x), y)


def batch(seed: int = 1, size: int = 8):
  """Inputs spread over [0, 1], some pixels at its edges so that clipping binds."""
  x = np.random.RandomState(seed).rand(size, *SHAPE).astype(np.float32)
  x[:, 0, 0, 0] = 0.0
  x[:, 1, 1, 0] = 1.0
  x = jnp.asarray(x)
  return x, jnp.argmax(mlp_logits(x), axis=1)


def distances(x_adv, x, norm):
  delta = np.asarray(x_adv - x, np.float64).reshape(x.shape[0], -1)
  return np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)


def random_perturbation(key, x, eps, norm):
  """A random point on the boundary of the ball (linf: a random vertex), clipped."""
  z = jax.random.normal(key, x.shape)
  if norm == "linf":
    delta = eps * jnp.sign(z)
  else:
    delta = eps * z / jnp.linalg.norm(z.reshape(x.shape[0], -1), axis=1)[:, None, None, None]
  return jnp.clip(x + delta, 0.0, 1.0)


@pytest.mark.parametrize("keep_best", [True, False])
@pytest.mark.parametrize("norm", NORMS)
def test_pgd_stays_in_the_ball_and_in_the_unit_box(norm, keep_best):
  x, y = batch()
  eps = EPS[norm]
  attack = jax.jit(
    attacks.pgd(mlp_loss, eps=eps, norm=norm, steps=8, restarts=2, keep_best=keep_best)
  )
  x_adv = attack(jax.random.key(0), x, y)
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  assert np.all(distances(x_adv, x, norm) <= eps + TOL)
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  # Clipping binds: the edge pixels stayed in the box, and the attack moved.
  assert np.all(distances(x_adv, x, norm) > eps / 2)
  x_fgsm = jax.jit(attacks.fgsm(mlp_loss, eps=eps, norm=norm))(None, x, y)
  assert np.all(distances(x_fgsm, x, norm) <= eps + TOL)
  assert np.all((x_fgsm >= 0) & (x_fgsm <= 1))


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_raises_the_loss_more_than_fgsm_and_far_more_than_noise(norm):
  x, y = batch()
  eps = EPS[norm]
  clean = mlp_loss(x, y)
  noisy = mlp_loss(random_perturbation(jax.random.key(1), x, eps, norm), y)
  fgsm = mlp_loss(jax.jit(attacks.fgsm(mlp_loss, eps=eps, norm=norm))(None, x, y), y)
  pgd = jax.jit(attacks.pgd(mlp_loss, eps=eps, norm=norm, steps=10, random_start=False))
  pgd_loss = mlp_loss(pgd(None, x, y), y)
  assert np.all(pgd_loss >= fgsm - 1e-4) and pgd_loss.mean() > fgsm.mean()
  assert np.mean(pgd_loss - clean) > 5 * abs(np.mean(noisy - clean))
  pgd_restarts = jax.jit(attacks.pgd(mlp_loss, eps=eps, norm=norm, steps=10, restarts=3))
  restarted = mlp_loss(pgd_restarts(jax.random.key(2), x, y), y)
  assert np.mean(restarted - clean) > 5 * abs(np.mean(noisy - clean))


def linear_model(norm, margin_radius):
  """Logits ``(w.x + b, 0)`` and 6 inputs of class 0 at distance ``margin_radius``."""
  rng = np.random.RandomState(3)
  w = rng.randn(16).astype(np.float64)
  b = 0.1
  x = 0.5 + 0.1 * rng.uniform(-1, 1, (6, 16))
  dual = np.abs(w).sum() if norm == "linf" else np.linalg.norm(w)
  # Move every x along w so that w.x + b = margin_radius * ||w||_dual exactly.
  x += ((margin_radius * dual - (x @ w + b)) / (w @ w))[:, None] * w
  assert np.all((x > 0.3) & (x < 0.7))  # far from the box's faces: no clipping
  w32 = jnp.asarray(w, jnp.float32)

  def logits_fn(x):
    z = x.reshape(x.shape[0], -1) @ w32 + b
    return jnp.stack([z, jnp.zeros_like(z)], axis=-1)

  return logits_fn, jnp.asarray(x.reshape(6, *SHAPE), jnp.float32)


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_pgd_finds_the_minimal_perturbation_of_a_linear_model(norm, random_start):
  radius = 0.05
  logits_fn, x = linear_model(norm, radius)
  y = jnp.zeros(6, jnp.int32)
  assert np.all(jnp.argmax(logits_fn(x), axis=1) == 0)

  def loss_fn(x, y):
    return cross_entropy(logits_fn(x), y)

  # eps is traced, so one compilation serves both radii.
  @jax.jit
  def attack(eps, key):
    # From a random point of the l2 sphere, steps of the default 2.5 eps / steps turn
    # the perturbation towards -w only slowly; longer steps get there in 40.
    step_size = eps / 4 if random_start else None
    pgd = attacks.pgd(
      loss_fn, eps=eps, norm=norm, steps=40, step_size=step_size, random_start=random_start
    )
    return pgd(key, x, y)

  def fooled(eps, seed):
    x_adv = attack(jnp.float32(eps), jax.random.key(seed))
    return np.asarray(jnp.argmax(logits_fn(x_adv), axis=1) != 0)

  assert np.all(fooled(1.03 * radius, 4))
  assert not np.any(fooled(0.97 * radius, 5))


@pytest.mark.parametrize("norm", NORMS)
def test_targeted_pgd_reaches_the_target_class(norm):
  x, _ = batch()
  target = jnp.argsort(mlp_logits(x), axis=1)[:, -2]  # the runner-up class
  eps = {"l2": 1.0, "linf": 0.3}[norm]
  attack = jax.jit(attacks.pgd(mlp_loss, eps=eps, norm=norm, steps=20, targeted=True))
  x_adv = attack(jax.random.key(5), x, target)
  np.testing.assert_array_equal(jnp.argmax(mlp_logits(x_adv), axis=1), target)
  assert np.all(distances(x_adv, x, norm) <= eps + TOL)


def test_zero_eps_returns_the_input():
  x, y = batch()
  np.testing.assert_array_equal(attacks.pgd(mlp_loss, eps=0.0, steps=3)(jax.random.key(0), x, y), x)
  np.testing.assert_array_equal(attacks.fgsm(mlp_loss, eps=0.0, norm="l2")(None, x, y), x)
  noise = losses.noise_batch(Gaussian(0.25), jax.random.key(1), 2, x.shape)
  np.testing.assert_array_equal(attacks.smoothadv(mlp_logits, eps=0.0, steps=3)(x, y, noise), x)


# --------------------------------------------------------------------------
# SmoothAdv.


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def smoothadv_reference(logits_fn, x, y, noise, eps, steps):
  """A transcription of Salman et al.'s multi-noise PGD_L2 loop."""
  delta = jnp.zeros_like(x)
  alpha = eps / steps * 2

  def loss(delta):
    noisy = (x + delta)[None] + noise
    probs = jax.nn.softmax(logits_fn(noisy.reshape(-1, *x.shape[1:]))).reshape(
      noise.shape[0], x.shape[0], -1
    )
    avg = probs.mean(0)
    return -jnp.mean(jnp.log(jnp.maximum(avg, 1e-20))[jnp.arange(x.shape[0]), y])

  for _ in range(steps):
    grad = jax.grad(loss)(delta)
    norms = jnp.linalg.norm(grad.reshape(x.shape[0], -1), axis=1)[:, None, None, None]
    delta = delta + alpha * grad / norms
    delta = jnp.clip(delta + x, 0, 1) - x  # clamp to [0, 1] first ...
    dnorm = jnp.linalg.norm(delta.reshape(x.shape[0], -1), axis=1)[:, None, None, None]
    delta = jnp.where(dnorm > eps, delta * eps / (dnorm + 1e-7), delta)  # ... then renorm
  return x + delta


def test_smoothadv_matches_the_reference_loop():
  x, y = batch()
  noise = losses.noise_batch(Gaussian(0.25), jax.random.key(6), 3, x.shape)
  eps, steps = 0.5, 4
  x_adv = jax.jit(attacks.smoothadv(mlp_logits, eps=eps, steps=steps))(x, y, noise)
  np.testing.assert_allclose(
    x_adv, smoothadv_reference(mlp_logits, x, y, noise, eps, steps), atol=1e-5
  )
  assert np.all(distances(x_adv, x, "l2") <= eps + TOL)
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  before = losses.smoothed_cross_entropy(mlp_logits, x, y, noise)
  after = losses.smoothed_cross_entropy(mlp_logits, x_adv, y, noise)
  assert np.all(after > before)


def test_smoothadv_on_a_linear_model_steps_straight_across_the_boundary():
  # With logits (w.x + b, 0) the gradient of -log G_0 points along -w whatever the
  # noise, so the attack ends at x - eps * w / ||w|| once it has taken eps of steps.
  logits_fn, x = linear_model("l2", 0.05)
  y = jnp.zeros(6, jnp.int32)
  noise = losses.noise_batch(Gaussian(0.5), jax.random.key(7), 16, x.shape)
  w = np.asarray(jax.grad(lambda x: logits_fn(x)[0, 0])(x[:1])).reshape(-1)
  eps = 0.06
  x_adv = jax.jit(attacks.smoothadv(logits_fn, eps=eps, steps=4))(x, y, noise)
  expected = np.asarray(x).reshape(6, -1) - eps * w / np.linalg.norm(w)
  np.testing.assert_allclose(np.asarray(x_adv).reshape(6, -1), expected, atol=1e-5)


# --------------------------------------------------------------------------
# Settings and compilation.


@pytest.mark.parametrize(
  "build, message",
  [
    (lambda: attacks.pgd(mlp_loss, eps=-0.1, steps=5), "eps must be a finite number >= 0"),
    (lambda: attacks.pgd(mlp_loss, eps=float("nan"), steps=5), "eps must be"),
    (lambda: attacks.pgd(mlp_loss, eps=float("inf"), steps=5), "eps must be"),
    (lambda: attacks.pgd(mlp_loss, eps=0.1, steps=0), "steps must be an integer >= 1"),
    (lambda: attacks.pgd(mlp_loss, eps=0.1, steps=2.5), "steps must be an integer"),
    (lambda: attacks.pgd(mlp_loss, eps=0.1, steps=5, restarts=0), "restarts must be"),
    (lambda: attacks.pgd(mlp_loss, eps=0.1, steps=5, norm="l3"), "unknown norm 'l3'"),
    (lambda: attacks.pgd(mlp_loss, eps=0.1, steps=5, step_size=0.0), "step_size must be > 0"),
    (lambda: attacks.pgd(mlp_loss, eps=0.1, steps=5, step_size=-1), "step_size must be"),
    (
      lambda: attacks.pgd(mlp_loss, eps=0.1, steps=5, restarts=3, random_start=False),
      "set random_start=True",
    ),
    (lambda: attacks.fgsm(mlp_loss, eps=-1.0), "eps must be"),
    (lambda: attacks.fgsm(mlp_loss, eps=0.1, norm="L2"), "unknown norm"),
    (lambda: attacks.smoothadv(mlp_logits, eps=-0.5, steps=2), "eps must be"),
    (lambda: attacks.smoothadv(mlp_logits, eps=0.5, steps=0), "steps must be"),
  ],
)
def test_bad_settings_are_refused_when_the_attack_is_built(build, message):
  with pytest.raises(InputError, match=message) as info:
    build()
  assert "\n" not in str(info.value)


def test_bad_calls_are_refused():
  x, y = batch()
  with pytest.raises(InputError, match="needs a PRNG key"):
    attacks.pgd(mlp_loss, eps=0.1, steps=2)(None, x, y)
  with pytest.raises(InputError, match="one loss per example"):
    attacks.pgd(lambda x, y: mlp_loss(x, y).mean(), eps=0.1, steps=2, random_start=False)(
      None, x, y
    )


def test_attacks_do_not_recompile_on_a_second_call():
  traces = {"loss": 0, "logits": 0}

  def loss_fn(x, y):
    traces["loss"] += 1
    return mlp_loss(x, y)

  def logits_fn(x):
    traces["logits"] += 1
    return mlp_logits(x)

  pgd = jax.jit(attacks.pgd(loss_fn, eps=0.1, steps=3, restarts=2))
  fgsm = jax.jit(attacks.fgsm(loss_fn, eps=0.1, norm="l2"))
  smoothadv = jax.jit(attacks.smoothadv(logits_fn, eps=0.5, steps=3))
  keys = jax.random.split(jax.random.key(8), 4)
  noise = [losses.noise_batch(Gaussian(0.25), k, 2, (8, *SHAPE)) for k in keys[2:]]
  counts = []
  for i, seed in enumerate([1, 2]):
    x, y = batch(seed)
    pgd(keys[i], x, y)
    fgsm(None, x, y)
    smoothadv(x, y, noise[i])
    counts.append(dict(traces))
  assert counts[0]["loss"] > 0 and counts[0]["logits"] > 0
  assert counts[1] == counts[0]
