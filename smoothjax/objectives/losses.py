"""Losses of smoothed classifiers: the soft smoothed classifier and training objectives.

The soft smoothed classifier of a base classifier ``f`` under noise ``q`` is
``G(x) = E_{eps ~ q}[softmax(f(x + eps))]``. Its Monte Carlo estimate from ``m``
noise samples, and the cross-entropy of that estimate, are SmoothAdv's objective
(Salman et al. 2019, "Provably Robust Deep Learning via Adversarially Trained
Smoothed Classifiers"). Training regularisers work on the logits of ``m`` noisy
copies of a batch: consistency regularisation (Jeong & Shin 2020, "Consistency
Regularization for Certified Robustness of Smoothed Classifiers") and MACER (Zhai
et al. 2020, "MACER: Attack-free and Scalable Robust Training via Maximizing
Certified Radius").

Conventions: ``x`` is a batch ``(B, ...)`` of inputs in [0, 1]; ``eps`` holds
``m`` noise samples per input, ``(m, B, ...)`` (draw them with
:func:`noise_batch`); noise is added in pixel space and not clipped, as in
certification; logits of noisy copies are ``(m, B, K)``, sample-major, the layout
of ``logits_fn`` applied to ``(x[None] + eps).reshape(m * B, ...)``. Every
function is pure, jittable and differentiable in its array arguments.

Example::

  eps = noise_batch(Gaussian(0.25), key, 8, x.shape)
  loss = smoothed_cross_entropy(logits_fn, x, y, eps).mean()
  logits = logits_fn((x[None] + eps).reshape(-1, *x.shape[1:])).reshape(8, len(x), -1)
  loss, aux = consistency_loss(logits, y, lbd=10.0, eta=0.5)
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from smoothjax.errors import InputError
from smoothjax.noise import Noise
from smoothjax.smoothing import stats

# Floors from the reference implementations, kept so results match theirs.
_ENTROPY_FLOOR = 1e-20  # Jeong & Shin's `entropy` clamps pbar before the log.
_MACER_LOG_OFFSET = 1e-10  # Zhai et al. take log(mean softmax + 1e-10).


def _check_nonneg(name: str, value):
  if isinstance(value, jax.Array):
    return value  # A traced schedule (e.g. a warm-up); checked by its author.
  return stats.check_nonnegative(name, value)


def _check_positive(name: str, value):
  value = _check_nonneg(name, value)
  if not isinstance(value, jax.Array) and value == 0:
    raise InputError(f"{name} must be > 0, got 0")
  return value


def _check_copies(logits, labels, what: str):
  """Checks ``(m, B, K)`` logits and ``(B,)`` labels; returns them as arrays."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 3:
    raise InputError(
      f"{what} takes logits of m noisy copies, shape (m, B, K), got {tuple(logits.shape)}; "
      "reshape the (m * B, K) logits to (m, B, K)"
    )
  if labels.shape != logits.shape[1:2]:
    raise InputError(
      f"labels must have shape ({logits.shape[1]},) to match logits {tuple(logits.shape)}, "
      f"got {tuple(labels.shape)}"
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}")
  return logits, labels


def _check_labels(labels, count: int) -> jax.Array:
  """``labels`` as an array, one per input of a batch of ``count``."""
  labels = jnp.asarray(labels)
  if labels.shape != (count,):
    raise InputError(f"labels must have shape ({count},), one per input, got {tuple(labels.shape)}")
  return labels


def _pick(values, labels):
  """``values[b, labels[b]]`` for ``(B, K)`` values."""
  return jnp.take_along_axis(values, labels[:, None], axis=-1)[:, 0]


def noise_batch(noise: Noise, key: jax.Array, m: int, shape, dtype=jnp.float32) -> jax.Array:
  """Draws ``m`` independent noise samples for an input (or batch) of ``shape``.

  Args:
    noise: the noise distribution, e.g. ``Gaussian(0.25)``.
    key: a typed PRNG key (``jax.random.key``), used once.
    m: number of samples, >= 1.
    shape: shape of what the noise is added to, usually the batch ``x.shape``.
    dtype: floating dtype of the samples.

  Returns:
    ``noise.sample(key, (m, *shape), dtype)``: an array ``(m, *shape)``.

  Example::

    eps = noise_batch(Gaussian(0.5), jax.random.key(0), 4, x.shape)  # (4, *x.shape)
  """
  if not isinstance(noise, Noise):
    raise InputError(f"noise must be a smoothjax.noise.Noise, got {type(noise).__name__}")
  if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
    raise InputError(f"m must be an integer >= 1 (noise samples per input), got {m!r}")
  return noise.sample(key, (int(m), *tuple(shape)), dtype)


