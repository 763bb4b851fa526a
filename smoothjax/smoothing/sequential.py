"""Sequential CERTIFY: each input gets the samples it needs, with the same guarantee.

Fixed-n CERTIFY (Cohen et al. 2019, Algorithm 1) spends ``n`` estimation samples on every
input. An input that the base classifier gets right under nearly every noise draw is
certified at a radius ``r`` as soon as the lower bound on ``pA`` passes the value whose
radius is ``r`` (for Gaussian noise ``Phi(r / sigma)``), and an input headed for
abstention is clear after a few hundred samples. :func:`certify_adaptive` draws the
estimation samples in rounds and stops each input when more samples cannot change what
was asked of it.

**The bound.** The votes are looked at only at the sample sizes ``n_1 < ... < n_J =
n_max`` of a schedule fixed before sampling (:func:`plan`: ``first``, then ``growth``
times the last, 32 looks from 100 to 100,000 by default, plus one look where an input
whose votes all agree reaches the goal radius), and the bound at every look is the
one-sided Clopper-Pearson bound at level ``alpha / J``. Each of the ``J`` events "the
bound at look j exceeds pA" has probability at most ``alpha / J``, so with probability
at least ``1 - alpha`` none happens (the union bound), and the bound at the look where
sampling stopped is valid however that look was chosen from the votes. This is a
confidence sequence on the schedule's looks (Voráček 2024, "Treatment of Statistical
Estimation Problems in Randomized Smoothing for Adversarial Robustness", discusses the
family; Horváth et al. 2022 split alpha over a few stages the same way). It is preferred
here to a mixture martingale valid at every sample because it is tighter at the sample
sizes that matter: at ``pA = 1``, ``sigma = 0.25``, radius 0.75 and ``alpha = 0.001``
it stops after ``ceil(log(alpha / 33) / log(Phi(3)))`` = 7,703 samples, where the
uniform-prior beta-binomial martingale needs about 12,100; and each bound is an exact
Clopper-Pearson bound over the first samples of fixed-n CERTIFY's own sample sequence.
Reading every look's bound at level ``alpha`` instead (the naive version) certifies
wrongly far more often than ``alpha`` when ``pA`` is near a stopping threshold (the
tests show it).

The certificate has the meaning and the failure probability of fixed-n CERTIFY's: with
probability at least ``1 - alpha``, ``g`` is constant on the certified ball. Selection
uses its own ``n0`` samples (key ``fold_in(key, 0)``); estimation sample ``s`` is the one
fixed-n CERTIFY draws with the same key (``fold_in(key, 1)``), so the votes after ``m``
samples are those of :func:`smoothjax.smoothing.certify` with ``n = m``.

**When an input stops** (its ``stop`` attribute; the first that holds, at each look):

* ``"target"``: its radius reached ``target_radius`` (for "is it certified at r?");
* ``"grid"``: its radius reached the largest of ``radii`` (certified accuracy is read
  at these radii only, so nothing more is to be learned);
* ``"abstain"``: abstention is settled: even with ``n_max`` samples voting at the
  upper confidence bound of ``pA``, the bound at the last look would stay below 1/2;
* ``"out_of_reach"``: by the same projection, the radius at ``n_max`` samples would stay
  below ``target_radius``, or below the next radius of ``radii`` above its own;
* ``"tolerance"``: it is certified, and by that projection ``n_max`` samples would raise
  its radius by at most ``tolerance`` (in the spirit of Chen et al. 2022's
  input-specific sample sizes);
* ``"n_max"``: it has had ``n_max`` samples.

The projection uses the Clopper-Pearson upper bound at level ``futility`` (default
0.01); it decides only when to stop, never what is certified, so it cannot affect the
guarantee, only how often an input stops before ``n_max`` samples would have certified
it more.

Each input's samples and stopping depend only on its own key and votes, so its
certificate and sample count are the same whatever the other inputs, the batch size or
the number of devices (with the forward-pass caveat of :mod:`smoothjax.smoothing`).

Example::

  certs = certify_adaptive_batch(fn, images, keys, noise=Gaussian(0.25), n0=100,
                                 n_max=100_000, alpha=0.001, batch_size=1000,
                                 radii=(0.0, 0.25, 0.5, 0.75))
  [(c.prediction, c.radius, c.samples, c.stop) for c in certs]
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from smoothjax.errors import InputError
from smoothjax.smoothing import certificates, stats
from smoothjax.smoothing.certificates import Certificate
from smoothjax.smoothing.votes import (
  ESTIMATION,
  IMAGE_RANGE,
  SELECTION,
  RowCounter,
  check_inputs,
  check_keys,
  fold,
)

STOP_REASONS = ("target", "grid", "abstain", "out_of_reach", "tolerance", "n_max")


@dataclasses.dataclass(frozen=True)
class Goal:
  """What sequential CERTIFY is asked (see the module docstring); checked by :func:`check_goal`."""

  radii: tuple[float, ...] | None = None
  target_radius: float | None = None
  tolerance: float | None = None


def check_goal(radii=None, target_radius=None, tolerance=None) -> Goal:
  """Checks the stopping goals of sequential CERTIFY; returns them as a :class:`Goal`.

  Args:
    radii: radii (>= 0) at which certified accuracy will be read, or None.
    target_radius: the one radius asked about, or None; not with ``radii``.
    tolerance: the radius gain (>= 0) not worth more samples, or None.

  Raises:
    InputError: a bad value, ``radii`` with ``target_radius``, or no goal at all.
  """
  if radii is not None and target_radius is not None:
    raise InputError(
      "pass radii (a grid of radii) or target_radius (one radius), not both; "
      "a target radius is the grid of that one radius"
    )
  if radii is not None:
    if isinstance(radii, str) or not hasattr(radii, "__iter__"):
      raise InputError(f"radii must be a sequence of radii, got {radii!r}; e.g. (0, 0.25, 0.5)")
    radii = tuple(sorted({stats.check_nonnegative("each of radii", r) for r in radii}))
    if not radii:
      raise InputError("radii is empty; pass the radii to certify at, e.g. (0, 0.25, 0.5)")
  if target_radius is not None:
    target_radius = stats.check_nonnegative("target_radius", target_radius)
  if tolerance is not None:
    tolerance = stats.check_nonnegative("tolerance", tolerance)
  if radii is None and target_radius is None and tolerance is None:
    raise InputError(
      "sequential CERTIFY needs a goal to stop at: radii=(0, 0.25, ...), target_radius=r "
      "or tolerance=t (or use smoothing.certify for a fixed n)"
    )
  return Goal(radii=radii, target_radius=target_radius, tolerance=tolerance)


def _radius(noise, p, dim) -> np.ndarray:
  """Primary-norm radius of lower bounds ``p``; -inf where ``p < 1/2`` (abstain)."""
  p = np.asarray(p, np.float64)
  return np.where(p >= 0.5, noise.radius(p, dim=dim), -np.inf)


def decide(k, look: int, *, looks, level: float, noise, dim, goal: Goal, futility=None):
  """The stopping decisions of the inputs still running, at one look.

  Args:
    k: votes of each input's selected class after ``looks[look]`` samples ``(R,)``.
    look: index of the look in ``looks``.
    looks: the schedule (from :func:`plan`).
    level: the level of each look's bounds (from :func:`plan`).
    noise: the noise (for radii).
    dim: the number of values of one input.
    goal: a checked :class:`Goal`.
    futility: the level of the upper bound on ``pA`` behind the projection (default
      ``level``).

  Returns:
    ``(stop, p_lower)``: per input the reason to stop (one of :data:`STOP_REASONS`) or
    ``""`` to go on, and its lower bound at this look.
  """
  n, n_max = looks[look], looks[-1]
  k = np.asarray(k, np.int64)
  p_lower = np.atleast_1d(stats.clopper_pearson_lower(k, n, level))
  radius = _radius(noise, p_lower, dim)
  stop = np.full(len(k), "", dtype=object)

  def mark(where, reason):
    stop[(stop == "") & where] = reason

  if goal.target_radius is not None:
    mark(radius >= goal.target_radius, "target")
  if goal.radii is not None:
    mark(radius >= goal.radii[-1], "grid")
  if n < n_max:
    # The best bound n_max samples could give if the votes ran at the upper bound of pA.
    p_upper = np.atleast_1d(
      stats.clopper_pearson_upper(k, n, level if futility is None else futility)
    )
    k_reach = np.minimum(n_max, np.ceil(p_upper * n_max)).astype(np.int64)
    reach = _radius(noise, stats.clopper_pearson_lower(k_reach, n_max, level), dim)
    mark(reach == -np.inf, "abstain")
    if goal.target_radius is not None:
      mark(reach < goal.target_radius, "out_of_reach")
    if goal.radii is not None:
      grid = np.asarray(goal.radii)
      above = np.searchsorted(grid, radius, side="right")  # the next grid radius > radius
      mark(reach < grid[np.minimum(above, len(grid) - 1)], "out_of_reach")
    if goal.tolerance is not None:
      certified = radius > -np.inf
      gain = np.where(certified, reach - np.where(certified, radius, 0.0), np.inf)
      mark(certified & (gain <= goal.tolerance), "tolerance")
  else:
    mark(np.ones(len(k), bool), "n_max")
  return stop, p_lower


def unanimous_samples(radius: float, level: float, noise, dim) -> int | None:
  """The fewest samples that, all voting for the top class, certify ``radius``.

  The smallest ``n`` with ``noise.radius(clopper_pearson_lower(n, n, level)) >= radius``
  (for Gaussian noise ``ceil(log(level) / log(Phi(radius / sigma)))``, as
  ``clopper_pearson_lower(n, n, level) = level^(1/n)``), or None if no ``n`` below 2^31
  does.
  """

  def certifies(n):
    return bool(_radius(noise, stats.clopper_pearson_lower(n, n, level), dim) >= radius)

  high = 2**31
  if not certifies(high):
    return None
  low = 0  # certifies(low) is False (no samples certify nothing), certifies(high) True
  while high - low > 1:
    mid = (low + high) // 2
    low, high = (low, mid) if certifies(mid) else (mid, high)
  return high


def plan(n_max, *, alpha, noise, dim, goal: Goal, first: int = 100, growth: float = 1.25):
  """The looks and the level of their bounds (see the module docstring).

  The geometric looks of :func:`smoothjax.smoothing.stats.look_schedule`, plus, with a target
  radius or radii, one look at the :func:`unanimous_samples` of the target (or the
  largest of the radii) if that is below ``n_max``: an input whose votes all agree then
  stops exactly when it can. The level is ``alpha / (J + 1)`` for ``J`` geometric looks
  with a goal radius (the goal look is counted even where it falls beyond ``n_max`` or
  on another look), else ``alpha / J``.

  Returns:
    ``(looks, level)``.
  """
  looks = stats.look_schedule(n_max, first=first, growth=growth)
  goal_radius = goal.target_radius if goal.radii is None else goal.radii[-1]
  if goal_radius is None:
    return looks, alpha / len(looks)
  level = alpha / (len(looks) + 1)
  n_goal = unanimous_samples(goal_radius, level, noise, dim)
  if n_goal is not None and n_goal < n_max:
    looks = tuple(sorted({*looks, n_goal}))
  return looks, level


def certify_adaptive_batch(
  logits_fn,
  xs,
  keys,
  *,
  noise,
  n0,
  n_max,
  alpha,
  batch_size,
  radii=None,
  target_radius=None,
  tolerance=None,
  first: int = 100,
  growth: float = 1.25,
  futility: float = 0.01,
  mesh=None,
  value_range=IMAGE_RANGE,
) -> list[Certificate]:
  """Sequential CERTIFY for a batch of inputs (see the module docstring).

  Selection counts ``n0`` votes of every input with ``fold_in(keys[i], 0)``; then rounds
  of estimation samples (``fold_in(keys[i], 1)``) run on the device for all inputs still
  going, up to the next look, until every input has stopped. Entry ``i`` equals
  ``certify_adaptive(..., xs[i], keys[i], ...)``.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits.
    xs: inputs ``(B, *S)``, e.g. images ``(B, H, W, C)``.
    keys: typed PRNG keys ``(B,)``, one per input.
    noise: the noise distribution.
    n0: selection samples per input.
    n_max: the most estimation samples an input may get.
    alpha: failure probability of each certificate, in (0, 1).
    batch_size: forward passes per device-loop step over all inputs together.
    radii: stop an input once its radius reaches the largest of these, or once the next
      of these above its radius is out of reach (certified accuracy at these radii is
      what fixed-n CERTIFY with ``n = n_max`` would give, less the cost of the split
      ``alpha``).
    target_radius: stop once the radius reaches this, or once it is out of reach; not
      with ``radii``.
    tolerance: stop once ``n_max`` samples could raise the radius by at most this much.
    first: the first look (samples).
    growth: the ratio of consecutive looks.
    futility: the level, in (0, 1), of the upper bound on ``pA`` that decides that a
      goal is out of reach or abstention settled. It decides only when to stop, never
      what is certified: larger stops sooner and more often loses a radius that
      ``n_max`` samples would have certified.
    mesh: optional mesh whose ``data`` axis shares out the noise samples.
    value_range: ``(low, high)`` that ``xs`` must lie in (default [0, 1]), or None.

  Returns:
    A list of ``B`` :class:`~smoothjax.smoothing.certificates.Certificate`, with ``samples`` (the
    estimation samples spent) and ``stop`` (why) set.

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  xs = check_inputs(xs, batched=True, what="xs", value_range=value_range)
  keys = check_keys(keys, (xs.shape[0],), "keys")
  n0 = stats.check_count("n0", n0)
  n_max = stats.check_count("n_max", n_max)
  alpha = stats.check_alpha(alpha)
  goal = check_goal(radii, target_radius, tolerance)
  futility = stats.check_alpha(futility, "futility")
  count = RowCounter(
    logits_fn,
    xs,
    noise=noise,
    batch_size=batch_size,
    num_classes=None,
    mesh=mesh,
    nums=(n0, n_max),
    names=("n0", "n_max"),
  )
  num_inputs = xs.shape[0]
  dim = math.prod(xs.shape[1:])
  noise = noise.bind(dim)
  looks, level = plan(
    n_max, alpha=alpha, noise=noise, dim=dim, goal=goal, first=first, growth=growth
  )
  everyone = np.arange(num_inputs)
  selection = count(fold(keys, SELECTION), everyone, 0, n0)
  top = np.argmax(selection, axis=1)  # ties: lowest class index
  estimation_keys = fold(keys, ESTIMATION)
  estimation = np.zeros_like(selection)
  p_lower = np.zeros(num_inputs)
  samples = np.zeros(num_inputs, np.int64)
  stops = np.full(num_inputs, "", dtype=object)
  running = everyone
  drawn = 0
  for look, size in enumerate(looks):
    estimation += count(estimation_keys, running, drawn, size - drawn)
    drawn = size
    stop, bound = decide(
      estimation[running, top[running]],
      look,
      looks=looks,
      level=level,
      noise=noise,
      dim=dim,
      goal=goal,
      futility=futility,
    )
    done = stop != ""
    stopped = running[done]
    p_lower[stopped] = bound[done]
    samples[stopped] = size
    stops[stopped] = stop[done]
    running = running[~done]
    if not len(running):
      break
  return certificates.build(
    noise=noise,
    dim=dim,
    top=top,
    p_lower=p_lower,
    selection=selection,
    estimation=estimation,
    samples=samples,
    stops=stops,
  )


