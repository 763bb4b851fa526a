"""Tests for FGSM, PGD and SmoothAdv's attack.

Two models: a small fixed random MLP, and a linear two-class model with logits
``(w.x + b, 0)``, whose smallest adversarial perturbation is known in closed form:
``|w.x + b| / ||w||_2`` in l2, ``|w.x + b| / ||w||_1`` in linf and
``|w.x + b| / max_i |w_i|`` in l1 (the dual norm of ``w``), as long as the clipping
to [0, 1] does not bind.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from smoothjax.errors import InputError
from smoothjax.noise import Gaussian
from smoothjax.objectives import attacks, losses

NORMS = ["l1", "l2", "linf"]
SHAPE = (4, 4, 1)  # d = 16
EPS = {"l1": 1.0, "l2": 0.5, "linf": 0.1}
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
  if norm == "l1":
    return np.abs(delta).sum(1)
  return np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)


def random_perturbation(key, x, eps, norm):
  """A random point on the boundary of the ball (linf: a random vertex), clipped."""
  z = jax.random.normal(key, x.shape)
  if norm == "linf":
    delta = eps * jnp.sign(z)
  else:
    order = 1 if norm == "l1" else 2
    delta = eps * z / jnp.linalg.norm(z.reshape(x.shape[0], -1), order, axis=1)[:, None, None, None]
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
  dual = {"l1": np.abs(w).max(), "l2": np.linalg.norm(w), "linf": np.abs(w).sum()}[norm]
  # Move every x along w so that w.x + b = margin_radius * ||w||_dual exactly.
  x += ((margin_radius * dual - (x @ w + b)) / (w @ w))[:, None] * w
  assert np.all((x > 0.3) & (x < 0.7))  # far from the box's faces: no clipping
  w32 = jnp.asarray(w, jnp.float32)

  def logits_fn(x):
    z = x.reshape(x.shape[0], -1) @ w32 + b
    return jnp.stack([z, jnp.zeros_like(z)], axis=-1)

  return logits_fn, jnp.asarray(x.reshape(6, *SHAPE), jnp.float32)


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("norm", ["l2", "linf"])
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
  if norm == "l1":
    # Yang et al.'s l1 step picks coordinates by |grad| alone: at a face of the box
    # with the gradient pointing out, a coordinate keeps its share of the step and
    # wastes it, and here some inputs stall short of the target. Mid-box inputs.
    x = 0.25 + 0.5 * x
  target = jnp.argsort(mlp_logits(x), axis=1)[:, -2]  # the runner-up class
  eps = {"l1": 2.0, "l2": 1.0, "linf": 0.3}[norm]
  attack = jax.jit(attacks.pgd(mlp_loss, eps=eps, norm=norm, steps=20, targeted=True))
  x_adv = attack(jax.random.key(5), x, target)
  np.testing.assert_array_equal(jnp.argmax(mlp_logits(x_adv), axis=1), target)
  assert np.all(distances(x_adv, x, norm) <= eps + TOL)


# --------------------------------------------------------------------------
# The l1 geometry: Yang et al. 2020's sparse step, Duchi et al.'s projection.


def project_l1_by_bisection(v, eps):
  """The projection onto the l1 ball of one vector, found independently of Duchi et al.

  The solution soft-thresholds ``v`` by the ``theta >= 0`` at which
  ``sum(max(|v| - theta, 0)) = eps`` (a decreasing function of theta), found by
  bisection in float64.
  """
  v = np.asarray(v, np.float64)
  if np.abs(v).sum() <= eps:
    return v
  low, high = 0.0, np.abs(v).max()
  for _ in range(200):
    theta = (low + high) / 2
    if np.maximum(np.abs(v) - theta, 0).sum() > eps:
      low = theta
    else:
      high = theta
  return np.sign(v) * np.maximum(np.abs(v) - high, 0)


@pytest.mark.parametrize("shape", [(6, 1), (6, 2), (6, 4, 4, 1), (3, 28, 28, 1)])
def test_l1_projection_solves_the_projection_problem(shape):
  rng = np.random.RandomState(9)
  v = rng.randn(*shape).astype(np.float32)
  v[0] = 0.0  # zero
  v[1].flat[: v[1].size // 2] = 0.3  # ties
  if v.shape[0] > 3:
    v[3] *= 1e-3  # inside the ball
  project = jax.jit(attacks._project_l1)
  for eps in [0.0, 0.05, 0.7, 3.0]:
    got = np.asarray(project(jnp.asarray(v), jnp.float32(eps))).reshape(shape[0], -1)
    for i, row in enumerate(v.reshape(shape[0], -1)):
      np.testing.assert_allclose(got[i], project_l1_by_bisection(row, eps), atol=2e-6)
    assert np.all(np.abs(got).sum(1) <= eps + 1e-5)
  # eps = 0 as a Python number too (not traced): the projection is 0.
  np.testing.assert_array_equal(attacks._project_l1(jnp.asarray(v), 0.0), 0.0)


def test_l1_projection_leaves_points_inside_the_ball_unchanged():
  rng = np.random.RandomState(10)
  v = rng.randn(5, 4, 4, 1).astype(np.float32)
  v /= np.abs(v).reshape(5, -1).sum(1)[:, None, None, None]  # l1 norm 1
  v *= np.array([0.0, 0.3, 0.9, 0.999, 1.0], np.float32)[:, None, None, None]
  np.testing.assert_array_equal(jax.jit(attacks._project_l1)(jnp.asarray(v), jnp.float32(1.0)), v)
  x = jnp.asarray(0.5 + 0.1 * rng.uniform(-1, 1, v.shape), jnp.float32)
  projected = jax.jit(attacks._project, static_argnums=3)(x + v, x, 1.0, "l1")
  np.testing.assert_allclose(projected, x + v, atol=1e-7)


def test_l1_projection_keeps_the_point_in_the_unit_box():
  # Soft thresholding moves every coordinate towards x, so the clip before it holds.
  x, _ = batch()
  z = 3.0 * jax.random.normal(jax.random.key(11), x.shape)
  x_adv = jax.jit(attacks._project, static_argnums=3)(x + z, x, 0.8, "l1")
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  assert np.all(distances(x_adv, x, "l1") <= 0.8 + 1e-6)
  clipped = np.asarray(jnp.clip(x + z, 0.0, 1.0) - x, np.float64).reshape(x.shape[0], -1)
  expected = np.stack([project_l1_by_bisection(row, 0.8) for row in clipped])
  np.testing.assert_allclose(np.asarray(x_adv - x).reshape(x.shape[0], -1), expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 1), (4, 7), (4, 4, 4, 1), (3, 28, 28, 1), (2, 8, 8, 3)])
def test_l1_unit_step_has_unit_l1_norm_on_the_largest_sixteenth(shape):
  grad = np.random.RandomState(12).randn(*shape).astype(np.float32)  # no ties
  step = np.asarray(jax.jit(lambda g: attacks._unit_step(g, "l1"))(grad))
  assert step.shape == grad.shape
  d = int(np.prod(shape[1:]))
  # rs4a: k = d * 15 // 16, keep |g| >= the k-th smallest: d - k + 1 coordinates.
  kept = d - max(1, d * 15 // 16) + 1
  assert kept == attacks._l1_kept(d)
  assert kept >= d // 16 and kept <= d // 16 + 2
  for g, u in zip(grad.reshape(shape[0], -1), step.reshape(shape[0], -1), strict=True):
    np.testing.assert_allclose(np.abs(u).sum(), 1.0, rtol=1e-6)
    largest = np.argsort(-np.abs(g))[:kept]
    np.testing.assert_array_equal(np.flatnonzero(u), np.sort(largest))
    np.testing.assert_allclose(u[largest], np.sign(g[largest]) / kept)


def test_l1_unit_step_with_ties_and_zero_gradients():
  grad = np.zeros((3, 32), np.float32)
  grad[1, :5] = [2.0, -2.0, 2.0, 1.0, -1.0]  # d = 32 keeps 3 coordinates; 3 tie at the top
  grad[2, :4] = [1.0, -1.0, 1.0, -1.0]  # 4 tie at the top: all are kept
  step = np.asarray(attacks._unit_step(jnp.asarray(grad), "l1"))
  np.testing.assert_array_equal(step[0], 0.0)  # no gradient, no step
  np.testing.assert_allclose(step[1, :5], [1 / 3, -1 / 3, 1 / 3, 0, 0])
  np.testing.assert_allclose(step[2, :4], [0.25, -0.25, 0.25, -0.25])
  np.testing.assert_array_equal(step[1:, 5:], 0.0)
  # Fewer nonzero coordinates than the step keeps: the nonzero ones share it.
  sparse = attacks._unit_step(jnp.array([[0.0, 3.0, 0.0, 0.0]]), "l1")
  np.testing.assert_allclose(sparse, [[0, 1, 0, 0]])


@pytest.mark.parametrize("dim", [1, 3, 6])
def test_l1_random_start_is_uniform_in_the_l1_ball(dim):
  n = 4000
  delta = jax.jit(attacks._random_delta, static_argnums=(1, 2, 3))(
    jax.random.key(dim), (n, 1, dim), jnp.float32, "l1"
  )
  delta = np.asarray(delta, np.float64).reshape(n, dim)
  radius = np.abs(delta).sum(1)
  assert np.all(radius < 1)
  # Uniform in the ball: P[||delta||_1 <= t] = t^d, the volume of the ball of radius t.
  assert stats.kstest(radius, lambda t: t**dim).pvalue > 1e-3
  # ... and a coordinate's |delta_i| has P[|delta_i| > s] = (1 - s)^d (the volume
  # of the section), which a non-uniform direction would break.
  assert stats.kstest(np.abs(delta[:, 0]), lambda s: 1 - (1 - s) ** dim).pvalue > 1e-3
  # Symmetric signs.
  assert abs(np.mean(delta > 0) - 0.5) < 0.03


def test_l1_random_start_lies_in_the_ball_and_the_box():
  x, _ = batch()
  eps = 2.0
  x0 = jax.jit(attacks._random_start, static_argnums=3)(jax.random.key(13), x, eps, "l1")
  assert np.all(distances(x0, x, "l1") <= eps + 1e-6)
  assert np.all((x0 >= 0) & (x0 <= 1))
  assert np.all(distances(x0, x, "l1") > 0)


@pytest.mark.parametrize("random_start", [False, True])
def test_l1_pgd_on_a_linear_model_moves_the_largest_weights(random_start):
  # The minimal l1 perturbation moves only the coordinate of largest |w_i|, by
  # |margin| / max |w_i| (the linear model's radius). Yang et al.'s sparse step moves
  # the d - 15 d // 16 + 1 = 2 coordinates of largest |w_i| equally, and after the
  # projection they keep sharing eps (from x: equally), so PGD reaches the boundary
  # at |margin| / mean of the two largest |w_i|: 2% more than the minimum with this
  # w. A dense step (all signs) would need 2.6 times the minimum.
  radius = 0.05
  logits_fn, x = linear_model("l1", radius)
  y = jnp.zeros(6, jnp.int32)
  w = np.asarray(jax.grad(lambda x: logits_fn(x)[0, 0])(x[:1]), np.float64).reshape(-1)
  top = np.argsort(-np.abs(w))[:2]
  shared = radius * np.abs(w).max() / np.abs(w[top]).mean()
  assert 1.01 * radius < shared < 1.03 * radius

  def loss_fn(x, y):
    return cross_entropy(logits_fn(x), y)

  @jax.jit
  def attack(eps, key):
    step_size = eps / 4 if random_start else None
    pgd = attacks.pgd(
      loss_fn, eps=eps, norm="l1", steps=40, step_size=step_size, random_start=random_start
    )
    return pgd(key, x, y)

  def fooled(eps, seed):
    x_adv = attack(jnp.float32(eps), jax.random.key(seed))
    return np.asarray(jnp.argmax(logits_fn(x_adv), axis=1) != 0)

  assert np.all(fooled(1.03 * shared, 14))
  assert not np.any(fooled(0.97 * radius, 15))  # no attack beats the minimum
  delta = np.asarray(attack(jnp.float32(shared), jax.random.key(16)) - x).reshape(6, -1)
  others = np.setdiff1d(np.arange(16), top)
  np.testing.assert_allclose(np.abs(delta).sum(1), shared, rtol=1e-5)
  np.testing.assert_array_equal(delta[:, others], 0.0)
  assert np.all(np.sign(delta[:, top]) == -np.sign(w[top]))
  if not random_start:
    expected = np.tile(-shared / 2 * np.sign(w[top]), (6, 1))
    np.testing.assert_allclose(delta[:, top], expected, atol=1e-6)


def test_zero_eps_returns_the_input():
  x, y = batch()
  np.testing.assert_array_equal(attacks.pgd(mlp_loss, eps=0.0, steps=3)(jax.random.key(0), x, y), x)
  np.testing.assert_array_equal(attacks.fgsm(mlp_loss, eps=0.0, norm="l2")(None, x, y), x)
  np.testing.assert_array_equal(
    attacks.pgd(mlp_loss, eps=0.0, norm="l1", steps=3)(jax.random.key(0), x, y), x
  )

  # A traced eps of 0 goes through the steps: the projections keep the point at x.
  @jax.jit
  def traced(eps):
    return attacks.pgd(mlp_loss, eps=eps, norm="l1", steps=3)(jax.random.key(0), x, y)

  np.testing.assert_array_equal(traced(jnp.float32(0.0)), x)
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


def test_l1_smoothadv_on_a_linear_model_moves_the_two_largest_weights():
  # The gradient of -log G_0 points along -w whatever the noise; the l1 steps of
  # 2 eps / steps move the 2 coordinates of largest |w_i| by eps / 2 each in two
  # steps, and the projection then keeps them there.
  logits_fn, x = linear_model("l1", 0.05)
  y = jnp.zeros(6, jnp.int32)
  noise = losses.noise_batch(Gaussian(0.5), jax.random.key(17), 16, x.shape)
  w = np.asarray(jax.grad(lambda x: logits_fn(x)[0, 0])(x[:1])).reshape(-1)
  eps = 0.06
  x_adv = jax.jit(attacks.smoothadv(logits_fn, eps=eps, steps=4, norm="l1"))(x, y, noise)
  top = np.argsort(-np.abs(w))[:2]
  expected = np.asarray(x).reshape(6, -1).copy()
  expected[:, top] -= eps / 2 * np.sign(w[top])
  np.testing.assert_allclose(np.asarray(x_adv).reshape(6, -1), expected, atol=1e-6)
  before = losses.smoothed_cross_entropy(logits_fn, x, y, noise)
  after = losses.smoothed_cross_entropy(logits_fn, x_adv, y, noise)
  assert np.all(after > before)


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