def _noisy_log_softmax(logits_fn, x, eps):
  """``log_softmax(f(x + eps))`` for every sample: ``(m, B, K)``, one call of ``logits_fn``."""
  x = jnp.asarray(x)
  eps = jnp.asarray(eps)
  if x.ndim < 1 or eps.ndim != x.ndim + 1 or eps.shape[1:] != x.shape:
    raise InputError(
      f"eps must hold m noise samples of the batch x, shape (m, *{tuple(x.shape)}), "
      f"got {tuple(eps.shape)}; draw it with noise_batch(noise, key, m, x.shape)"
    )
  m, b = eps.shape[:2]
  noisy = (x[None] + eps).reshape(m * b, *x.shape[1:])
  logits = logits_fn(noisy)
  if getattr(logits, "ndim", None) != 2 or logits.shape[0] != m * b:
    got = getattr(logits, "shape", type(logits).__name__)
    raise InputError(f"logits_fn must map a batch of N inputs to (N, K) logits, got {got}")
  return jax.nn.log_softmax(logits.reshape(m, b, -1), axis=-1)


def soft_smoothed_probs(logits_fn, x, eps) -> jax.Array:
  """Monte Carlo estimate of the soft smoothed classifier ``G(x) = E[softmax f(x + eps)]``.

  Salman et al. 2019, "Provably Robust Deep Learning via Adversarially Trained
  Smoothed Classifiers", Section 3: the mean of the base classifier's softmax over
  the given noise samples.

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` base classifier logits; called once, on the
      ``(m * B, ...)`` batch of noisy inputs (sample-major).
    x: inputs ``(B, ...)``.
    eps: noise samples ``(m, B, ...)``.

  Returns:
    ``(B, K)`` probabilities, each row summing to 1.

  Example::

    eps = noise_batch(Gaussian(0.25), key, 64, x.shape)
    probs = soft_smoothed_probs(logits_fn, x, eps)  # (B, K)
  """
  return jnp.mean(jnp.exp(_noisy_log_softmax(logits_fn, x, eps)), axis=0)


def smoothed_log_probs(logits_fn, x, eps) -> jax.Array:
  """``log G(x)``, the log of :func:`soft_smoothed_probs`, computed stably.

  ``logsumexp`` over the ``m`` samples of ``log_softmax`` minus ``log m``: finite
  (with finite gradients) even where every sample's probability of a class
  underflows, where ``log(mean(softmax))`` would give ``-inf``.

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` base classifier logits, called once.
    x: inputs ``(B, ...)``.
    eps: noise samples ``(m, B, ...)``.

  Returns:
    ``(B, K)`` log-probabilities.

  Example::

    log_g = smoothed_log_probs(logits_fn, x, noise_batch(Gaussian(0.25), key, 64, x.shape))
  """
  log_p = _noisy_log_softmax(logits_fn, x, eps)
  return jax.nn.logsumexp(log_p, axis=0) - math.log(log_p.shape[0])


def smoothed_cross_entropy(logits_fn, x, labels, eps) -> jax.Array:
  """Cross-entropy of the soft smoothed classifier, ``-log G(x)_y``, per example.

  SmoothAdv's loss (Salman et al. 2019, "Provably Robust Deep Learning via
  Adversarially Trained Smoothed Classifiers", Eq. 8 with the Monte Carlo
  ``G``). Their code takes ``log(max(G, 1e-20))``; this takes the stable
  :func:`smoothed_log_probs`, which agrees wherever ``G_y > 1e-20`` and keeps a
  gradient below.

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` base classifier logits, called once.
    x: inputs ``(B, ...)``.
    labels: integer classes ``(B,)``.
    eps: noise samples ``(m, B, ...)``.

  Returns:
    ``(B,)`` losses.

  Example::

    eps = noise_batch(Gaussian(0.25), key, 4, x.shape)
    loss = smoothed_cross_entropy(logits_fn, x, y, eps).mean()
  """
  log_g = smoothed_log_probs(logits_fn, x, eps)
  return -_pick(log_g, _check_labels(labels, log_g.shape[0]))