def certify_adaptive(
  logits_fn,
  x,
  key,
  *,
  noise,
  n0,
  n_max,
  alpha,
  batch_size,
  radii=None,
  target_radius=None,
  tolerance=None,
  first: int = 100,
  growth: float = 1.25,
  futility: float = 0.01,
  value_range=IMAGE_RANGE,
) -> Certificate:
  """Sequential CERTIFY for one input: :func:`certify_adaptive_batch` of a batch of one.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits.
    x: one input of any shape ``S``.
    key: a typed PRNG key; selection uses ``fold_in(key, 0)``, estimation
      ``fold_in(key, 1)``.
    noise, n0, n_max, alpha, batch_size, radii, target_radius, tolerance, first, growth,
    futility, value_range: as for :func:`certify_adaptive_batch`.

  Returns:
    A :class:`~smoothjax.smoothing.certificates.Certificate` with ``samples`` and ``stop`` set.

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  x = check_inputs(x, batched=False, what="x", value_range=value_range)
  key = check_keys(key, (), "key")
  return certify_adaptive_batch(
    logits_fn,
    x[None],
    key[None],
    noise=noise,
    n0=n0,
    n_max=n_max,
    alpha=alpha,
    batch_size=batch_size,
    radii=radii,
    target_radius=target_radius,
    tolerance=tolerance,
    first=first,
    growth=growth,
    futility=futility,
    value_range=value_range,
  )[0]


__all__ = [
  "STOP_REASONS",
  "Goal",
  "certify_adaptive",
  "certify_adaptive_batch",
  "check_goal",
  "decide",
  "plan",
  "unanimous_samples",
]
