"""Generation: scores against closed forms, PGD's constraints, seeds, the fixed-point gradient.

Linear models ``f(x) = x W + b`` give closed forms: the TCM gradient is the
class's weight column whatever the noise, and for two classes the smoothed
cross-entropy ``E[log sigmoid(u)]``, ``u = a.(x + eps) + c``, has gradient
``E[sigmoid(-u)] a`` with ``u`` Gaussian under Gaussian noise: a one-dimensional
integral that SciPy computes independently of the Monte Carlo estimate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from smoothjax.errors import InputError
from smoothjax.noise import Gaussian, Laplace, Uniform
from smoothjax.objectives import attacks, generation, losses

SHAPE = (4, 4, 1)  # d = 16
_rng = np.random.RandomState(0)
W = jnp.asarray(_rng.randn(16, 3), jnp.float32)
B = jnp.asarray(_rng.randn(3), jnp.float32)
W1 = jnp.asarray(_rng.randn(16, 12) / 2, jnp.float32)
W2 = jnp.asarray(_rng.randn(12, 3), jnp.float32)


def linear(x):
  return x.reshape(x.shape[0], -1) @ W + B


def mlp(x, w1=W1):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ W2


def images(n, key=0, low=0.2, high=0.8):
  return jax.random.uniform(jax.random.key(key), (n, *SHAPE), jnp.float32, low, high)


def keys(n, seed=1):
  return jax.random.split(jax.random.key(seed), n)


@pytest.mark.parametrize("noise", [Gaussian(0.5), Laplace(0.5), Uniform(0.5)], ids=str)
def test_tcm_gradient_of_a_linear_model_is_the_weight_column(noise):
  x, c = images(3), jnp.array([0, 1, 2])
  score = generation.score_fn(linear, loss="tcm", noise=noise, m=8)
  grad = jax.grad(lambda x: score(x, c, jax.random.key(2)).sum())(x)
  np.testing.assert_allclose(grad.reshape(3, -1), W.T[c], rtol=1e-5, atol=1e-6)


def test_smoothed_ce_gradient_converges_to_the_gaussian_closed_form():
  """Two classes: the Monte Carlo gradient is within 4 standard errors of SciPy's integral."""
  sigma = 0.5
  w2 = jnp.stack([W[:, 0], W[:, 1]], axis=1) * 0.3
  b2 = jnp.array([0.2, -0.1])
  f = lambda x: x.reshape(x.shape[0], -1) @ w2 + b2  # noqa: E731
  x = images(1, key=5)
  a = np.asarray(w2[:, 0] - w2[:, 1], np.float64)
  mu = float(np.asarray(x).reshape(-1) @ a + (b2[0] - b2[1]))
  s = sigma * np.linalg.norm(a)
  weight, _ = integrate.quad(lambda t: special.expit(-(mu + s * t)) * stats.norm.pdf(t), -12, 12)
  exact = weight * a
  # The estimate is a * mean_j sigmoid(-u_j): its standard error is that of the mean.
  spread = np.sqrt(
    integrate.quad(
      lambda t: (special.expit(-(mu + s * t)) - weight) ** 2 * stats.norm.pdf(t), -12, 12
    )[0]
  )
  errors = []
  for m in (64, 16384):
    score = generation.score_fn(f, loss="ce", noise=Gaussian(sigma), m=m)
    key = jax.random.key(m)
    grad = jax.grad(lambda x, score=score, key=key: score(x, jnp.array([0]), key).sum())(x)
    estimate = np.asarray(grad, np.float64).reshape(-1)
    # Parallel to a, with its coefficient within 4 standard errors of the integral's.
    coefficient = estimate @ a / (a @ a)
    np.testing.assert_allclose(estimate, coefficient * a, rtol=1e-3, atol=1e-6)
    assert abs(coefficient - weight) <= 4 * spread / np.sqrt(m) + 1e-6
    errors.append(np.linalg.norm(estimate - exact))
  assert errors[1] < errors[0] or errors[0] < 4 * spread / 8 * np.linalg.norm(a)


