"""One-shot diffusion denoising: a diffusion model's epsilon predictor as a denoiser.

Carlini, Tramer, Dvijotham, Rice, Sun and Kolter, "(Certified!!) Adversarial Robustness for
Free!" (ICLR 2023), certify ``f(D(x + delta))`` with ``delta ~ N(0, sigma^2 I)`` and a
denoiser ``D`` made of an off-the-shelf diffusion model, used for a single step.

The forward process of a diffusion model (Ho, Jain and Abbeel, "Denoising Diffusion
Probabilistic Models", NeurIPS 2020) on images scaled to [-1, 1], ``x0' = 2 x - 1``, is

  x_t = sqrt(alpha_bar_t) x0' + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I),

and the model ``eps(x_t, t)`` is trained to predict ``eps`` (:func:`diffusion_loss`). A
smoothing sample ``y = x + delta`` in [0, 1] pixel units has ``2 y - 1 = x0' + 2 delta``;
scaled by ``sqrt(alpha_bar)`` it is ``sqrt(alpha_bar) x0' + sqrt(alpha_bar) 2 delta``, whose
noise has standard deviation ``2 sigma sqrt(alpha_bar)``. That equals ``sqrt(1 - alpha_bar)``
exactly when

  alpha_bar = 1 / (1 + 4 sigma^2),   i.e.   sigma = sqrt((1 - alpha_bar) / alpha_bar) / 2,

(:func:`alpha_bar_of_sigma`, :func:`sigma_of_alpha_bar`), so ``x_t = sqrt(alpha_bar)
(2 y - 1)`` is distributed as the forward process at the timestep ``t`` of that
``alpha_bar`` (:func:`timestep_for_sigma`), and one application of the model gives the
estimate of the clean image

  x0_hat = (x_t - sqrt(1 - alpha_bar) eps(x_t, t)) / sqrt(alpha_bar),

which is ``E[x0' | x_t]`` for an exact epsilon predictor (Tweedie's formula): the
minimum-mean-squared-error denoiser of ``y`` (:func:`one_shot_denoise`, :class:`OneShot`).

Schedules are given as ``alpha_bar`` (cumulative products of ``1 - beta``): the discrete
linear schedule of Ho et al. (:func:`linear_schedule`) and cosine schedule of Nichol and
Dhariwal ("Improved Denoising Diffusion Probabilistic Models", ICML 2021;
:func:`cosine_schedule`), both indexed as guided-diffusion's ``alphas_cumprod``, and the
continuous-time cosine schedule on t in [0, 1] (:func:`cosine_alpha_bar`) that this
library's own models (:mod:`smoothjax.models.unet`) are trained on, where any sigma has an
exact timestep.

For data whose pixels are independent Gaussians everything has a closed form
(:func:`gaussian_mmse_denoiser`, :func:`gaussian_epsilon`, :func:`gaussian_epsilon_fn`),
against which the tests check the maths above.

Example::

  model = models.UNetSmall(1, input_shape=(28, 28, 1), rngs=nnx.Rngs(params=0))
  # ... trained with diffusion_loss(model, key, images, max_sigma=1.0) ...
  denoiser = diffusion.OneShot(model, sigma=0.5, schedule="cosine")
  clean_estimate = denoiser(images + 0.5 * jax.random.normal(key, images.shape))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smoothjax.errors import InputError

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
"""An epsilon predictor ``eps_fn(x_t, t) -> eps_hat``: ``x_t`` (N, ...) and ``t`` (N,)."""

MIN_ALPHA_BAR = 1e-5
"""The floor of :func:`cosine_alpha_bar`, which keeps t = 1 (alpha_bar 0) finite.