def mean_log_prob(logits_fn, x, labels, eps) -> jax.Array:
  """Monte Carlo mean of the base classifier's log-probability of ``labels`` under noise.

  ``E[log softmax(f(x + eps))_y]``, per example: the smoothed cross-entropy of
  generation by a smoothed classifier (the expectation of the log, a lower bound
  on :func:`smoothed_log_probs`'s ``log E[softmax(f(x + eps))_y]`` by Jensen's
  inequality; both are ascended to draw a class).

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` base classifier logits, called once.
    x: inputs ``(B, ...)``.
    labels: integer classes ``(B,)``.
    eps: noise samples ``(m, B, ...)``.

  Returns:
    ``(B,)`` mean log-probabilities (<= 0).

  Example::

    score = mean_log_prob(logits_fn, x, target, noise_batch(Gaussian(0.5), key, 16, x.shape))
  """
  log_p = _noisy_log_softmax(logits_fn, x, eps)
  labels = _check_labels(labels, log_p.shape[1])
  return jnp.mean(jnp.take_along_axis(log_p, labels[None, :, None], axis=-1)[..., 0], axis=0)


def smoothed_target_logit(logits_fn, x, labels, eps) -> jax.Array:
  """Monte Carlo mean of the logit of class ``labels``, ``E[f(x + eps)_y]``, per example.

  Target class maximisation (TCM): the generation objective that ascends a class's
  expected logit under noise rather than its smoothed log-probability.

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` base classifier logits, called once.
    x: inputs ``(B, ...)``.
    labels: integer classes ``(B,)``.
    eps: noise samples ``(m, B, ...)``.

  Returns:
    ``(B,)`` mean logits.

  Example::

    score = smoothed_target_logit(logits_fn, x, target, eps)  # ascend it to generate
  """
  x = jnp.asarray(x)
  eps = jnp.asarray(eps)
  if x.ndim < 1 or eps.ndim != x.ndim + 1 or eps.shape[1:] != x.shape:
    raise InputError(
      f"eps must hold m noise samples of the batch x, shape (m, *{tuple(x.shape)}), "
      f"got {tuple(eps.shape)}; draw it with noise_batch(noise, key, m, x.shape)"
    )
  labels = _check_labels(labels, x.shape[0])
  m, b = eps.shape[:2]
  logits = logits_fn((x[None] + eps).reshape(m * b, *x.shape[1:])).reshape(m, b, -1)
  return _pick(jnp.mean(logits, axis=0), labels)


def consistency_loss(logits, labels, *, lbd: float, eta: float):
  """Cross-entropy plus consistency regularisation over ``m`` noisy copies.

  Jeong & Shin 2020, "Consistency Regularization for Certified Robustness of
  Smoothed Classifiers", Eq. 8, as in their code (``consistency.py``, loss
  ``'default'``, with the cross-entropy of ``train_consistency.py``)::

    pbar = mean_j softmax(logits_j)
    loss = mean_{j,b} CE(logits_j[b], y_b)
         + lbd * mean_b mean_j KL(pbar_b || softmax(logits_j[b]))
         + eta * mean_b H(pbar_b)

  with their entropy ``H(p) = -sum p log(max(p, 1e-20))``. Terms of classes with
  ``pbar = 0`` count 0 in the KL, as in PyTorch's ``kl_div``; ``log pbar`` is
  taken by ``logsumexp`` so that the gradient stays finite there.

  Args:
    logits: ``(m, B, K)`` logits of ``m`` noisy copies of a batch, sample-major.
    labels: integer classes ``(B,)``.
    lbd: weight of the KL (consistency) term, >= 0.
    eta: weight of the entropy term, >= 0.

  Returns:
    ``(loss, aux)``: the scalar loss and a dict of the unweighted scalar terms
    ``{"cross_entropy", "kl", "entropy"}``.

  Example::

    logits = logits_fn((x[None] + eps).reshape(-1, *x.shape[1:])).reshape(2, len(x), -1)
    loss, aux = consistency_loss(logits, y, lbd=10.0, eta=0.5)
  """
  lbd = _check_nonneg("lbd", lbd)
  eta = _check_nonneg("eta", eta)
  logits, labels = _check_copies(logits, labels, "consistency_loss")
  m = logits.shape[0]
  log_p = jax.nn.log_softmax(logits, axis=-1)
  cross_entropy = -jnp.mean(jnp.take_along_axis(log_p, labels[None, :, None], axis=-1))
  log_pbar = jax.nn.logsumexp(log_p, axis=0) - math.log(m)
  pbar = jnp.exp(log_pbar)
  # KL(pbar || p_j) for every copy j and example b, then mean over j and b.
  kl = jnp.mean(jnp.sum(pbar[None] * (log_pbar[None] - log_p), axis=-1))
  entropy = jnp.mean(-jnp.sum(pbar * jnp.log(jnp.maximum(pbar, _ENTROPY_FLOOR)), axis=-1))
  loss = cross_entropy + lbd * kl + eta * entropy
  return loss, {"cross_entropy": cross_entropy, "kl": kl, "entropy": entropy}


