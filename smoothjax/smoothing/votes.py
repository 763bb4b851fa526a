"""Monte Carlo vote counting: the device side of CERTIFY and PREDICT.

:func:`sample_counts` and :func:`sample_counts_batch` count the votes of a base
classifier over noisy copies of inputs in one jitted loop over chunks of
``batch_size`` forward passes (``lax.fori_loop``), sharded over a mesh's ``data``
axis; only the integer counts leave the device. The noise of sample ``s`` drawn
with ``key`` is ``noise.sample(fold_in(key, s), x.shape)``, so the counts do not
depend on the chunk size or the number of devices. :mod:`smoothjax.smoothing`
builds CERTIFY and PREDICT on :func:`count_votes`. See :mod:`smoothjax.smoothing`
for ``logits_fn``, ``value_range`` and non-finite logits.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from smoothjax.devices.parallel import DATA_AXIS
from smoothjax.errors import InputError
from smoothjax.noise import Noise
from smoothjax.smoothing import stats

# Slack (relative to the width of value_range) for values that left it through rounding.
_RANGE_SLACK = 1e-6
_INT32_MAX = 2**31 - 1
# Inputs up to this magnitude stay finite once noise (below float32 max / 120, see
# noise.MAX_SCALE) is added.
_MAX_INPUT = float(np.finfo(np.float32).max) / 2
IMAGE_RANGE = (0.0, 1.0)
# The tags folded into an input's key, one per use of it, so that no two uses share
# random numbers: CERTIFY's selection and estimation samples and PREDICT's samples
# (smoothjax.smoothing), the attacks of smoothjax.jobs.attack (their random starts and,
# against the smoothed classifier, their noise). The one table of them.
KEY_TAGS = {"selection": 0, "estimation": 1, "prediction": 2, "attack": 3}
SELECTION, ESTIMATION, PREDICTION, ATTACK = (
  KEY_TAGS[use] for use in ("selection", "estimation", "prediction", "attack")
)


# --------------------------------------------------------------------------
# Device side: one jitted loop over chunks of (phase, input, sample) triples.


def _count_votes(fn_static, fn_dynamic, xs, keys, *, noise, nums, batch_size, num_classes, mesh):
  """Votes ``(P, B, K)`` for phases ``p`` with ``nums[p]`` samples of every input.

  ``keys`` is ``(P, B)``: the key of phase ``p`` of input ``b``. The triples
  (p, b, s) are enumerated phase by phase, sample-major within a phase, and
  processed ``batch_size`` at a time; the noise of a triple depends only on
  ``keys[p, b]`` and ``s``, so the chunking does not change it.
  """
  fn = fn_dynamic if fn_static is None else fn_static
  num_phases, num_inputs = keys.shape
  flat_keys = keys.reshape(-1)
  input_shape = xs.shape[1:]
  # Checked while tracing, so a cached computation costs nothing per call.
  num_classes = _num_classes(fn, input_shape, num_classes)
  # Bin `num_classes` counts the samples whose logits were not all finite.
  bins = num_classes + 1
  ends = np.cumsum([num_inputs * n for n in nums])
  starts = np.concatenate([[0], ends[:-1]])
  total = int(ends[-1])
  num_chunks = -(-total // batch_size)
  chunk_sharding = None if mesh is None else NamedSharding(mesh, P(DATA_AXIS))

  def constrain(a):
    return a if chunk_sharding is None else jax.lax.with_sharding_constraint(a, chunk_sharding)

  def draw(key, s):
    return noise.sample(jax.random.fold_in(key, s), input_shape, jnp.float32)

  def body(chunk, counts):
    t = constrain(chunk * batch_size + jnp.arange(batch_size, dtype=jnp.int32))
    phase = jnp.zeros_like(t)
    for end in ends[:-1]:
      phase += (t >= end).astype(jnp.int32)
    local = t - jnp.asarray(starts, jnp.int32)[phase]
    b = local % num_inputs
    s = local // num_inputs
    eps = jax.vmap(draw)(flat_keys[phase * num_inputs + b], s)
    logits = fn(constrain(xs[b] + eps))
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    votes = jnp.where(finite, jnp.argmax(logits, axis=-1), num_classes).astype(jnp.int32)
    # The padding triples past `total` fall in range but add 0.
    slot = (phase * num_inputs + b) * bins + votes
    return counts.at[slot].add((t < total).astype(jnp.int32))

  counts = jnp.zeros(num_phases * num_inputs * bins, jnp.int32)
  counts = jax.lax.fori_loop(0, num_chunks, body, counts)
  counts = counts.reshape(num_phases, num_inputs, bins)
  if mesh is not None:
    counts = jax.lax.with_sharding_constraint(counts, NamedSharding(mesh, P()))
  return counts


_count_votes_jit = jax.jit(
  _count_votes,
  static_argnames=("fn_static", "noise", "nums", "batch_size", "num_classes", "mesh"),
)


def _count_rows(
  fn_static,
  fn_dynamic,
  xs,
  keys,
  rows,
  num_rows,
  start,
  num,
  *,
  noise,
  batch_size,
  num_classes,
  mesh,
):
  """Votes ``(B, K + 1)`` of samples ``start .. start + num - 1`` of inputs ``rows[:num_rows]``.

  Everything but the shapes is dynamic (the rows, their number, the sample range, and so
  the number of chunks), so the rounds of sequential CERTIFY reuse one computation per
  chunk size. The triples (row, sample) are enumerated sample-major and processed
  ``batch_size`` at a time; the noise of sample ``s`` of input ``b`` depends only on
  ``keys[b]`` and ``s``. Inputs not in ``rows[:num_rows]`` get zero counts.
  """
  fn = fn_dynamic if fn_static is None else fn_static
  num_inputs = xs.shape[0]
  input_shape = xs.shape[1:]
  num_classes = _num_classes(fn, input_shape, num_classes)
  bins = num_classes + 1
  total = num_rows * num
  num_chunks = (total + batch_size - 1) // batch_size
  chunk_sharding = None if mesh is None else NamedSharding(mesh, P(DATA_AXIS))

  def constrain(a):
    return a if chunk_sharding is None else jax.lax.with_sharding_constraint(a, chunk_sharding)

  def draw(key, s):
    return noise.sample(jax.random.fold_in(key, s), input_shape, jnp.float32)

  def body(chunk, counts):
    t = constrain(chunk * batch_size + jnp.arange(batch_size, dtype=jnp.int32))
    b = rows[t % num_rows]
    s = start + t // num_rows
    eps = jax.vmap(draw)(keys[b], s)
    logits = fn(constrain(xs[b] + eps))
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    votes = jnp.where(finite, jnp.argmax(logits, axis=-1), num_classes).astype(jnp.int32)
    return counts.at[b * bins + votes].add((t < total).astype(jnp.int32))

  counts = jnp.zeros(num_inputs * bins, jnp.int32)
  counts = jax.lax.fori_loop(0, num_chunks, body, counts)
  counts = counts.reshape(num_inputs, bins)
  if mesh is not None:
    counts = jax.lax.with_sharding_constraint(counts, NamedSharding(mesh, P()))
  return counts


_count_rows_jit = jax.jit(
  _count_rows, static_argnames=("fn_static", "noise", "batch_size", "num_classes", "mesh")
)


@jax.jit
def _range_stats(x):
  return jnp.all(jnp.isfinite(x)), jnp.min(x), jnp.max(x)


# --------------------------------------------------------------------------
# Host side: validation, dispatch, statistics.


def _check_value_range(value_range):
  """None, or ``(low, high)`` finite numbers with ``low < high``, as floats."""
  if value_range is None:
    return None
  pair = tuple(value_range) if isinstance(value_range, tuple | list) else ()
  numeric = len(pair) == 2 and all(
    isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair
  )
  lo, hi = (float(v) for v in pair) if numeric else (math.nan, math.nan)
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise InputError(
      f"value_range must be None or (low, high) with finite low < high, got {value_range!r}; "
      "e.g. value_range=(0, 1) for images"
    )
  return lo, hi


def check_inputs(x, *, batched: bool, what: str, value_range):
  """Checks a non-empty finite float array (a batch if ``batched``); returns it."""
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    x = np.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(f"{what} must be a float array, got dtype {x.dtype}")
  if x.size == 0 or (batched and x.ndim == 0):
    layout = "batch (B, ...) of inputs" if batched else "array"
    raise InputError(f"{what} must be a non-empty {layout}, got shape {tuple(x.shape)}")
  value_range = _check_value_range(value_range)
  if isinstance(x, jax.Array):
    finite, lo, hi = jax.device_get(_range_stats(x))
  else:
    finite, lo, hi = np.all(np.isfinite(x)), np.min(x), np.max(x)
  lo, hi = float(lo), float(hi)
  if not finite:
    raise InputError(f"{what} contains NaN or infinite values; clean the input")
  if value_range is not None:
    low, high = value_range
    slack = _RANGE_SLACK * (high - low)
    if lo < low - slack or hi > high + slack:
      raise InputError(
        f"{what} values span [{lo:.4g}, {hi:.4g}], outside value_range=({low:g}, {high:g}); "
        "scale images to [0, 1], or pass value_range=(low, high) or None for other data"
      )
  if max(-lo, hi) > _MAX_INPUT:
    raise InputError(
      f"{what} values reach {max(-lo, hi):.3g}, beyond {_MAX_INPUT:.3g} where adding noise "
      "overflows float32; rescale the inputs"
    )
  return x


def check_keys(keys, shape: tuple[int, ...], what: str):
  if not (isinstance(keys, jax.Array) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)):
    raise InputError(f"{what} must be a typed PRNG key array from jax.random.key(seed)")
  if keys.shape != shape:
    raise InputError(f"{what} must have shape {shape}, got {keys.shape}")
  return keys


def _split_fn(logits_fn):
  """(static, dynamic): a callable pytree with leaves travels as an argument."""
  if not callable(logits_fn):
    raise InputError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
  leaves = jax.tree.leaves(logits_fn)
  if len(leaves) == 1 and leaves[0] is logits_fn:
    return logits_fn, None
  return None, logits_fn


def _num_classes(logits_fn, input_shape, num_classes) -> int:
  """The number of classes: ``num_classes``, or by default the logits width."""
  probe = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  out = jax.eval_shape(logits_fn, probe)
  if not hasattr(out, "shape") or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 1:
    got = getattr(out, "shape", type(out).__name__)
    batch = f"(N, {', '.join(map(str, input_shape))})" if input_shape else "(N,)"
    raise InputError(
      f"logits_fn must map a batch {batch} of inputs to (N, K) logits, got {got} for N = 2; "
      "pass one input to certify/predict/sample_counts and a batch to the *_batch functions"
    )
  width = int(out.shape[1])
  if num_classes is None:
    return width
  if num_classes < width:
    raise InputError(
      f"num_classes={num_classes} is smaller than the {width} logits of logits_fn; "
      "leave it unset or raise it"
    )
  return num_classes


def _check_size(num_inputs: int, nums, names, batch_size: int) -> None:
  """Refuses calls whose sample indices would overflow the device loop's int32."""
  per_input = sum(nums)
  limit = _INT32_MAX - batch_size
  if num_inputs * per_input <= limit:
    return
  counted = " + ".join(names)
  if per_input > limit:
    most = limit - sum(nums[:-1])
    raise InputError(
      f"{counted} = {per_input} samples per input overflow the int32 sample indices of "
      f"one call; lower {names[-1]} to at most {most}"
    )
  raise InputError(
    f"{num_inputs} inputs x {per_input} samples ({counted}) = {num_inputs * per_input} "
    f"forward passes overflow the int32 sample indices of one call; pass at most "
    f"{limit // per_input} inputs per call, or lower {names[-1]}"
  )


