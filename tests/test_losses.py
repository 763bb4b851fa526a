"""Tests for the soft smoothed classifier and the smoothed training losses.

The reference for the soft smoothed classifier is a linear two-class model
with logits ``(0, w.x + b)`` under ``N(0, sigma^2 I)`` noise: its class-1
probability ``sigmoid(w.(x + eps) + b)`` depends on the noise only through
``u = w.x + b + sigma ||w|| z``, ``z ~ N(0, 1)``, so ``G(x)_1`` and its gradient
are one-dimensional Gaussian integrals, computed here by Gauss-Hermite
quadrature. Consistency and MACER are checked against NumPy transcriptions of
their reference PyTorch code and against values worked out by hand.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from smoothjax.errors import InputError
from smoothjax.noise import Gaussian
from smoothjax.objectives import losses

SIGMA = 0.5
SHAPE = (2, 2, 1)
W = np.array([0.8, -0.5, 0.3, 0.6])
B = -0.2


def linear_logits(x):
  z = x.reshape(x.shape[0], -1) @ jnp.asarray(W, x.dtype) + B
  return jnp.stack([jnp.zeros_like(z), z], axis=-1)


def expect_normal(f):
  """``E[f(Z)]``, ``Z ~ N(0, 1)``, by 100-point Gauss-Hermite quadrature."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(100)
  return np.sum(weights * f(nodes), axis=-1) / math.sqrt(2 * math.pi)


def sigmoid(u):
  return scipy.special.expit(u)


def test_noise_batch_draws_m_samples_of_the_shape():
  noise = Gaussian(0.25)
  eps = losses.noise_batch(noise, jax.random.key(3), 5, (2, 3))
  assert eps.shape == (5, 2, 3) and eps.dtype == jnp.float32
  np.testing.assert_array_equal(eps, noise.sample(jax.random.key(3), (5, 2, 3)))
  assert len(np.unique(np.asarray(eps))) == eps.size  # independent, not repeated


@pytest.mark.parametrize("m", [0, -1, 2.0, True])
def test_noise_batch_rejects_bad_m(m):
  with pytest.raises(InputError, match="m must be an integer >= 1"):
    losses.noise_batch(Gaussian(0.25), jax.random.key(0), m, (2,))


def test_soft_smoothed_probs_is_the_mean_softmax_of_one_sample_major_call():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(3, *SHAPE), jnp.float32)
  eps = losses.noise_batch(Gaussian(SIGMA), jax.random.key(0), 4, x.shape)
  mat = jnp.asarray(rng.randn(4, 3), jnp.float32)
  calls = []

  def logits_fn(batch):
    calls.append(batch.shape)
    return jnp.tanh(batch.reshape(batch.shape[0], -1)) @ mat

  probs = jax.jit(losses.soft_smoothed_probs, static_argnums=0)(logits_fn, x, eps)
  assert calls == [(12, *SHAPE)]
  expected = np.mean([jax.nn.softmax(logits_fn(x + eps[j])) for j in range(4)], axis=0)
  np.testing.assert_allclose(probs, expected, rtol=1e-6)
  np.testing.assert_allclose(
    losses.smoothed_log_probs(logits_fn, x, eps), np.log(expected), rtol=1e-5
  )


def test_smoothed_log_probs_stays_finite_where_the_probabilities_underflow():
  def logits_fn(batch):
    s = jnp.sum(batch.reshape(batch.shape[0], -1), axis=1)
    return jnp.stack([jnp.zeros_like(s), s - 1000.0], axis=-1)

  x = jnp.full((2, *SHAPE), 0.5)
  eps = losses.noise_batch(Gaussian(0.1), jax.random.key(1), 8, x.shape)
  assert np.all(losses.soft_smoothed_probs(logits_fn, x, eps)[:, 1] == 0)  # float32 underflow
  log_g = losses.smoothed_log_probs(logits_fn, x, eps)
  sums = np.sum(np.asarray(x[None] + eps).reshape(8, 2, -1), axis=-1)
  expected = scipy.special.logsumexp(sums - 1000.0, axis=0) - np.log(8)
  np.testing.assert_allclose(log_g[:, 1], expected, rtol=1e-6)
  grad = jax.jit(
    jax.grad(lambda x: losses.smoothed_cross_entropy(logits_fn, x, jnp.array([1, 1]), eps).sum())
  )(x)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) < 0)  # raising x raises class 1


