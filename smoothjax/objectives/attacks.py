"""Adversarial attacks as transforms of a loss function: FGSM, PGD and SmoothAdv.

In the spirit of ``jax.grad``: :func:`fgsm` and :func:`pgd` take a per-example
loss ``loss_fn(x, y) -> (B,)`` and return ``attack(key, x, y) -> x_adv``, a pure
function that is jittable and batched over the leading axis. Untargeted attacks
raise the loss of the labels ``y``; targeted attacks take target classes as ``y``
and lower the loss. :func:`smoothadv` attacks the soft smoothed classifier
(Salman et al. 2019) with noise samples the caller provides.

Every iterate stays in the ``eps`` ball around the clean ``x`` (per example, in
the l1, l2 or linf norm) and in [0, 1]: after each step the point is clipped to
[0, 1] and its perturbation then projected onto the ball, as in Salman et al.'s
``PGD_L2`` (the projection scales, clips or soft-thresholds the perturbation
towards ``x``, so it keeps the point in [0, 1]; a last clip removes float
rounding).

The l1 attacks follow Yang et al. 2020, "Randomized Smoothing of All Shapes and
Sizes" (their code, ``rs4a``, ``src/attacks.py``): a step moves, by the same
amount, only the coordinates of largest ``|grad|`` (about 1/16 of them) along
the sign of the gradient, and the perturbation is projected onto the l1 ball
with the sort-based algorithm of Duchi et al. 2008.

The settings are checked when the attack is built, so a bad one fails before any
tracing. The returned functions are not jitted themselves: wrap them in
``jax.jit`` or call them inside a jitted step. ``eps`` and ``step_size`` may be
traced arrays (e.g. an ``eps`` warm-up inside a jitted train step); they are then
not checked.

Example::

  def loss_fn(x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), y)

  attack = jax.jit(pgd(loss_fn, eps=8 / 255, norm="linf", steps=10))
  x_adv = attack(jax.random.key(0), x, y)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from smoothjax.errors import InputError
from smoothjax.objectives import losses

NORMS = ("l1", "l2", "linf")

# The l1 step keeps the coordinates whose |grad| is at least the k-th smallest of the
# example's d values, k = floor(d * 15 / 16) (at least 1), as Yang et al. 2020's rs4a
# (``src/attacks.py``: ``torch.kthvalue(grads.abs(), k=grads.shape[1] * 15 // 16)``, then
# ``grads[grads.abs() < keep_vals] = 0``): d - k + 1 coordinates (about d / 16 + 1)
# without ties. (The exact steepest ascent direction in l1 would move only the largest.)
L1_QUANTILE = 15 / 16

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------
# Settings checks (at build time).


def _is_traced(value) -> bool:
  return isinstance(value, jax.core.Tracer)


def _check_norm(norm) -> str:
  if norm not in NORMS:
    raise InputError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
  return norm


def _check_radius(name: str, value):
  if _is_traced(value):
    return value
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = math.nan
  if isinstance(value, bool) or not math.isfinite(number) or number < 0:
    raise InputError(f"{name} must be a finite number >= 0, got {value!r}; e.g. {name}=0.5")
  return number


def _check_step_size(step_size):
  if step_size is None or _is_traced(step_size):
    return step_size
  number = _check_radius("step_size", step_size)
  if number == 0:
    raise InputError("step_size must be > 0, got 0; leave it unset for the default")
  return number


def _check_int(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


# --------------------------------------------------------------------------
# Per-example geometry.


def _expand(v, like):
  """``(B,)`` values reshaped to ``(B, 1, ..., 1)`` to broadcast against ``like``."""
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _l2_norms(v):
  """Per-example l2 norms ``(B,)``, with a finite gradient at 0."""
  sq = jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _l1_kept(dim: int) -> int:
  """How many of ``dim`` coordinates an l1 step moves (without ties): ``d - k + 1``."""
  return dim - max(1, math.floor(dim * L1_QUANTILE)) + 1


def _unit_step(grad, norm: str):
  """The steepest ascent direction of unit ``norm`` per example (0 where grad is 0).

  In l1, the sparse direction of Yang et al. 2020 (see :data:`L1_QUANTILE`): the
  signs of the coordinates of largest ``|grad|``, each ``1 / (their number)``.
  """
  if norm == "linf":
    return jnp.sign(grad)
  if norm == "l1":
    flat = grad.reshape(grad.shape[0], -1)
    magnitude = jnp.abs(flat)
    # The k-th smallest |grad| is the (d - k + 1)-th largest.
    threshold = jax.lax.top_k(magnitude, _l1_kept(flat.shape[1]))[0][:, -1:]
    signs = jnp.where(magnitude >= threshold, jnp.sign(flat), 0.0)
    count = jnp.sum(jnp.abs(signs), axis=1, keepdims=True, dtype=jnp.float32)
    scale = jnp.where(count > 0, 1.0 / jnp.maximum(count, 1.0), 0.0)
    return (signs * scale.astype(grad.dtype)).reshape(grad.shape)
  n = _l2_norms(grad)
  scale = jnp.where(n > 0, 1.0 / jnp.where(n > 0, n, 1.0), 0.0)
  return grad * _expand(scale, grad).astype(grad.dtype)


def _project_l1(delta, eps):
  """Euclidean projection of each example of ``delta`` onto the l1 ball of radius ``eps``.

  Duchi, Shalev-Shwartz, Singer & Chandra 2008, "Efficient Projections onto the
  l1-Ball for Learning in High Dimensions", Figure 1: with ``mu`` the sorted
  ``|delta|`` (decreasing), ``rho`` the largest ``j`` with ``mu_j > (mu_1 + ... +
  mu_j - eps) / j`` and ``theta = (mu_1 + ... + mu_rho - eps) / rho``, the
  projection soft-thresholds every coordinate by ``theta``. Points inside the ball
  are returned unchanged. ``eps`` may be traced, and 0 (then no ``j`` qualifies,
  ``rho = 1`` gives ``theta = mu_1`` and the projection is 0).
  """
  flat = delta.reshape(delta.shape[0], -1)
  # At least float32: the ranks j below must be exact.
  magnitude = jnp.abs(flat).astype(jnp.promote_types(flat.dtype, jnp.float32))
  eps = jnp.asarray(eps, magnitude.dtype)
  mu = -jnp.sort(-magnitude, axis=1)
  cumsum = jnp.cumsum(mu, axis=1)
  j = jnp.arange(1, flat.shape[1] + 1, dtype=magnitude.dtype)
  rho = jnp.max(jnp.where(mu * j > cumsum - eps, j, 1.0), axis=1, keepdims=True)
  theta = (jnp.take_along_axis(cumsum, rho.astype(jnp.int32) - 1, axis=1) - eps) / rho
  projected = jnp.sign(flat) * jnp.maximum(magnitude - theta, 0.0).astype(flat.dtype)
  inside = jnp.sum(magnitude, axis=1, keepdims=True) <= eps
  return jnp.where(inside, flat, projected).reshape(delta.shape)


def _project(x_adv, x, eps, norm: str):
  """Clips ``x_adv`` to [0, 1], then projects ``x_adv - x`` onto the ``eps`` ball."""
  delta = jnp.clip(x_adv, 0.0, 1.0) - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  elif norm == "l1":
    delta = _project_l1(delta, eps)
  else:
    n = _l2_norms(delta)
    scale = jnp.where(n > eps, eps / jnp.where(n > eps, n, 1.0), 1.0)
    delta = delta * _expand(scale, delta).astype(delta.dtype)
  return jnp.clip(x + delta, 0.0, 1.0)


def _random_delta(key, shape, dtype, norm: str):
  """Per example of ``shape`` ``(B, ...)``, a uniform point of the unit ``norm`` ball."""
  if norm == "linf":
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0)
  key_direction, key_radius = jax.random.split(key)
  if norm == "l1":
    # E_1, ..., E_{d+1} i.i.d. exponential: (E_1, ..., E_d) / (E_1 + ... + E_{d+1}) is
    # uniform in the simplex {y >= 0, sum(y) <= 1}; random signs (Laplace draws are
    # signed exponentials) spread it over the l1 ball.
    signed = jax.random.laplace(key_direction, shape, dtype)
    extra = jax.random.exponential(key_radius, shape[:1], dtype)
    total = jnp.sum(jnp.abs(signed.reshape(shape[0], -1)), axis=1) + extra
    return signed / _expand(total, signed)
  direction = _unit_step(jax.random.normal(key_direction, shape, dtype), "l2")
  dim = math.prod(shape[1:])
  radius = jax.random.uniform(key_radius, shape[:1], dtype) ** (1.0 / dim)
  return direction * _expand(radius, direction)


def _random_start(key, x, eps, norm: str):
  """A uniform point of the ``eps`` ball around ``x``, clipped to [0, 1]."""
  delta = _random_delta(key, x.shape, x.dtype, norm) * eps
  return _project(x + delta, x, eps, norm)


# --------------------------------------------------------------------------
# The attacks.


def _check_call(x, y):
  x = jnp.asarray(x)
  if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(
      f"x must be a float batch (B, ...) with values in [0, 1], got {x.dtype} {tuple(x.shape)}"
    )
  y = jnp.asarray(y)
  if y.shape[:1] != x.shape[:1]:
    raise InputError(f"y must have one label per input, {x.shape[0]}, got shape {tuple(y.shape)}")
  return x, y


def _value_and_grad(loss_fn: LossFn, x, y):
  """Per-example losses ``(B,)`` and their gradients in ``x``."""

  def total(x):
    values = loss_fn(x, y)
    if getattr(values, "shape", None) != x.shape[:1]:
      got = getattr(values, "shape", type(values).__name__)
      raise InputError(
        f"loss_fn must return one loss per example, shape ({x.shape[0]},), got {got}; "
        "do not average over the batch"
      )
    return jnp.sum(values), values

  grad, values = jax.grad(total, has_aux=True)(x)
  return values, grad


def fgsm(loss_fn: LossFn, *, eps, norm: str = "linf", targeted: bool = False):
  """Fast gradient (sign) method: one step of length ``eps`` along the gradient.

  Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial
  Examples": ``x + eps * sign(grad)`` in linf; in l2 the step is the gradient
  normalised per example to length ``eps`` (no step where it is 0); in l1 it is
  Yang et al. 2020's sparse step: ``eps`` shared equally, along the sign of the
  gradient, by the coordinates of largest ``|grad|`` (about 1/16 of them, see
  :data:`L1_QUANTILE`). The result is clipped to [0, 1].

  Args:
    loss_fn: ``(x, y) -> (B,)`` per-example loss, differentiable in ``x``.
    eps: radius of the attack, >= 0.
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    targeted: if True, ``y`` are target classes and the loss is lowered.

  Returns:
    ``attack(key, x, y) -> x_adv``; ``key`` is unused and may be None.

  Example::

    x_adv = fgsm(loss_fn, eps=8 / 255)(None, x, y)
  """
  norm = _check_norm(norm)
  eps = _check_radius("eps", eps)
  sign = -1.0 if targeted else 1.0

  def attack(key, x, y):
    del key  # deterministic
    x, y = _check_call(x, y)
    if not _is_traced(eps) and eps == 0:
      return x
    _, grad = _value_and_grad(loss_fn, x, y)
    return _project(x + (sign * eps) * _unit_step(grad, norm), x, eps, norm)

  return attack


def pgd(
  loss_fn: LossFn,
  *,
  eps,
  norm: str = "linf",
  steps: int,
  step_size=None,
  random_start: bool = True,
  restarts: int = 1,
  targeted: bool = False,
  keep_best: bool = True,
  keyed_loss: bool = False,
  remat: bool = False,
):
  """Projected gradient descent (ascent) on ``loss_fn`` within an ``eps`` ball.

  Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
  Attacks": from a random point of the ball, ``steps`` steps of ``step_size``
  along the sign of the gradient (linf), the gradient normalised per example
  (l2; no step where it is 0) or the sparse sign step of Yang et al. 2020 (l1:
  the coordinates of largest ``|grad|``, about 1/16 of them, share the step
  equally; see :data:`L1_QUANTILE`), each followed by clipping to [0, 1] and
  projection onto the ball around the clean ``x`` (in l1 by Duchi et al. 2008's
  sort-based algorithm).

  The l2 random start is uniform in the l2 ball (a Gaussian direction normalised,
  times ``eps * U^(1/d)``), the l1 one uniform in the l1 ball (signed exponentials
  ``E_1, ..., E_d`` over ``E_1 + ... + E_{d+1}``, times ``eps``), the linf one
  uniform in the cube; all are then clipped to [0, 1]. (Yang et al.'s PGD starts
  at ``x``, with steps of ``2 * eps / steps``, and returns the last iterate.)
  With ``restarts > 1`` the attack runs from that many random starts. With
  ``keep_best`` the result is, per example, the iterate (over all steps and
  restarts, the start and the last iterate included) of the highest loss (lowest
  if ``targeted``); without it, the last iterate, of the restart whose last
  iterate is best when there are several.

  With ``keyed_loss`` the loss is a Monte Carlo estimate that takes a PRNG key,
  ``loss_fn(x, y, key)`` (a smoothed loss drawing its noise, as in
  :mod:`smoothjax.objectives.generation`): every step gets a fresh key, so the steps follow
  a stochastic gradient of the expected loss rather than of one fixed draw; the
  kept iterate is chosen on those same estimates. The attack is differentiable
  in whatever ``loss_fn`` closes over (a model's parameters: the fixed-point
  objective of :mod:`smoothjax.objectives.generation` differentiates through the unrolled
  steps); ``remat`` recomputes each step's forward pass in the backward pass
  (``jax.checkpoint``) instead of keeping its activations, which bounds that
  memory to about one step's.

  Args:
    loss_fn: ``(x, y) -> (B,)`` per-example loss, differentiable in ``x``.
    eps: radius of the ball, >= 0 (0 returns ``x``).
    norm: ``"linf"``, ``"l2"`` or ``"l1"``.
    steps: number of gradient steps, >= 1 (static: the loop is a ``fori_loop``).
    step_size: length of a step; default ``2.5 * eps / steps`` (Madry et al.).
    random_start: start from a random point of the ball instead of ``x``.
    restarts: number of runs from independent random starts, >= 1.
    targeted: if True, ``y`` are target classes and the loss is lowered.
    keep_best: return the best iterate rather than the last.
    keyed_loss: ``loss_fn`` takes a third argument, a PRNG key, fresh at every step.
    remat: rematerialise each step in the backward pass (for differentiating
      through the attack).

  Returns:
    ``attack(key, x, y) -> x_adv``. ``key`` (a PRNG key, used once) draws the
    random starts and the loss's keys; it may be None without random start and
    without ``keyed_loss``.

  Example::

    attack = jax.jit(pgd(loss_fn, eps=0.5, norm="l2", steps=20, restarts=2))
    x_adv = attack(jax.random.key(0), x, y)
  """
  norm = _check_norm(norm)
  eps = _check_radius("eps", eps)
  steps = _check_int("steps", steps)
  restarts = _check_int("restarts", restarts)
  step_size = _check_step_size(step_size)
  if restarts > 1 and not random_start:
    raise InputError(
      f"restarts={restarts} without random_start would repeat one run; "
      "set random_start=True or restarts=1"
    )
  if step_size is None:
    step_size = 2.5 * eps / steps
  sign = -1.0 if targeted else 1.0
  worst = math.inf if targeted else -math.inf
  # Only the last iterate competes when keep_best is off; with one run it just wins.
  final_eval = keep_best or restarts > 1

  def better(new, old):
    return new < old if targeted else new > old

  def keep(best, candidate, values):
    best_x, best_values = best
    values = values.astype(best_values.dtype)
    improved = better(values, best_values)
    return (
      jnp.where(_expand(improved, candidate), candidate, best_x),
      jnp.where(improved, values, best_values),
    )

  def attack(key, x, y):
    x, y = _check_call(x, y)
    if not _is_traced(eps) and eps == 0:
      return x
    if (random_start or keyed_loss) and key is None:
      needs = "random_start=True" if random_start else "keyed_loss=True"
      raise InputError(f"pgd with {needs} needs a PRNG key; pass jax.random.key(seed)")

    def run(best, x0, loss_key):
      def loss_at(step):
        if not keyed_loss:
          return loss_fn
        step_key = jax.random.fold_in(loss_key, step)
        return lambda xi, y: loss_fn(xi, y, step_key)

      def body(step, carry):
        xi, best = carry
        values, grad = _value_and_grad(loss_at(step), xi, y)
        if keep_best:
          best = keep(best, xi, values)
        xi = _project(xi + (sign * step_size) * _unit_step(grad, norm), x, eps, norm)
        return xi, best

      if remat:
        body = jax.checkpoint(body)
      last, best = jax.lax.fori_loop(0, steps, body, (x0, best))
      if not final_eval:
        return last, best
      return last, keep(best, last, loss_at(steps)(last, y))

    def keys_of(run_key):
      """The run's start key and loss key (None where unused)."""
      if not keyed_loss:
        return run_key, None
      if not random_start:
        return None, run_key
      start_key, loss_key = jax.random.split(run_key)
      return start_key, loss_key

    best = (x, jnp.full(x.shape[:1], worst, jnp.float32))
    if not random_start:
      last, best = run(best, x, keys_of(key)[1])
      return best[0] if final_eval else last

    def restart(best, restart_key):
      start_key, loss_key = keys_of(restart_key)
      _, best = run(best, _random_start(start_key, x, eps, norm), loss_key)
      return best, None

    if restarts == 1 and not final_eval:
      start_key, loss_key = keys_of(key)
      last, _ = run(best, _random_start(start_key, x, eps, norm), loss_key)
      return last
    run_keys = jax.random.split(key, restarts)
    if restarts == 1:
      # The scan's one step, without the scan (the same numbers): JAX's key-reuse checker
      # misreads a scan over keys under vmap.
      best, _ = restart(best, run_keys[0])
    else:
      best, _ = jax.lax.scan(restart, best, run_keys)
    return best[0]

  return attack