def test_scores_match_their_definitions():
  x, c = images(2), jnp.array([1, 2])
  eps = losses.noise_batch(Gaussian(0.3), jax.random.key(3), 5, x.shape)
  noisy = linear((x[None] + eps).reshape(-1, *SHAPE)).reshape(5, 2, 3)
  log_p = jax.nn.log_softmax(noisy, axis=-1)
  pick = lambda v: jnp.take_along_axis(v, c[None, :, None], -1)[..., 0]  # noqa: E731
  ce = generation.class_score(linear, x, c, eps, loss="ce")
  np.testing.assert_allclose(ce, pick(log_p).mean(0), rtol=1e-5)
  tcm = generation.class_score(linear, x, c, eps, loss="tcm")
  np.testing.assert_allclose(tcm, pick(noisy).mean(0), rtol=1e-5)
  soft = generation.class_score(linear, x, c, eps, loss="soft")
  np.testing.assert_allclose(soft, np.log(np.exp(pick(log_p)).mean(0)), rtol=1e-5)
  assert np.all(soft >= ce - 1e-6)  # Jensen
  plain = generation.class_score(linear, x, c, loss="ce")
  np.testing.assert_allclose(
    plain, jnp.take_along_axis(jax.nn.log_softmax(linear(x)), c[:, None], -1)[:, 0], rtol=1e-6
  )


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 0.1)])
@pytest.mark.parametrize("loss", generation.LOSSES)
def test_generation_stays_in_the_ball_and_box_and_raises_the_smoothed_score(norm, eps, loss):
  x = images(6, low=0.0, high=1.0)
  c = jnp.array([0, 1, 2, 0, 1, 2])
  noise = Gaussian(0.25)
  run = jax.jit(
    lambda x, c, k: generation.generate(
      mlp, x, c, k, loss=loss, noise=noise, m=8, eps=eps, norm=norm, steps=10
    )
  )
  out = run(x, c, keys(6))
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  delta = (out - x).reshape(6, -1)
  size = jnp.linalg.norm(delta, axis=1) if norm == "l2" else jnp.abs(delta).max(axis=1)
  assert float(size.max()) <= eps * (1 + 1e-5)
  # The smoothed score, estimated with many fresh samples, rises for every image.
  judge = generation.score_fn(mlp, loss=loss, noise=noise, m=4096)
  before, after = judge(x, c, jax.random.key(7)), judge(out, c, jax.random.key(8))
  assert np.all(np.asarray(after) > np.asarray(before))


def test_an_image_does_not_depend_on_its_batch():
  x, c, k = images(4), jnp.array([0, 1, 2, 1]), keys(4)
  run = jax.jit(
    lambda x, c, k: generation.generate(mlp, x, c, k, noise=Gaussian(0.5), m=4, eps=2.0, steps=5)
  )
  batch = run(x, c, k)
  for i in range(4):
    one = run(x[i : i + 1], c[i : i + 1], k[i : i + 1])
    np.testing.assert_allclose(one[0], batch[i], rtol=1e-5, atol=1e-6)
  other = run(x, c, keys(4, seed=9))
  assert not np.allclose(other, batch)  # the noise is drawn from the keys


def test_keyed_pgd_draws_a_fresh_key_every_step():
  seen = []

  def loss_fn(x, y, key):
    seen.append(key)
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1) * jax.random.uniform(key)

  attack = attacks.pgd(loss_fn, eps=1.0, norm="l2", steps=3, random_start=False, keyed_loss=True)
  with jax.disable_jit():
    attack(jax.random.key(0), images(1), jnp.array([0]))
  data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in seen]
  assert len(data) == 4 and len(set(data)) == 4  # 3 steps and the last iterate's score


def test_base_model_generation_is_deterministic_and_needs_no_keys():
  x, c = images(3, low=0.4, high=0.6), jnp.array([2, 1, 0])
  a = generation.generate(linear, x, c, eps=0.3, steps=5, loss="tcm")
  b = generation.generate(linear, x, c, None, eps=0.3, steps=5, loss="tcm")
  np.testing.assert_array_equal(a, b)
  # TCM on a linear model: l2 steps go straight along the weight column (no clipping here).
  direction = (a - x).reshape(3, -1)
  cos = jnp.sum(direction * W.T[c], 1) / (
    jnp.linalg.norm(direction, axis=1) * jnp.linalg.norm(W.T[c], axis=1)
  )
  assert float(cos.min()) > 0.99