def test_smoothed_target_logit_is_the_mean_logit():
  x = jnp.asarray(np.random.RandomState(1).rand(3, *SHAPE), jnp.float32)
  eps = losses.noise_batch(Gaussian(SIGMA), jax.random.key(2), 6, x.shape)
  labels = jnp.array([1, 0, 1])
  got = losses.smoothed_target_logit(linear_logits, x, labels, eps)
  z = np.asarray(x[None] + eps).reshape(6, 3, -1) @ W + B
  np.testing.assert_allclose(got, np.where(labels == 1, z.mean(0), 0.0), rtol=1e-5, atol=1e-6)


def test_smoothed_cross_entropy_converges_to_the_gaussian_integral():
  """MC value of G and gradient of -log G_y are within 4 standard errors at every m."""
  x_np = np.array([0.2, 0.5, 0.9])[:, None] * np.ones(4)  # margins around the boundary
  x_np = x_np + np.array([0.1, -0.05, 0.0, 0.02])
  x = jnp.asarray(x_np.reshape(3, *SHAPE), jnp.float32)
  labels = np.array([1, 0, 1])
  a = x_np @ W + B
  s = SIGMA * np.linalg.norm(W)
  u = lambda z: a[:, None] + s * z  # noqa: E731
  g1 = expect_normal(lambda z: sigmoid(u(z)))
  dg1 = expect_normal(lambda z: sigmoid(u(z)) * sigmoid(-u(z)))  # dG1/d(w.x)
  assert np.all((g1 > 0.1) & (g1 < 0.9))
  g_y = np.where(labels == 1, g1, 1 - g1)
  # d(-log G_y)/dx = coef * w
  coef = np.where(labels == 1, -1.0, 1.0) * dg1 / g_y

  @jax.jit
  def estimates(x, eps):
    def loss_sum(x):
      return losses.smoothed_cross_entropy(linear_logits, x, jnp.asarray(labels), eps).sum()

    return losses.soft_smoothed_probs(linear_logits, x, eps)[:, 1], jax.grad(loss_sum)(x)

  keys = jax.random.split(jax.random.key(7), 3)
  errors, ses = [], []
  for key, m in zip(keys, [10**3, 10**4, 10**5], strict=True):
    eps = losses.noise_batch(Gaussian(SIGMA), key, m, x.shape)
    g_hat, grad = estimates(x, eps)
    g_hat, grad = np.asarray(g_hat), np.asarray(grad).reshape(3, -1)
    coef_hat = grad @ W / (W @ W)
    np.testing.assert_allclose(grad, coef_hat[:, None] * W, atol=1e-6)  # along w

    # Standard errors from the same samples (delta method for the ratio).
    un = a[None] + np.asarray(eps, np.float64).reshape(m, 3, -1) @ W
    p1, dp = sigmoid(un), sigmoid(un) * sigmoid(-un)
    se_g = p1.std(0) / math.sqrt(m)
    py = np.where(labels == 1, p1, 1 - p1)
    ratio = dp.mean(0) / py.mean(0)
    se_coef = (dp - ratio * py).std(0) / (math.sqrt(m) * py.mean(0))
    assert np.all(np.abs(g_hat - g1) <= 4 * se_g + 1e-6), (m, g_hat, g1, se_g)
    assert np.all(np.abs(coef_hat - coef) <= 4 * se_coef + 1e-6), (m, coef_hat, coef, se_coef)
    errors.append(np.abs(coef_hat - coef).max())
    ses.append(se_coef.max())
  # The standard error shrinks like 1/sqrt(m), so the largest m is within 0.01 of G.
  assert ses[2] < ses[0] / 5 and errors[2] < 0.01


def test_smoothed_losses_reject_mismatched_noise():
  x = jnp.zeros((3, *SHAPE))
  with pytest.raises(InputError, match="eps must hold m noise samples"):
    losses.smoothed_cross_entropy(linear_logits, x, jnp.zeros(3, int), jnp.zeros((4, 2, *SHAPE)))


# --------------------------------------------------------------------------
# Consistency regularisation (Jeong & Shin 2020).


def log_softmax_np(z):
  return z - scipy.special.logsumexp(z, axis=-1, keepdims=True)