It is the alpha_bar of a pixel sigma of about 158, far above any smoothing level.
"""

T_MIN = 1e-3
"""The smallest time :func:`diffusion_loss` draws: at t = 0 there is no noise to predict."""

_COSINE_S = 0.008


def _xp(x):
  """``jnp`` for JAX arrays (tracers included), else ``np`` (float64 on the host)."""
  return jnp if isinstance(x, jax.Array) else np


def linear_schedule(
  num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
  """The alpha_bar of DDPM's linear beta schedule (Ho et al. 2020), float64.

  Args:
    num_steps: number of timesteps T.
    beta_start: beta of the first timestep.
    beta_end: beta of the last timestep.

  Returns:
    ``(T,)`` float64 ``alpha_bar``; index ``i`` is DDPM's ``t = i + 1``, as in
    guided-diffusion's ``alphas_cumprod`` (whose models take ``i`` as their timestep).
  """
  num_steps = _num_steps(num_steps)
  if not 0 < beta_start <= beta_end < 1:
    raise InputError(
      f"linear_schedule needs 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}"
    )
  betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
  return np.cumprod(1.0 - betas)


def cosine_schedule(num_steps: int = 1000, s: float = _COSINE_S) -> np.ndarray:
  """The alpha_bar of the discrete cosine schedule (Nichol and Dhariwal 2021), float64.

  ``beta_i = min(1 - a((i + 1) / T) / a(i / T), 0.999)`` with ``a(t) = cos^2(((t + s) /
  (1 + s)) pi / 2)``, as guided-diffusion's ``betas_for_alpha_bar``; where no beta is
  clipped, ``alpha_bar[i]`` is ``cosine_alpha_bar((i + 1) / T)``.

  Args:
    num_steps: number of timesteps T.
    s: the offset that keeps beta from being tiny near t = 0.

  Returns:
    ``(T,)`` float64 ``alpha_bar``, indexed as :func:`linear_schedule`'s.
  """
  num_steps = _num_steps(num_steps)
  t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  a = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
  betas = np.minimum(1.0 - a[1:] / a[:-1], 0.999)
  return np.cumprod(1.0 - betas)


def _num_steps(num_steps) -> int:
  if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
    raise InputError(f"num_steps must be a positive integer, got {num_steps!r}")
  return int(num_steps)


def cosine_alpha_bar(t, s: float = _COSINE_S):
  """The continuous cosine schedule: alpha_bar of time ``t`` in [0, 1].

  ``alpha_bar(t) = cos^2(((t + s) / (1 + s)) pi / 2) / cos^2((s / (1 + s)) pi / 2)``
  (Nichol and Dhariwal 2021), at least :data:`MIN_ALPHA_BAR` so that t = 1 stays finite.

  Args:
    t: times; a JAX array (differentiable, jit-compatible) or NumPy values / floats.
    s: the schedule's offset.

  Returns:
    alpha_bar of the shape of ``t``: a JAX array for a JAX input, else NumPy float64.
  """
  xp = _xp(t)
  f = xp.cos((t + s) / (1 + s) * (math.pi / 2)) ** 2
  return xp.clip(f / math.cos(s / (1 + s) * math.pi / 2) ** 2, MIN_ALPHA_BAR, 1.0)


def cosine_time(alpha_bar, s: float = _COSINE_S):
  """The inverse of :func:`cosine_alpha_bar`: the time whose alpha_bar is ``alpha_bar``.

  Exact for alpha_bar in [:data:`MIN_ALPHA_BAR`, 1] (times in [0, 1]).

  Args:
    alpha_bar: values in (0, 1]; a JAX array or NumPy values / floats.
    s: the schedule's offset.

  Returns:
    Times of the shape of ``alpha_bar``: a JAX array for a JAX input, else NumPy float64.
  """
  xp = _xp(alpha_bar)
  f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
  cos = xp.sqrt(xp.clip(alpha_bar * f0, 0.0, 1.0))
  return xp.arccos(cos) * (2 / math.pi) * (1 + s) - s


def sigma_of_alpha_bar(alpha_bar):
  """The pixel sigma a timestep's noise amounts to: ``sqrt((1 - ab) / ab) / 2``.

  Images in [0, 1] are scaled to [-1, 1], so a pixel sigma is twice that there, and
  ``sqrt(ab) (2 (x + delta) - 1)`` has noise of standard deviation ``sqrt(1 - ab)``.
  JAX in, JAX out; otherwise NumPy float64.
  """
  xp = _xp(alpha_bar)
  return xp.sqrt((1 - alpha_bar) / alpha_bar) / 2


def alpha_bar_of_sigma(sigma):
  """The alpha_bar whose noise is a pixel sigma ``sigma``: ``1 / (1 + 4 sigma^2)``.

  The inverse of :func:`sigma_of_alpha_bar`. JAX in, JAX out; otherwise NumPy float64.
  """
  if _xp(sigma) is np:
    sigma = np.asarray(sigma, np.float64)
  return 1 / (1 + 4 * sigma**2)


@dataclasses.dataclass(frozen=True)
class Timestep:
  """The diffusion timestep one-shot denoising uses for a smoothing sigma.

  Attributes:
    t: the model's time input: an ``int`` index into a discrete schedule, or a ``float``
      in [0, 1] on the continuous cosine schedule.
    alpha_bar: that timestep's alpha_bar.
    sigma: the pixel sigma that timestep's noise amounts to,
      ``sigma_of_alpha_bar(alpha_bar)``: the target rounded to the schedule's grid.
    target_sigma: the smoothing sigma asked for, the noise actually added.
  """

  t: int | float
  alpha_bar: float
  sigma: float
  target_sigma: float

  @property
  def discrete(self) -> bool:
    """Whether ``t`` indexes a discrete schedule (else it is a continuous time)."""
    return isinstance(self.t, int)


def _check_sigma(sigma) -> float:
  try:
    value = float(sigma)
  except (TypeError, ValueError):
    value = math.nan
  if not (math.isfinite(value) and value > 0):
    raise InputError(f"sigma must be a finite number > 0, got {sigma!r}")
  return value


def timestep_for_sigma(sigma, schedule: np.ndarray | str) -> Timestep:
  """The timestep whose forward-process noise matches Gaussian smoothing at ``sigma``.

  Args:
    sigma: the smoothing standard deviation in [0, 1] pixel units, finite and > 0.
    schedule: a 1-D array of decreasing alpha_bar (a discrete schedule such as
      :func:`linear_schedule`), or ``"cosine"``, the continuous cosine schedule.

  Returns:
    On ``"cosine"``, the exact time ``cosine_time(alpha_bar_of_sigma(sigma))``. On a
    discrete schedule, the index whose sigma is nearest to ``sigma`` in log scale; its
    ``sigma`` differs from ``target_sigma`` by at most half the schedule's local spacing.

  Raises:
    InputError: sigma is not finite and positive, the schedule is not one of the above,
      or sigma lies outside the range of sigmas the schedule's timesteps cover.
  """
  sigma = _check_sigma(sigma)
  if isinstance(schedule, str):
    if schedule != "cosine":
      raise InputError(
        f"unknown schedule {schedule!r}; pass 'cosine' or an array of alpha_bar values"
      )
    alpha_bar = float(alpha_bar_of_sigma(sigma))
    if alpha_bar < MIN_ALPHA_BAR:
      raise InputError(
        f"sigma {sigma} is beyond the cosine schedule's largest noise "
        f"({float(sigma_of_alpha_bar(MIN_ALPHA_BAR)):.4g}); use a smaller sigma"
      )
    return Timestep(float(cosine_time(alpha_bar)), alpha_bar, sigma, sigma)
  alpha_bars = np.asarray(schedule, dtype=np.float64)
  if (
    alpha_bars.ndim != 1
    or alpha_bars.size == 0
    or not np.all((alpha_bars > 0) & (alpha_bars <= 1))
    or np.any(np.diff(alpha_bars) >= 0)
  ):
    raise InputError(
      f"a discrete schedule must be a 1-D array of decreasing alpha_bar in (0, 1], got "
      f"shape {alpha_bars.shape}; use linear_schedule() or cosine_schedule()"
    )
  sigmas = sigma_of_alpha_bar(alpha_bars)
  low, high = sigmas[0], sigmas[-1]
  if not low * (1 - 1e-9) <= sigma <= high * (1 + 1e-9):
    raise InputError(
      f"sigma {sigma} is outside the range {low:.4g} .. {high:.4g} that this schedule's "
      "timesteps cover; choose a sigma in that range or another schedule"
    )
  i = int(np.argmin(np.abs(np.log(sigmas) - math.log(sigma))))
  return Timestep(i, float(alpha_bars[i]), float(sigmas[i]), sigma)


def one_shot_denoise(eps_fn: EpsFn, y: jax.Array, step: Timestep, *, clip: bool = True):
  """Denoises Gaussian-smoothing samples with one step of a diffusion model.

  ``x_t = sqrt(ab) (2 y - 1)``, ``eps_hat = eps_fn(x_t, t)``, ``x0 = (x_t - sqrt(1 - ab)
  eps_hat) / sqrt(ab)`` (computed as ``(2 y - 1) - sqrt((1 - ab) / ab) eps_hat``, the same
  quantity with less rounding), optionally clipped to [-1, 1], and returned as
  ``(x0 + 1) / 2`` (Carlini et al. 2023).

  Why it is the forward process: with ``y = x + delta``, ``delta ~ N(0, sigma^2)`` and
  ``ab = 1 / (1 + 4 sigma^2)`` exactly, ``x_t = sqrt(ab) (2 x - 1) + sqrt(ab) 2 delta`` and
  ``sqrt(ab) 2 delta`` has standard deviation ``2 sigma sqrt(ab) = sqrt(1 - ab)``, so
  ``x_t`` is distributed as the forward process at ``t``. On a discrete schedule the
  nearest timestep's ``ab`` differs slightly from ``1 / (1 + 4 sigma^2)``: the noise *added*
  by the caller, and so the sigma that is certified, is always exactly the smoothing sigma;
  only the denoiser's view of it is off by the rounding (it sees noise ``step.sigma``
  instead of ``step.target_sigma``), which can cost accuracy, never validity. Carlini et
  al.'s code takes the first timestep whose sigma reaches the target (issue #3 of
  ethz-spylab/diffusion_denoised_smoothing discusses that the effective sigma then
  differs from the nominal one); :func:`timestep_for_sigma` takes the nearest. Models on
  the continuous cosine schedule (this library's) have no rounding beyond float32's.

  Args:
    eps_fn: the epsilon predictor ``eps_fn(x_t, t)``, e.g. a :class:`~smoothjax.models.UNet`.
    y: noisy images ``x + delta`` in [0, 1] pixel units, (N, H, W, C) (any shape with a
      leading batch axis works for an ``eps_fn`` that takes it).
    step: the timestep, from :func:`timestep_for_sigma`.
    clip: clip the clean estimate to the image range, as Carlini et al. do.

  Returns:
    The denoised images, the shape of ``y``, float32.
  """
  if not isinstance(step, Timestep):
    raise InputError(
      f"step must be a Timestep, got {type(step).__name__}; build it with "
      "timestep_for_sigma(sigma, schedule)"
    )
  y = jnp.asarray(y, jnp.float32)
  if y.ndim < 1:
    raise InputError(f"y must have a leading batch axis, got shape {y.shape}; add one")
  sqrt_ab = math.sqrt(step.alpha_bar)
  scaled = 2.0 * y - 1.0
  t = jnp.full((y.shape[0],), step.t, jnp.int32 if step.discrete else jnp.float32)
  eps_hat = jnp.asarray(eps_fn(sqrt_ab * scaled, t), jnp.float32)
  x0 = scaled - math.sqrt((1.0 - step.alpha_bar) / step.alpha_bar) * eps_hat
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return (x0 + 1.0) / 2.0


class OneShot(nnx.Module):
  """A one-shot diffusion denoiser ``D(y)`` at a fixed smoothing sigma (Carlini et al. 2023).

  ``OneShot(eps_model, sigma, schedule)(y)`` is ``one_shot_denoise(eps_model, y,
  timestep_for_sigma(sigma, schedule))``: a module whose epsilon model's weights are its
  state, so ``nnx.split``/``nnx.merge``, ``nnx.jit`` and :class:`~smoothjax.models.Denoised`
  take it as any denoiser.

  Args:
    eps_model: the epsilon predictor, an ``nnx.Module`` called ``eps_model(x_t, t)``.
    sigma: the smoothing sigma the inputs carry, in [0, 1] pixel units.
    schedule: the model's schedule: ``"cosine"`` (continuous time, this library's
      models) or a 1-D array of alpha_bar (a discrete model's, e.g. ``linear_schedule()``).
    clip: clip the clean estimate to the image range.
  """

  def __init__(self, eps_model: nnx.Module, sigma, schedule, *, clip: bool = True):
    self.eps_model = eps_model
    self.step = timestep_for_sigma(sigma, schedule)
    self.clip = bool(clip)

  def __call__(self, y: jax.Array) -> jax.Array:
    return one_shot_denoise(self.eps_model, y, self.step, clip=self.clip)


def gaussian_mmse_denoiser(y, mu, s, sigma):
  """``E[x | y]`` for ``y = x + delta``, ``x ~ N(mu, s^2)``, ``delta ~ N(0, sigma^2)``.

  ``mu + s^2 / (s^2 + sigma^2) (y - mu)``, per pixel; its mean squared error is
  ``s^2 sigma^2 / (s^2 + sigma^2)``. ``mu`` and ``s`` are scalars or arrays broadcasting
  against ``y``, in [0, 1] pixel units.
  """
  return mu + s**2 / (s**2 + sigma**2) * (jnp.asarray(y) - mu)


def gaussian_epsilon(x_t, alpha_bar, mu, s):
  """The exact ``E[eps | x_t]`` of the forward process on Gaussian data.

  With ``x0' = 2 x - 1 ~ N(2 mu - 1, 4 s^2)`` and ``x_t = sqrt(ab) x0' + sqrt(1 - ab) eps``,
  ``E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) (2 mu - 1)) / (4 s^2 ab + 1 - ab)``.

  Args:
    x_t: noised images in [-1, 1] units.
    alpha_bar: a scalar, or per-example values broadcasting against ``x_t``
      (e.g. (N, 1, 1, 1)).
    mu: the pixels' mean in [0, 1] units (scalar or broadcasting).
    s: the pixels' standard deviation in [0, 1] units (scalar or broadcasting).

  Returns:
    The exact epsilon prediction, the shape of ``x_t``.
  """
  ab = jnp.asarray(alpha_bar)
  return jnp.sqrt(1 - ab) * (x_t - jnp.sqrt(ab) * (2 * mu - 1)) / (4 * s**2 * ab + 1 - ab)


def gaussian_epsilon_fn(mu, s, schedule: np.ndarray | str) -> EpsFn:
  """The exact epsilon predictor for Gaussian data on a schedule, as an ``eps_fn(x_t, t)``.

  Args:
    mu: the pixels' mean in [0, 1] units.
    s: the pixels' standard deviation in [0, 1] units.
    schedule: ``"cosine"`` (``t`` continuous in [0, 1]) or a 1-D array of alpha_bar
      (``t`` integer indices into it).

  Returns:
    ``eps_fn(x_t, t)`` with ``x_t`` (N, ...) and ``t`` (N,).
  """
  if isinstance(schedule, str):
    if schedule != "cosine":
      raise InputError(
        f"unknown schedule {schedule!r}; pass 'cosine' or an array of alpha_bar values"
      )
    alpha_bar_of = lambda t: cosine_alpha_bar(jnp.asarray(t, jnp.float32))
  else:
    table = jnp.asarray(np.asarray(schedule, np.float64), jnp.float32)
    alpha_bar_of = lambda t: table[jnp.asarray(t, jnp.int32)]

  def eps_fn(x_t, t):
    ab = alpha_bar_of(t).reshape((-1,) + (1,) * (jnp.ndim(x_t) - 1))
    return gaussian_epsilon(x_t, ab, mu, s)

  return eps_fn


def diffusion_loss(
  eps_fn: EpsFn,
  key: jax.Array,
  images: jax.Array,
  *,
  schedule: str = "cosine",
  max_sigma: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DDPM's epsilon-prediction objective in continuous time (Ho et al. 2020).

  Per example ``t ~ U(T_MIN, t_hi)``, ``ab = cosine_alpha_bar(t)``, ``eps ~ N(0, I)`` and
  ``x_t = sqrt(ab) (2 images - 1) + sqrt(1 - ab) eps``; the loss is the mean over all
  elements of ``(eps_fn(x_t, t) - eps)^2``. ``t_hi`` is 1, or with ``max_sigma`` the time
  whose noise is that pixel sigma, ``cosine_time(alpha_bar_of_sigma(max_sigma))``: a small
  model then spends its capacity on the noise levels one-shot denoising uses.

  Args:
    eps_fn: the model, ``eps_fn(x_t, t)`` with ``t`` (N,) float32.
    key: the key of the times and the noise (used once).
    images: clean images in [0, 1], (N, H, W, C).
    schedule: only ``"cosine"``, the continuous cosine schedule.
    max_sigma: the largest pixel sigma to train at, or None for every time up to 1.

  Returns:
    ``(loss, {"eps_mse": loss})``, for ``jax.value_and_grad(..., has_aux=True)``.
  """
  if schedule != "cosine":
    raise InputError(
      f"diffusion_loss trains on the continuous 'cosine' schedule only, got {schedule!r}"
    )
  t_hi = 1.0
  if max_sigma is not None:
    t_hi = float(cosine_time(alpha_bar_of_sigma(_check_sigma(max_sigma))))
    if t_hi <= T_MIN:
      raise InputError(
        f"max_sigma {max_sigma} leaves no times to train at; use a max_sigma above "
        f"{float(sigma_of_alpha_bar(cosine_alpha_bar(T_MIN))):.3g}"
      )
  images = jnp.asarray(images, jnp.float32)
  n = images.shape[0]
  t_key, eps_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (n,), jnp.float32, T_MIN, t_hi)
  ab = cosine_alpha_bar(t).reshape((n,) + (1,) * (images.ndim - 1))
  eps = jax.random.normal(eps_key, images.shape, jnp.float32)
  x_t = jnp.sqrt(ab) * (2.0 * images - 1.0) + jnp.sqrt(1.0 - ab) * eps
  loss = jnp.mean((jnp.asarray(eps_fn(x_t, t), jnp.float32) - eps) ** 2)
  return loss, {"eps_mse": loss}


__all__ = [
  "MIN_ALPHA_BAR",
  "T_MIN",
  "EpsFn",
  "OneShot",
  "Timestep",
  "alpha_bar_of_sigma",
  "cosine_alpha_bar",
  "cosine_schedule",
  "cosine_time",
  "diffusion_loss",
  "gaussian_epsilon",
  "gaussian_epsilon_fn",
  "gaussian_mmse_denoiser",
  "linear_schedule",
  "one_shot_denoise",
  "sigma_of_alpha_bar",
  "timestep_for_sigma",
]