def macer_loss(logits, labels, *, sigma: float, beta: float, gamma: float, lbd: float):
  """MACER's objective: smoothed classification loss plus a certified-radius hinge.

  Zhai et al. 2020, "MACER: Attack-free and Scalable Robust Training via
  Maximizing Certified Radius", Algorithm 1, as in their code (``macer.py``,
  ``macer_train``). With ``m`` noisy copies of a batch of ``B`` examples:

  * classification: ``-log(mean_j softmax(z_j)_y + 1e-10)``;
  * robustness, for examples whose top class of ``mean_j softmax(beta * z_j)`` is
    ``y``: with ``p1 >= p2`` the top two of those probabilities and
    ``margin = Phi^-1(p1) - Phi^-1(p2)``, the hinge ``gamma - margin`` over the
    examples where ``margin`` is finite and ``|margin| <= gamma``, times
    ``sigma / 2`` (the hinge on the certified radius ``sigma / 2 * margin``);
  * ``loss = (sum_b classification + lbd * sum_b robustness) / B``.

  Examples outside the hinge (wrong top class, infinite or NaN margin, margin
  above ``gamma``) contribute 0 to the robustness loss and no gradient; masks
  replace the reference's boolean indexing so the function jits, and the inputs
  of ``Phi^-1`` are replaced there so that the gradient stays finite.

  Args:
    logits: ``(m, B, K)`` logits of ``m`` Gaussian-noise copies, sample-major.
    labels: integer classes ``(B,)``.
    sigma: the Gaussian noise's standard deviation, > 0.
    beta: inverse temperature of the robustness term's softmax, > 0.
    gamma: hinge threshold on the margin, >= 0.
    lbd: weight of the robustness loss, >= 0.

  Returns:
    ``(loss, aux)``: the scalar loss and the per-example means of its two terms,
    ``{"cross_entropy", "robustness"}`` (``robustness`` unweighted by ``lbd``).

  Example::

    logits = logits_fn((x[None] + eps).reshape(-1, *x.shape[1:])).reshape(16, len(x), -1)
    loss, aux = macer_loss(logits, y, sigma=0.25, beta=16.0, gamma=8.0, lbd=12.0)
  """
  sigma = _check_positive("sigma", sigma)
  beta = _check_positive("beta", beta)
  gamma = _check_nonneg("gamma", gamma)
  lbd = _check_nonneg("lbd", lbd)
  logits, labels = _check_copies(logits, labels, "macer_loss")
  batch = logits.shape[1]

  probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
  classification = -jnp.log(_pick(probs, labels) + _MACER_LOG_OFFSET)

  beta_probs = jnp.mean(jax.nn.softmax(beta * logits, axis=-1), axis=0)
  top2, top2_idx = jax.lax.top_k(beta_probs, 2)
  p1, p2 = top2[:, 0], top2[:, 1]
  ndtri = jax.scipy.special.ndtri
  margin = ndtri(p1) - ndtri(p2)
  # The mask carries no gradient; where it is off, Phi^-1 sees harmless values so
  # that neither its value nor its derivative is infinite (the double-where trick).
  active = (top2_idx[:, 0] == labels) & jnp.isfinite(margin) & (jnp.abs(margin) <= gamma)
  safe_margin = ndtri(jnp.where(active, p1, 0.75)) - ndtri(jnp.where(active, p2, 0.25))
  robustness = jnp.where(active, gamma - safe_margin, 0.0) * (sigma / 2)

  cl_sum = jnp.sum(classification)
  rl_sum = jnp.sum(robustness)
  loss = (cl_sum + lbd * rl_sum) / batch
  return loss, {"cross_entropy": cl_sum / batch, "robustness": rl_sum / batch}