def consistency_reference(logits, labels, lbd, eta):
  """NumPy transcription of their ``consistency_loss`` plus the mean cross-entropy."""
  m, batch, _ = logits.shape
  logp = log_softmax_np(np.asarray(logits, np.float64))
  ce = -np.mean([logp[j, b, labels[b]] for j in range(m) for b in range(batch)])
  pbar = np.exp(logp).mean(0)
  kl = (
    sum((scipy.special.xlogy(pbar, pbar) - pbar * logp[j]).sum(1) for j in range(m)) / m
  )  # F.kl_div(log_softmax(logit_j), pbar).sum(1), averaged over j
  ent = (-pbar * np.log(np.clip(pbar, 1e-20, None))).sum(1)
  return ce + (lbd * kl + eta * ent).mean(), ce, kl.mean(), ent.mean()


def test_consistency_loss_matches_the_reference_code():
  rng = np.random.RandomState(0)
  logits = 3 * rng.randn(4, 6, 5).astype(np.float32)
  labels = rng.randint(0, 5, 6)
  loss, aux = jax.jit(lambda z, y: losses.consistency_loss(z, y, lbd=10.0, eta=0.5))(logits, labels)
  want, ce, kl, ent = consistency_reference(logits, labels, 10.0, 0.5)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(aux["cross_entropy"], ce, rtol=1e-5)
  np.testing.assert_allclose(aux["kl"], kl, rtol=1e-4)
  np.testing.assert_allclose(aux["entropy"], ent, rtol=1e-5)


def test_consistency_loss_by_hand():
  # Two copies predicting (0.9, 0.1) and (0.1, 0.9): pbar = (1/2, 1/2).
  logits = np.log(np.array([[[0.9, 0.1]], [[0.1, 0.9]]], np.float32))
  consistency = jax.jit(losses.consistency_loss, static_argnames=("lbd", "eta"))
  loss, aux = consistency(logits, np.array([0]), lbd=2.0, eta=0.5)
  ce = -(math.log(0.9) + math.log(0.1)) / 2
  kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # the same for both copies
  ent = math.log(2)
  np.testing.assert_allclose(aux["cross_entropy"], ce, rtol=1e-6)
  np.testing.assert_allclose(aux["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(aux["entropy"], ent, rtol=1e-6)
  np.testing.assert_allclose(loss, ce + 2.0 * kl + 0.5 * ent, rtol=1e-6)
  # Identical copies are perfectly consistent.
  _, aux = consistency(np.zeros((3, 2, 4)), np.array([0, 3]), lbd=1.0, eta=1.0)
  assert float(aux["kl"]) == pytest.approx(0.0, abs=1e-7)
  np.testing.assert_allclose(aux["entropy"], math.log(4), rtol=1e-6)


def test_consistency_loss_gradient_is_finite_where_pbar_underflows():
  logits = jnp.array([[[0.0, 1.0, -1e4]], [[2.0, 0.0, -1e4]]])
  grad = jax.jit(
    jax.grad(lambda z: losses.consistency_loss(z, jnp.array([0]), lbd=10.0, eta=0.5)[0])
  )(logits)
  assert np.all(np.isfinite(grad))


# --------------------------------------------------------------------------
# MACER (Zhai et al. 2020).


def macer_reference(logits, labels, sigma, beta, gamma, lbd):
  """NumPy transcription of their ``macer_train`` loss for one batch, (m, B, K) layout."""
  logits = np.asarray(logits, np.float64)
  batch = logits.shape[1]
  probs = np.exp(log_softmax_np(logits)).mean(0)
  cl = -np.log(probs[np.arange(batch), labels] + 1e-10).sum()
  beta_probs = np.exp(log_softmax_np(beta * logits)).mean(0)
  order = np.argsort(-beta_probs, axis=1, kind="stable")[:, :2]
  top2 = np.take_along_axis(beta_probs, order, axis=1)
  correct = order[:, 0] == labels
  out0, out1 = top2[correct, 0], top2[correct, 1]
  with np.errstate(invalid="ignore"):
    rl = scipy.stats.norm.ppf(out1) - scipy.stats.norm.ppf(out0)
    keep = ~np.isnan(rl) & ~np.isinf(rl) & (np.abs(rl) <= gamma)
  out0, out1 = out0[keep], out1[keep]
  rl = (scipy.stats.norm.ppf(out1) - scipy.stats.norm.ppf(out0) + gamma).sum() * sigma / 2
  return (cl + lbd * rl) / batch, cl / batch, rl / batch, int(keep.sum()), int(correct.sum())


def test_macer_loss_matches_the_reference_code():
  rng = np.random.RandomState(1)
  logits = rng.randn(6, 16, 4).astype(np.float32)
  labels = np.argmax(logits.mean(0), axis=1)
  labels[:3] = (labels[:3] + 1) % 4  # some examples misclassified
  kw = dict(sigma=0.25, beta=4.0, gamma=0.5, lbd=3.0)
  loss, aux = jax.jit(lambda z, y: losses.macer_loss(z, y, **kw))(logits, labels)
  want, cl, rl, in_hinge, correct = macer_reference(logits, labels, **kw)
  assert 0 < in_hinge < correct < 16  # every branch of the mask is exercised
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(aux["cross_entropy"], cl, rtol=1e-5)
  np.testing.assert_allclose(aux["robustness"], rl, rtol=1e-4)


def test_macer_loss_by_hand():
  # One copy, beta = 1: the smoothed probabilities are the rows themselves.
  p = np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.4, 0.5, 0.1]])
  labels = np.array([0, 0, 0])
  sigma, gamma, lbd = 0.5, 1.0, 2.0
  loss, aux = jax.jit(
    lambda z: losses.macer_loss(z, labels, sigma=sigma, beta=1.0, gamma=gamma, lbd=lbd)
  )(np.log(p)[None].astype(np.float32))
  ppf = scipy.stats.norm.ppf
  # Row 0: margin ppf(.5) - ppf(.4) = 0.2533 <= gamma is in the hinge; row 1: margin
  # 2.93 > gamma is not; row 2: the top class is not the label.
  hinge = (gamma - (ppf(0.5) - ppf(0.4))) * sigma / 2
  cl = -np.log(p[:, 0] + 1e-10)
  np.testing.assert_allclose(aux["cross_entropy"], cl.mean(), rtol=1e-6)
  np.testing.assert_allclose(aux["robustness"], hinge / 3, rtol=1e-5)
  np.testing.assert_allclose(loss, (cl.sum() + lbd * hinge) / 3, rtol=1e-6)

  # Rows 1 and 2 get no robustness gradient: only the classification term's.
  def parts(z):
    return losses.macer_loss(z, labels, sigma=sigma, beta=1.0, gamma=gamma, lbd=lbd)[0]

  def classification_only(z):
    return losses.macer_loss(z, labels, sigma=sigma, beta=1.0, gamma=gamma, lbd=0.0)[0]

  z = jnp.asarray(np.log(p)[None], jnp.float32)
  full, cls = jax.jit(jax.grad(parts))(z), jax.jit(jax.grad(classification_only))(z)
  np.testing.assert_allclose(full[:, 1:], cls[:, 1:], atol=1e-7)
  assert np.abs(full[:, 0] - cls[:, 0]).max() > 1e-3