def test_class_gaussian_seeds_have_the_fitted_mean_and_covariance():
  rng = np.random.RandomState(1)
  n, h = 600, 8
  labels = np.arange(n) % 3
  base = rng.rand(3, h // 2, h // 2, 1)[labels]
  x = np.clip(base.repeat(2, 1).repeat(2, 2) + 0.1 * rng.randn(n, h, h, 1), 0, 1)
  fit = generation.fit_class_gaussians(x, labels, 3, factor=2)
  assert fit.grid_shape == (4, 4, 1) and list(fit.counts) == [200, 200, 200]
  grid = x.reshape(n, 4, 2, 4, 2, 1).mean(axis=(2, 4)).reshape(n, -1)
  for c in range(3):
    rows = grid[labels == c]
    np.testing.assert_allclose(fit.mean[c], rows.mean(0), atol=1e-12)
    np.testing.assert_allclose(
      fit.cov[c], np.cov(rows.T, bias=True) + 1e-4 * np.eye(16), atol=1e-12
    )
  draws = 20000
  samples = np.asarray(fit.sample_grid(keys(draws), jnp.full(draws, 1))).reshape(draws, -1)
  sd = np.sqrt(np.diag(fit.cov[1]))
  # Means within 4 standard errors; covariances within 5 (their s.e. <= sqrt(2 / n) sd_i sd_j).
  assert np.all(np.abs(samples.mean(0) - fit.mean[1]) <= 4 * sd / np.sqrt(draws))
  np.testing.assert_array_less(
    np.abs(np.cov(samples.T) - fit.cov[1]), 5 * np.sqrt(2 / draws) * np.outer(sd, sd) + 1e-9
  )
  seeds = fit.seeds(keys(5), jnp.array([0, 1, 2, 0, 1]))
  expected = np.clip(fit.sample_grid(keys(5), jnp.array([0, 1, 2, 0, 1])), 0, 1)
  np.testing.assert_array_equal(seeds, expected.repeat(2, 1).repeat(2, 2))
  restored = generation.ClassGaussians.from_arrays(fit.to_arrays())
  np.testing.assert_array_equal(restored.cov, fit.cov)
  assert restored.image_shape == fit.image_shape and restored.factor == 2


def test_default_grids_are_santurkar_et_al_s():
  assert generation.default_factor(32, 32) == 4  # CIFAR-10: 8 x 8
  assert generation.default_factor(224, 224) == 28  # ImageNet: 8 x 8
  assert generation.default_factor(28, 28) == 4  # MNIST: 7 x 7
  assert generation.default_factor(4, 4) == 1


def test_gradient_through_the_unrolled_pgd_matches_finite_differences():
  """d/dW1 of mean ||x - psi(x; W1)||^2, l2 steps that neither clip nor project."""
  x, c = images(3, low=0.4, high=0.6), jnp.array([0, 1, 2])
  settings = dict(loss="ce", eps=10.0, steps=4, step_size=0.04, keep_best=False)

  def objective(w1, remat=False):
    f = lambda x: mlp(x, w1)  # noqa: E731
    return generation.fixed_point_loss(f, x, c, remat=remat, **settings).mean()

  grad = jax.grad(objective)(W1)
  np.testing.assert_allclose(
    jax.grad(lambda w: objective(w, remat=True))(W1), grad, rtol=1e-4, atol=1e-7
  )
  assert float(jnp.linalg.norm(grad)) > 1e-4
  for seed in range(3):
    v = jax.random.normal(jax.random.key(seed), W1.shape)
    v = v / jnp.linalg.norm(v)
    h = 1e-2
    fd = (objective(W1 + h * v) - objective(W1 - h * v)) / (2 * h)
    np.testing.assert_allclose(
      float(fd), float(jnp.sum(grad * v)), rtol=0.03, atol=0.03 * float(jnp.linalg.norm(grad))
    )


def test_one_fine_tuning_step_lowers_the_fixed_point_loss():
  # Short steps in a ball that does not bind, away from the box: ||x - psi|| < 5 * 0.1
  # measures how much successive steps turn, which the parameters control.
  x = images(8, low=0.3, high=0.7)
  c = jnp.argmax(mlp(x), axis=1)
  settings = dict(eps=10.0, steps=5, step_size=0.1)

  def objective(w1):
    return generation.fixed_point_loss(lambda x: mlp(x, w1), x, c, **settings).mean()

  value, grad = jax.value_and_grad(objective)(W1)
  assert 0 < float(value) < 0.25 - 1e-4
  after = objective(W1 - 0.05 * grad / jnp.linalg.norm(grad))
  assert float(after) < float(value)


@pytest.mark.parametrize(
  "call,message",
  [
    (lambda: generation.class_score(linear, images(1), jnp.array([0]), loss="hinge"), "loss"),
    (lambda: generation.score_fn(linear, m=-1), "m must be"),
    (lambda: generation.score_fn(linear, m=4), "need a noise"),
    (lambda: generation.generate(linear, images(2), jnp.array([0]), eps=1.0, steps=2), "targets"),
    (
      lambda: generation.generate(
        linear, images(2), jnp.array([0, 1]), noise=Gaussian(0.5), m=2, eps=1.0, steps=2
      ),
      "PRNG key per seed",
    ),
    (lambda: generation.generate(linear, images(1), jnp.array([0]), eps=-1, steps=2), "eps"),
    (
      lambda: generation.fit_class_gaussians(_rng.rand(4, 4, 4, 1), np.zeros(4, int), 2),
      "class 1 has 0",
    ),
    (
      lambda: generation.fit_class_gaussians(_rng.rand(4, 6, 6, 1), np.arange(4) % 2, 2, factor=4),
      "must divide",
    ),
  ],
)
def test_bad_input_is_one_line_error(call, message):
  with pytest.raises(InputError, match=message):
    call()


def test_seed_classes_out_of_range_are_refused():
  fit = generation.fit_class_gaussians(_rng.rand(6, 4, 4, 1), np.arange(6) % 2, 2)
  with pytest.raises(InputError, match=r"classes must lie in \[0, 2\)"):
    fit.seeds(keys(1), jnp.array([2]))