def _check_finite_logits(bad: np.ndarray, num_inputs: int) -> None:
  """Raises if any sample of an input had non-finite logits (``bad``: counts ``(B,)``)."""
  if not bad.any():
    return
  where = np.flatnonzero(bad)
  if num_inputs == 1:
    which = "the input"
  else:
    shown = ", ".join(map(str, where[:10])) + (", ..." if len(where) > 10 else "")
    which = f"input(s) {shown} of this call's {num_inputs}"
  raise InputError(
    f"logits_fn returned NaN or infinite logits for {which} ({int(bad.sum())} noisy "
    "samples); the model is broken (retrain it, or check its weights)"
  )


def count_votes(logits_fn, xs, phase_keys, *, noise, nums, names, batch_size, num_classes, mesh):
  """Runs the jitted vote counting; returns host int64 counts ``(P, B, K)``.

  ``names`` are the settings giving ``nums`` (for error messages). Raises InputError if
  any logits of a counted sample were not finite.
  """
  if not isinstance(noise, Noise):
    raise InputError(f"noise must be a smoothjax.noise.Noise, got {type(noise).__name__}")
  # Families whose samples depend on the input dimension (expinf) learn it here.
  noise = noise.bind(math.prod(xs.shape[1:]))
  batch_size = stats.check_count("batch_size", batch_size)
  if num_classes is not None:
    num_classes = stats.check_count("num_classes", num_classes)
  total = xs.shape[0] * sum(nums)
  # A chunk larger than the whole job would only compute padding.
  batch_size = min(batch_size, total)
  if mesh is not None:
    shards = _check_mesh(mesh)
    batch_size = -(-batch_size // shards) * shards
  _check_size(xs.shape[0], nums, names, batch_size)
  fn_static, fn_dynamic = _split_fn(logits_fn)
  xs = jnp.asarray(xs, jnp.float32)
  if mesh is not None:
    # Every device draws samples of every input, so inputs and parameters are replicated.
    xs, phase_keys, fn_dynamic = jax.device_put(
      (xs, phase_keys, fn_dynamic), NamedSharding(mesh, P())
    )
  counts = _count_votes_jit(
    fn_static,
    fn_dynamic,
    xs,
    phase_keys,
    noise=noise,
    nums=tuple(nums),
    batch_size=batch_size,
    num_classes=num_classes,
    mesh=mesh,
  )
  if not counts.is_fully_addressable:
    # Replicated over several hosts: every host holds the full result.
    counts = counts.addressable_data(0)
  counts = np.asarray(counts).astype(np.int64)
  _check_finite_logits(counts[..., -1].sum(axis=0), xs.shape[0])
  return counts[..., :-1]


def _check_mesh(mesh) -> int:
  """The size of the mesh's ``data`` axis (1 without a mesh)."""
  if mesh is None:
    return 1
  if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
    raise InputError(f"mesh must be a jax Mesh with a {DATA_AXIS!r} axis (parallel.make_mesh)")
  return mesh.shape[DATA_AXIS]


class RowCounter:
  """Counts votes of chosen inputs over chosen sample ranges, in rounds.

  Sequential CERTIFY counts, round after round, the next samples of the inputs still
  running. The inputs, keys and model go to the device once; each call counts samples
  ``start .. start + num - 1`` of the inputs ``rows`` with one computation per chunk
  size (a power of two up to ``batch_size``, so that a small round does not compute a
  whole chunk of padding), and returns host int64 counts ``(B, K)``, zero outside
  ``rows``. Sample ``s`` of input ``i`` with ``keys[i]`` is the one :func:`sample_counts`
  draws, so the counts do not depend on the rounds, the chunking or the devices.
  """

  def __init__(self, logits_fn, xs, *, noise, batch_size, num_classes, mesh, nums, names):
    if not isinstance(noise, Noise):
      raise InputError(f"noise must be a smoothjax.noise.Noise, got {type(noise).__name__}")
    self._noise = noise.bind(math.prod(xs.shape[1:]))
    self._batch_size = stats.check_count("batch_size", batch_size)
    self._num_classes = (
      None if num_classes is None else stats.check_count("num_classes", num_classes)
    )
    self._shards = _check_mesh(mesh)
    self._mesh = mesh
    batch = -(-self._batch_size // self._shards) * self._shards
    for num, name in zip(nums, names, strict=True):
      _check_size(xs.shape[0], (num,), (name,), batch)
    self._fn_static, fn_dynamic = _split_fn(logits_fn)
    self._num_inputs = xs.shape[0]
    xs = jnp.asarray(xs, jnp.float32)
    if mesh is not None:
      xs, fn_dynamic = jax.device_put((xs, fn_dynamic), NamedSharding(mesh, P()))
    self._xs, self._fn_dynamic = xs, fn_dynamic

  def _chunk(self, total: int) -> int:
    chunk = min(self._batch_size, 1 << max(0, (total - 1).bit_length()))
    return -(-chunk // self._shards) * self._shards

  def __call__(self, keys, rows: np.ndarray, start: int, num: int) -> np.ndarray:
    rows = np.asarray(rows, np.int32)
    padded = np.zeros(self._num_inputs, np.int32)
    padded[: len(rows)] = rows
    args = (keys, jnp.asarray(padded))
    if self._mesh is not None:
      args = jax.device_put(args, NamedSharding(self._mesh, P()))
    counts = _count_rows_jit(
      self._fn_static,
      self._fn_dynamic,
      self._xs,
      *args,
      np.int32(len(rows)),
      np.int32(start),
      np.int32(num),
      noise=self._noise,
      batch_size=self._chunk(len(rows) * num),
      num_classes=self._num_classes,
      mesh=self._mesh,
    )
    if not counts.is_fully_addressable:
      counts = counts.addressable_data(0)
    counts = np.asarray(counts).astype(np.int64)
    _check_finite_logits(counts[:, -1], self._num_inputs)
    return counts[:, :-1]


def fold(keys, tag: int):
  return jax.vmap(lambda k: jax.random.fold_in(k, tag))(keys)


def sample_counts(
  logits_fn, x, key, *, noise, num, batch_size, num_classes=None, value_range=IMAGE_RANGE
) -> jax.Array:
  """Votes of the base classifier over ``num`` noisy copies of one input.

  The noise of sample ``s`` is ``noise.sample(fold_in(key, s), x.shape)``, so the
  counts do not depend on ``batch_size``.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits (see module doc).
    x: one input of any shape ``S`` (an ``(H, W, C)`` image, a ``(D,)`` vector, ...).
    key: a typed PRNG key.
    noise: the noise distribution.
    num: number of noise samples.
    batch_size: forward passes per step of the device loop.
    num_classes: length of the result; default the logits width.
    value_range: ``(low, high)`` that ``x`` must lie in (default [0, 1], images), or
      None to accept any finite values.

  Returns:
    int32 array ``(num_classes,)`` of votes, summing to ``num``.

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  x = check_inputs(x, batched=False, what="x", value_range=value_range)
  key = check_keys(key, (), "key")
  num = stats.check_count("num", num)
  counts = count_votes(
    logits_fn,
    x[None],
    key.reshape(1, 1),
    noise=noise,
    nums=(num,),
    names=("num",),
    batch_size=batch_size,
    num_classes=num_classes,
    mesh=None,
  )
  return jnp.asarray(counts[0, 0], jnp.int32)


def sample_counts_batch(
  logits_fn,
  xs,
  keys,
  *,
  noise,
  num,
  batch_size,
  num_classes=None,
  mesh=None,
  value_range=IMAGE_RANGE,
) -> jax.Array:
  """Votes over ``num`` noisy copies of each of ``B`` inputs, one key per input.

  Row ``i`` equals ``sample_counts(logits_fn, xs[i], keys[i], ...)``.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits.
    xs: inputs ``(B, *S)``, e.g. images ``(B, H, W, C)``.
    keys: typed PRNG keys ``(B,)``, e.g. ``fold_in(base_key, dataset_index)``.
    noise: the noise distribution.
    num: number of noise samples per input.
    batch_size: forward passes per step over all inputs together (rounded up to
      a multiple of the mesh's ``data`` axis size).
    num_classes: number of columns; default the logits width.
    mesh: optional mesh (:func:`smoothjax.devices.parallel.make_mesh`) whose ``data``
      axis shares out the noise samples.
    value_range: ``(low, high)`` that ``xs`` must lie in (default [0, 1]), or None.

  Returns:
    int32 array ``(B, num_classes)``.

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  xs = check_inputs(xs, batched=True, what="xs", value_range=value_range)
  keys = check_keys(keys, (xs.shape[0],), "keys")
  num = stats.check_count("num", num)
  counts = count_votes(
    logits_fn,
    xs,
    keys[None],
    noise=noise,
    nums=(num,),
    names=("num",),
    batch_size=batch_size,
    num_classes=num_classes,
    mesh=mesh,
  )
  return jnp.asarray(counts[0], jnp.int32)


__all__ = [
  "IMAGE_RANGE",
  "RowCounter",
  "check_inputs",
  "check_keys",
  "count_votes",
  "fold",
  "sample_counts",
  "sample_counts_batch",
]