def test_macer_loss_gradient_is_finite_when_p2_is_zero():
  # Example 0: beta * logits = +-800, so the beta-softmax is exactly (1, 0): margin inf.
  logits = jnp.array([[[50.0, -50.0], [0.3, -0.2]], [[50.0, -50.0], [0.1, 0.2]]])
  labels = jnp.array([0, 0])
  kw = dict(sigma=0.5, beta=16.0, gamma=8.0, lbd=4.0)

  def loss(z, y):
    return losses.macer_loss(z, y, **kw)[0]

  value, grad = jax.jit(jax.value_and_grad(loss))(logits, labels)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  # Example 1 alone (B = 1) has twice its share of the B = 2 loss's gradient.
  alone = jax.jit(jax.grad(loss))(logits[:, 1:], labels[1:])
  np.testing.assert_allclose(grad[:, 1:], alone / 2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda z, y: losses.consistency_loss(z, y, lbd=-1.0, eta=0.5), "lbd must be"),
    (lambda z, y: losses.consistency_loss(z[0], y, lbd=1.0, eta=0.5), r"shape \(m, B, K\)"),
    (lambda z, y: losses.macer_loss(z, y, sigma=0.0, beta=1.0, gamma=1.0, lbd=1.0), "sigma"),
    (lambda z, y: losses.macer_loss(z, y[:1], sigma=1.0, beta=1.0, gamma=1.0, lbd=1.0), "labels"),
  ],
)
def test_losses_reject_bad_settings(call, message):
  with pytest.raises(InputError, match=message):
    call(jnp.zeros((2, 3, 4)), jnp.zeros(3, jnp.int32))