def smoothadv(logits_fn, *, eps, steps: int, step_size=None, norm: str = "l2"):
  """SmoothAdv's attack: PGD on the soft smoothed classifier with fixed noise samples.

  Salman et al. 2019, "Provably Robust Deep Learning via Adversarially Trained
  Smoothed Classifiers", ``PGD_L2`` in their ``code/attacks.py`` (the
  multi-noise attack used for training): starting at ``x`` (no random start),
  ``steps`` steps of ``step_size`` (default ``2 * eps / steps``) along the
  gradient of :func:`smoothjax.objectives.losses.smoothed_cross_entropy` normalised per
  example, i.e. lowering the Monte Carlo ``log G(x + delta)_y``, with the same
  noise samples at every step. After each step, as in their code, the point is
  clipped to [0, 1] and the perturbation then projected onto the ``eps`` ball.
  Their loss takes ``log(max(G, 1e-20))`` and they step in a random direction
  where the gradient is 0; here the log is the stable one and a zero gradient
  makes no step. The result is the last iterate.

  With ``norm="l1"`` this is the attack Yang et al. 2020 ("Randomized Smoothing of
  All Shapes and Sizes", ``pgd_attack_smooth`` in their ``src/attacks.py``) use
  against Laplace and Uniform smoothing: sparse sign steps and the l1 projection
  (they project the perturbation, then clip the point to [0, 1], which can leave
  it strictly inside the ball; here, as for the other norms, the clip comes
  first).

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` base classifier logits.
    eps: radius of the ball, >= 0 (0 returns ``x`` unchanged).
    steps: number of steps, >= 1.
    step_size: length of a step; default ``2 * eps / steps`` (Salman et al.).
    norm: ``"l2"`` (theirs), ``"linf"`` (sign steps) or ``"l1"`` (Yang et al.'s,
      against Laplace and Uniform smoothing, with the same default step size).

  Returns:
    ``attack(x, y, noise) -> x_adv`` with ``noise`` the ``(m, B, ...)`` samples,
    which the caller then reuses to train on ``x_adv + noise``.

  Example::

    eps_samples = noise_batch(Gaussian(0.25), key, 4, x.shape)
    x_adv = smoothadv(logits_fn, eps=1.0, steps=10)(x, y, eps_samples)
    loss = smoothed_cross_entropy(logits_fn, x_adv, y, eps_samples).mean()
  """
  norm = _check_norm(norm)
  eps = _check_radius("eps", eps)
  steps = _check_int("steps", steps)
  step_size = _check_step_size(step_size)
  if step_size is None:
    step_size = 2.0 * eps / steps

  def attack(x, y, noise):
    x, y = _check_call(x, y)
    if not _is_traced(eps) and eps == 0:
      return x

    def loss_fn(xi, y):
      return losses.smoothed_cross_entropy(logits_fn, xi, y, noise)

    def body(_, xi):
      _, grad = _value_and_grad(loss_fn, xi, y)
      return _project(xi + step_size * _unit_step(grad, norm), x, eps, norm)

    return jax.lax.fori_loop(0, steps, body, x)

  return attack
