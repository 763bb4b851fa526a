"""Image generation with smoothed and robust classifiers, and the fixed-point objective.

A classifier that is robust (adversarially trained) or smoothed has gradients
that look like its classes, so ascending a class's score in image space draws
that class (Santurkar et al. 2019, "Image Synthesis with a Single (Robust)
Classifier"; their code is ``MadryLab/robustness_applications``). This module
holds the pieces, all pure functions of a ``logits_fn(x) -> logits`` on inputs in
[0, 1]:

* **Scores** of a target class ``c`` (:func:`class_score`), estimated with ``m``
  noise samples of any :mod:`smoothjax.noise` family, or exact for a robust base
  model (``m = 0``):

  - ``"ce"``: the smoothed cross-entropy ``E[log softmax(f(x + eps))_c]``;
  - ``"tcm"``: target-class maximisation, ``E[logit_c(x + eps)]``;
  - ``"soft"``: the soft smoothed log-probability ``log E[softmax(f(x + eps))_c]``
    (SmoothAdv's ``G``).

  With ``m = 0`` these are ``log softmax(f(x))_c`` (``"ce"`` and ``"soft"``) and
  ``logit_c(x)``.
* **Seeds**, the starting images: class-conditional Gaussians fitted to each
  class's training images (mean and full covariance on a grid downsampled by an
  integer factor, sampled, clipped to [0, 1] and upsampled by repetition, as
  Santurkar et al.: :func:`fit_class_gaussians`), or uniform noise
  (:func:`uniform_seeds`); real images are the caller's to pick.
* **Generation** (:func:`generate`): targeted PGD (:func:`smoothjax.objectives.attacks.pgd`)
  that ascends the score from the seed within an ``eps`` ball (l2 or linf),
  clipped to [0, 1], drawing fresh noise at every step, keeping the best iterate.
  Every image draws its randomness from its own key, so an image does not depend
  on the batch it is generated in.
* **The fixed-point objective** (:func:`fixed_point_loss`): with ``psi(x; theta)``
  the generation started at a real image ``x`` towards its own label,
  ``||x - psi(x; theta)||^2`` per image; its gradient in the classifier's
  parameters goes through the unrolled steps (``jax.checkpoint`` per step with
  ``remat``). Minimising it makes real images near-fixed points of generation.

Example::

  images = jax.jit(lambda x, c, k: generate(model, x, c, k, loss="ce", noise=Gaussian(0.5),
                                            m=16, eps=10.0, steps=60))(seeds, targets, keys)
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax.errors import InputError
from smoothjax.noise import Noise
from smoothjax.objectives import attacks, losses

LOSSES = ("ce", "tcm", "soft")
SEED_DISTRIBUTIONS = ("class_gaussian", "real", "uniform")
# Santurkar et al. fit their seed Gaussians on an 8 x 8 grid for CIFAR-10 (32 x 32) and
# ImageNet (224 x 224): the default factor gives the largest grid of side at most this.
DEFAULT_GRID_SIDE = 8
# Added to the fitted covariance's diagonal, as Santurkar et al. (1e-4 * I), so that its
# Cholesky factor exists when a class has fewer images than the grid has pixels.
RIDGE = 1e-4


# --------------------------------------------------------------------------
# Scores.


def _check_loss(loss) -> str:
  if loss not in LOSSES:
    raise InputError(f"unknown generation loss {loss!r}; choose one of: {', '.join(LOSSES)}")
  return loss


def _check_m(m) -> int:
  if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0:
    raise InputError(
      f"m must be an integer >= 0 (noise samples per step; 0: the base classifier), got {m!r}"
    )
  return int(m)


def class_score(logits_fn, x, targets, eps=None, *, loss: str = "ce") -> jax.Array:
  """The score of class ``targets`` that generation ascends, per example.

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` logits, called once.
    x: images ``(B, ...)`` in [0, 1].
    targets: integer classes ``(B,)``.
    eps: ``(m, B, ...)`` noise samples (:func:`smoothjax.objectives.losses.noise_batch`) for
      the smoothed scores, or None for the base classifier's own.
    loss: ``"ce"``, ``"tcm"`` or ``"soft"`` (see the module).

  Returns:
    ``(B,)`` scores; higher means more of the class.

  Example::

    score = class_score(model, x, c, noise_batch(Gaussian(0.5), key, 16, x.shape), loss="tcm")
  """
  loss = _check_loss(loss)
  targets = jnp.asarray(targets)
  if eps is not None:
    if loss == "ce":
      return losses.mean_log_prob(logits_fn, x, targets, eps)
    if loss == "tcm":
      return losses.smoothed_target_logit(logits_fn, x, targets, eps)
    return -losses.smoothed_cross_entropy(logits_fn, x, targets, eps)
  x = jnp.asarray(x)
  logits = logits_fn(x)
  if getattr(logits, "ndim", None) != 2 or logits.shape[0] != x.shape[0]:
    got = getattr(logits, "shape", type(logits).__name__)
    raise InputError(f"logits_fn must map a batch of N inputs to (N, K) logits, got {got}")
  if targets.shape != x.shape[:1]:
    raise InputError(
      f"targets must have shape ({x.shape[0]},), one per input, got {tuple(targets.shape)}"
    )
  values = logits if loss == "tcm" else jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(values, targets[:, None], axis=-1)[:, 0]


def score_fn(logits_fn, *, loss: str = "ce", noise: Noise | None = None, m: int = 0):
  """``score(x, targets, key) -> (B,)``: :func:`class_score` with ``m`` fresh noise samples.

  ``key`` draws the noise (it is unused, and may be None, when ``m = 0``).
  ExpInf noise is bound to the dimension of the inputs it is given.
  """
  loss = _check_loss(loss)
  m = _check_m(m)
  if m > 0 and not isinstance(noise, Noise):
    raise InputError(
      f"m = {m} noise samples need a noise distribution (e.g. noise=Gaussian(0.5)); "
      "m = 0 scores the base classifier"
    )

  def score(x, targets, key):
    if m == 0:
      return class_score(logits_fn, x, targets, None, loss=loss)
    bound = noise.bind(math.prod(x.shape[1:]))
    eps = losses.noise_batch(bound, key, m, x.shape, x.dtype)
    return class_score(logits_fn, x, targets, eps, loss=loss)

  return score


# --------------------------------------------------------------------------
# Generation.


def generate(
  logits_fn,
  seeds,
  targets,
  keys=None,
  *,
  loss: str = "ce",
  noise: Noise | None = None,
  m: int = 0,
  eps,
  norm: str = "l2",
  steps: int,
  step_size=None,
  keep_best: bool = True,
  remat: bool = False,
) -> jax.Array:
  """Targeted PGD from ``seeds`` that ascends the score of classes ``targets``.

  Santurkar et al. 2019's generation (``robustness``' targeted attack from a seed)
  with the scores of :func:`class_score`: ``steps`` steps of ``step_size`` (default
  ``2.5 * eps / steps``) along the normalised gradient (l2) or its sign (linf),
  each followed by clipping to [0, 1] and projection onto the ``eps`` ball around
  the seed (:func:`smoothjax.objectives.attacks.pgd`, no random start). With ``m > 0`` every
  step draws ``m`` fresh noise samples; with ``keep_best`` the result is each
  image's iterate of highest (estimated) score.

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` logits (inputs in [0, 1]).
    seeds: starting images ``(B, ...)`` in [0, 1].
    targets: integer classes ``(B,)``.
    keys: ``(B,)`` PRNG keys, one per image (``jax.random.split``, or ``fold_in`` of
      a dataset index), each used once; may be None when ``m = 0``.
    loss: ``"ce"``, ``"tcm"`` or ``"soft"``.
    noise: the smoothing noise, for ``m > 0``.
    m: noise samples per step and image; 0 ascends the base classifier's score.
    eps: radius of the ball around the seed, >= 0.
    norm: ``"l2"`` or ``"linf"`` (or ``"l1"``, Yang et al.'s sparse steps).
    steps: number of steps, >= 1.
    step_size: step length; default ``2.5 * eps / steps``.
    keep_best: return the best iterate rather than the last.
    remat: rematerialise each step when differentiated (see :func:`fixed_point_loss`).

  Returns:
    ``(B, ...)`` generated images in [0, 1].

  Example::

    keys = jax.random.split(jax.random.key(0), len(seeds))
    x = generate(model, seeds, targets, keys, noise=Gaussian(0.5), m=16, eps=10.0, steps=60)
  """
  score = score_fn(logits_fn, loss=loss, noise=noise, m=m)
  keyed = m > 0
  attack = attacks.pgd(
    lambda x, y, key=None: score(x, y, key),
    eps=eps,
    norm=norm,
    steps=steps,
    step_size=step_size,
    random_start=False,
    keep_best=keep_best,
    keyed_loss=keyed,
    remat=remat,
  )
  seeds = jnp.asarray(seeds)
  targets = jnp.asarray(targets)
  if seeds.ndim < 2 or targets.shape != seeds.shape[:1]:
    raise InputError(
      f"targets must hold one class per seed, shape ({seeds.shape[0] if seeds.ndim else 0},), "
      f"got {tuple(targets.shape)} for seeds {tuple(seeds.shape)}"
    )
  if not keyed:
    # The base classifier in eval mode: each image is independent of its batch already.
    return attack(None, seeds, targets)
  if keys is None or getattr(keys, "shape", None) != seeds.shape[:1]:
    raise InputError(
      f"generate with m = {m} needs one PRNG key per seed, shape ({seeds.shape[0]},); "
      "pass jax.random.split(jax.random.key(seed), len(seeds))"
    )
  # One image at a time under vmap: its noise comes from its own key, whatever the batch.
  return jax.vmap(lambda k, x, y: attack(k, x[None], y[None])[0])(keys, seeds, targets)


def fixed_point_loss(logits_fn, x, labels, keys=None, **settings) -> jax.Array:
  """``||x - psi(x)||^2`` per image: how far generation moves a real image from itself.

  ``psi(x)`` is :func:`generate` started at the real images ``x`` towards their
  own ``labels`` (``settings`` are its keyword arguments: ``loss``, ``noise``,
  ``m``, ``eps``, ``norm``, ``steps``, ``step_size``, ``keep_best``, ``remat``),
  except that ``keep_best`` defaults to False: ``psi`` is the last iterate. (The
  best iterate of a confident classifier is often ``x`` itself, whose
  log-probability already rounds to 0, which would make the objective 0.)
  Differentiate it in what ``logits_fn`` closes over (the classifier's
  parameters) to fine-tune the classifier so that real images are near-fixed
  points of generation: the objective ``mean_i ||x_i - psi(x_i; theta)||^2``.
  The gradient goes through every step of the unrolled PGD, including each
  step's input gradient (a second derivative of the classifier), so it needs
  steps that depend smoothly on the parameters: l2 (a sign step, linf, has zero
  derivative). ``remat=True`` keeps the backward pass's memory to about one step.

  Args:
    logits_fn: ``(N, ...) -> (N, K)`` logits, a function of the parameters.
    x: real images ``(B, ...)`` in [0, 1].
    labels: their classes ``(B,)``.
    keys: ``(B,)`` PRNG keys for the noise when ``m > 0``.
    **settings: :func:`generate`'s settings.

  Returns:
    ``(B,)`` squared l2 distances.

  Example::

    def objective(params):
      return fixed_point_loss(lambda x: apply(params, x), x, y, eps=2.0, steps=5).mean()
    grads = jax.grad(objective)(params)
  """
  x = jnp.asarray(x)
  settings.setdefault("keep_best", False)
  psi = generate(logits_fn, x, labels, keys, **settings)
  return jnp.sum(jnp.square((x - psi).reshape(x.shape[0], -1)), axis=1)


# --------------------------------------------------------------------------
# Seeds.


def _check_images(images) -> np.ndarray:
  array = np.asarray(images)
  if array.ndim != 4 or array.shape[0] == 0:
    raise InputError(f"images must be a non-empty (N, H, W, C) array, got shape {array.shape}")
  return array


def default_factor(height: int, width: int, side: int = DEFAULT_GRID_SIDE) -> int:
  """The smallest integer factor dividing ``height`` and ``width`` that leaves a side <= ``side``.

  8 x 8 grids for CIFAR-10 (factor 4) and ImageNet at 224 (factor 28), as
  Santurkar et al.; 7 x 7 for MNIST (factor 4).
  """
  common = math.gcd(int(height), int(width))
  for factor in range(1, common + 1):
    if common % factor == 0 and max(height, width) // factor <= side:
      return factor
  return common


def downsample(images, factor: int) -> np.ndarray:
  """Means over ``factor`` x ``factor`` blocks: ``(N, H, W, C) -> (N, H/f, W/f, C)``."""
  images = _check_images(images)
  n, h, w, c = images.shape
  if h % factor or w % factor:
    raise InputError(f"downsampling factor {factor} must divide the image size {h}x{w}")
  return images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample(images, factor: int):
  """Each pixel repeated into a ``factor`` x ``factor`` block (works on jax and numpy arrays)."""
  images = jnp.asarray(images)
  return jnp.repeat(jnp.repeat(images, factor, axis=1), factor, axis=2)


@dataclasses.dataclass(frozen=True)
class ClassGaussians:
  """One Gaussian per class over images downsampled by ``factor``: Santurkar et al.'s seeds.

  Attributes:
    mean: ``(K, D)`` class means of the flattened downsampled images.
    cov: ``(K, D, D)`` their covariances (biased, plus ``RIDGE`` on the diagonal).
    counts: ``(K,)`` training images of each class.
    image_shape: ``(H, W, C)`` of the full-size images.
    factor: the downsampling factor.
  """

  mean: np.ndarray
  cov: np.ndarray
  counts: np.ndarray
  image_shape: tuple[int, int, int]
  factor: int

  @property
  def num_classes(self) -> int:
    return int(self.mean.shape[0])

  @property
  def grid_shape(self) -> tuple[int, int, int]:
    h, w, c = self.image_shape
    return (h // self.factor, w // self.factor, c)

  def _check_classes(self, classes) -> jax.Array:
    classes = jnp.asarray(classes)
    if classes.ndim != 1 or not jnp.issubdtype(classes.dtype, jnp.integer):
      raise InputError(f"classes must be a 1-D integer array, got {classes.dtype} {classes.shape}")
    if not isinstance(classes, jax.core.Tracer) and classes.size:
      low, high = int(classes.min()), int(classes.max())
      if low < 0 or high >= self.num_classes:
        raise InputError(
          f"classes must lie in [0, {self.num_classes}), got {low}..{high}; "
          f"the seeds were fitted to {self.num_classes} classes"
        )
    return classes

  def sample_grid(self, keys, classes) -> jax.Array:
    """Unclipped draws on the downsampled grid, ``(B, H/f, W/f, C)``, one per key and class."""
    classes = self._check_classes(classes)
    mean = jnp.asarray(self.mean, jnp.float32)
    chol = jnp.asarray(np.linalg.cholesky(self.cov), jnp.float32)

    def one(key, c):
      z = jax.random.normal(key, (mean.shape[1],), jnp.float32)
      return mean[c] + chol[c] @ z

    flat = jax.vmap(one)(keys, classes)
    return flat.reshape(len(classes), *self.grid_shape)

  def seeds(self, keys, classes) -> jax.Array:
    """Seed images ``(B, H, W, C)``: grid draws clipped to [0, 1], then upsampled."""
    return upsample(jnp.clip(self.sample_grid(keys, classes), 0.0, 1.0), self.factor)

  def to_arrays(self) -> dict[str, np.ndarray]:
    """The fit as arrays (for ``np.savez``); :meth:`from_arrays` reads them back."""
    return {
      "mean": self.mean,
      "cov": self.cov,
      "counts": self.counts,
      "image_shape": np.asarray(self.image_shape, np.int64),
      "factor": np.asarray(self.factor, np.int64),
    }

  @classmethod
  def from_arrays(cls, arrays) -> ClassGaussians:
    try:
      return cls(
        mean=np.asarray(arrays["mean"], np.float64),
        cov=np.asarray(arrays["cov"], np.float64),
        counts=np.asarray(arrays["counts"], np.int64),
        image_shape=tuple(int(v) for v in arrays["image_shape"]),
        factor=int(arrays["factor"]),
      )
    except KeyError as e:
      raise InputError(f"class Gaussian arrays lack {e}; refit them") from None


def fit_class_gaussians(images, labels, num_classes: int, *, factor: int | None = None):
  """Fits one Gaussian per class to ``images`` downsampled by ``factor``.

  Santurkar et al. 2019 (``robustness_applications``' generation notebook): the
  mean and the full (biased) covariance of each class's flattened downsampled
  images, plus ``RIDGE * I``. Computed on the host in float64; for a split too
  large for memory, :func:`fit_class_gaussians_in_chunks`.

  Args:
    images: ``(N, H, W, C)`` in [0, 1], usually the training split.
    labels: ``(N,)`` integer classes.
    num_classes: K; every class needs at least 2 images.
    factor: the downsampling factor (dividing H and W); default :func:`default_factor`.

  Returns:
    A :class:`ClassGaussians`.

  Example::

    fit = fit_class_gaussians(x_train, y_train, 10)
    seeds = fit.seeds(jax.random.split(jax.random.key(0), 8), jnp.full(8, 3))
  """
  images = _check_images(images)
  return fit_class_gaussians_in_chunks(
    [(images, labels)], num_classes, image_shape=images.shape[1:], factor=factor
  )


def fit_class_gaussians_in_chunks(chunks, num_classes: int, *, image_shape, factor=None):
  """:func:`fit_class_gaussians` over an iterable of ``(images, labels)`` chunks.

  Accumulates per-class sums of the downsampled images and of their outer
  products in float64, so the whole split never needs to be in memory.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
    raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
  if num_classes < 1:
    raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
  h, w, c = (int(v) for v in image_shape)
  factor = default_factor(h, w) if factor is None else factor
  if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
    raise InputError(f"the downsampling factor must be an integer >= 1, got {factor!r}")
  if h % factor or w % factor:
    raise InputError(f"downsampling factor {factor} must divide the image size {h}x{w}")
  dim = (h // factor) * (w // factor) * c
  sums = np.zeros((num_classes, dim))
  outer = np.zeros((num_classes, dim, dim))
  counts = np.zeros(num_classes, np.int64)
  for images, labels in chunks:
    images = _check_images(images)
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
      raise InputError(
        f"labels must hold one integer class per image ({len(images)}), got {labels.dtype} "
        f"{labels.shape}"
      )
    if images.shape[1:] != (h, w, c):
      raise InputError(f"images must all have shape {(h, w, c)}, got {images.shape[1:]}")
    grid = downsample(images.astype(np.float64), int(factor)).reshape(len(images), -1)
    for k in np.unique(labels):
      if not 0 <= k < num_classes:
        raise InputError(f"labels must lie in [0, {num_classes}), got {k}")
      rows = grid[labels == k]
      sums[k] += rows.sum(axis=0)
      outer[k] += rows.T @ rows
      counts[k] += len(rows)
  few = [k for k in range(num_classes) if counts[k] < 2]
  if few:
    raise InputError(
      f"class {few[0]} has {counts[few[0]]} training image(s); fitting its seed Gaussian needs >= 2"
    )
  mean = sums / counts[:, None]
  cov = outer / counts[:, None, None] - mean[:, :, None] * mean[:, None, :]
  cov = 0.5 * (cov + cov.transpose(0, 2, 1)) + RIDGE * np.eye(dim)
  return ClassGaussians(
    mean=mean, cov=cov, counts=counts, image_shape=(h, w, c), factor=int(factor)
  )


def uniform_seeds(keys, shape) -> jax.Array:
  """Seeds uniform in [0, 1], ``(B, *shape)``, one per key."""
  return jax.vmap(lambda k: jax.random.uniform(k, tuple(shape), jnp.float32))(keys)
