"""Monte Carlo vote counting, PREDICT and CERTIFY for smoothed classifiers.

The smoothed classifier of a base classifier ``f`` under noise ``q`` is
``g(x) = argmax_c P[f(x + eps) = c]``, ``eps ~ q`` (Cohen, Rosenfeld & Kolter
2019, "Certified Adversarial Robustness via Randomized Smoothing").

* :func:`certify` is their Algorithm 1: count the votes of ``n0`` noise
  samples and take the top class ``cA``; count ``n`` *fresh* samples; bound
  ``pA`` from below with the one-sided Clopper-Pearson bound at level
  ``alpha``; abstain (-1) if the bound is below 1/2, else certify the radius
  ``noise.radius(pA_lower)`` (``sigma * Phi^-1(pA_lower)`` in l2 for
  Gaussian noise). With probability at least ``1 - alpha`` over the sampling,
  ``g(x + delta) = cA`` for every ``||delta|| < radius``.
* :func:`certify_adaptive` and :func:`certify_adaptive_batch` are sequential CERTIFY
  (:mod:`smoothjax.smoothing.sequential`): the same certificate from only the samples each input
  needs, with a bound valid at any stopping time.
* :func:`predict` is their Algorithm 2: top two vote counts ``nA, nB`` of
  ``n`` samples; return ``cA`` if the two-sided binomial test of ``nA`` in
  ``nA + nB`` trials at p = 1/2 has p-value <= ``alpha``, else abstain (-1).

Ties between vote counts go to the lowest class index.

Sampling, forward passes and counting run in one jitted computation that
loops over chunks of ``batch_size`` forward passes on the device, so memory is
bounded by ``batch_size`` and only integer vote counts come back to the host,
where the bounds are computed with SciPy (:mod:`smoothjax.smoothing.stats`).

Key derivation (results depend only on the keys and the settings, never on the
batch size or the number of devices):

* the noise of sample ``s`` (``0 <= s < num``) drawn by :func:`sample_counts`
  with ``key`` is ``noise.sample(jax.random.fold_in(key, s), x.shape)``;
* :func:`certify` counts its ``n0`` selection samples with key
  ``fold_in(key, 0)`` and its ``n`` estimation samples with ``fold_in(key, 1)``;
* :func:`predict` counts its ``n`` samples with ``fold_in(key, 2)``;
* the batched functions take one key per input (derive them as
  ``fold_in(base_key, dataset_index)``) and give for input ``i`` exactly what
  the single-input function gives with ``keys[i]``.

Noise is bit-identical under any chunking; the votes are then identical as long
as the forward pass gives the same logits for an input whatever the batch it is
in (true of the usual models; a backend that picks a different algorithm per
batch shape can, in a near-tie, flip a vote).

Inputs can have any shape ``S``: an image ``(H, W, C)``, a feature vector ``(D,)``, an
audio clip or a sequence of token embeddings. ``logits_fn(x_batch) -> logits`` maps a
float32 batch ``(N, *S)`` of noisy inputs (noise is added as is, never clipped) to
``(N, K)`` logits; the models of :mod:`smoothjax.models` take ``(N, H, W, C)`` images
in [0, 1]. A plain function is a static argument of ``jax.jit``: pass the same function
object every time to reuse the compiled computation, and note that arrays it closes
over are compiled in as constants. A callable pytree (a ``jax.tree_util.Partial(apply_fn,
params)`` or a Flax NNX module in eval mode) is passed as an argument instead: its
arrays are not baked into the program and new parameter values of the same shapes do
not recompile.

``value_range`` (default ``(0, 1)``, the range of images in this library) is checked on
the clean inputs, so that images in [0, 255] or normalised images are refused before
noise of the wrong scale is added to them; pass the data's own range, or ``None``, for
other data (tabular features, audio, embeddings). Inputs must be finite either way.

A non-finite logit is an error, never a vote: NaN logits would all vote for class 0
(``argmax``), so a broken model would "certify" class 0. The device loop counts them in
an extra bin and the call raises InputError naming the inputs concerned.

Example::

  noise = Gaussian(sigma=0.25)
  fn = jax.tree_util.Partial(apply_fn, params)
  cert = certify(fn, image, jax.random.fold_in(key, index), noise=noise,
                 n0=100, n=100_000, alpha=0.001, batch_size=1000)
  cert.prediction, cert.radius
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from smoothjax.smoothing import certificates, stats
from smoothjax.smoothing.certificates import ABSTAIN, Certificate
from smoothjax.smoothing.sequential import STOP_REASONS, certify_adaptive, certify_adaptive_batch
from smoothjax.smoothing.votes import (
  ESTIMATION,
  IMAGE_RANGE,
  PREDICTION,
  SELECTION,
  check_inputs,
  check_keys,
  count_votes,
  fold,
  sample_counts,
  sample_counts_batch,
)


def certify_batch(
  logits_fn, xs, keys, *, noise, n0, n, alpha, batch_size, mesh=None, value_range=IMAGE_RANGE
):
  """CERTIFY (Cohen et al. 2019, Algorithm 1) for a batch of inputs.

  Selection and estimation votes of all inputs are counted in one device loop,
  with keys ``fold_in(keys[i], 0)`` (``n0`` samples) and ``fold_in(keys[i], 1)``
  (``n`` fresh samples). Entry ``i`` equals ``certify(..., xs[i], keys[i], ...)``.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits.
    xs: inputs ``(B, *S)``, e.g. images ``(B, H, W, C)``.
    keys: typed PRNG keys ``(B,)``, one per input.
    noise: the noise distribution.
    n0: selection samples per input.
    n: estimation samples per input.
    alpha: failure probability of each certificate, in (0, 1).
    batch_size: forward passes per device-loop step over all inputs together.
    mesh: optional mesh whose ``data`` axis shares out the noise samples.
    value_range: ``(low, high)`` that ``xs`` must lie in (default [0, 1]), or None.

  Returns:
    A list of ``B`` :class:`Certificate`.

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  xs = check_inputs(xs, batched=True, what="xs", value_range=value_range)
  keys = check_keys(keys, (xs.shape[0],), "keys")
  return _certify(
    logits_fn, xs, keys, noise=noise, n0=n0, n=n, alpha=alpha, batch_size=batch_size, mesh=mesh
  )


def _certify(logits_fn, xs, keys, *, noise, n0, n, alpha, batch_size, mesh):
  n0 = stats.check_count("n0", n0)
  n = stats.check_count("n", n)
  alpha = stats.check_alpha(alpha)
  phase_keys = jnp.stack([fold(keys, SELECTION), fold(keys, ESTIMATION)])
  selection, estimation = count_votes(
    logits_fn,
    xs,
    phase_keys,
    noise=noise,
    nums=(n0, n),
    names=("n0", "n"),
    batch_size=batch_size,
    num_classes=None,
    mesh=mesh,
  )
  top = np.argmax(selection, axis=1)  # ties: lowest class index
  p_lower = stats.clopper_pearson_lower(estimation[np.arange(len(top)), top], n, alpha)
  return certificates.build(
    noise=noise,
    dim=int(np.prod(xs.shape[1:])),
    top=top,
    p_lower=p_lower,
    selection=selection,
    estimation=estimation,
    samples=np.full(len(top), n),
    stops=np.full(len(top), "fixed"),
  )


def certify(
  logits_fn, x, key, *, noise, n0, n, alpha, batch_size, value_range=IMAGE_RANGE
) -> Certificate:
  """CERTIFY (Cohen et al. 2019, Algorithm 1) for one input.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits.
    x: one input of any shape ``S`` (an ``(H, W, C)`` image, a ``(D,)`` vector, ...).
    key: a typed PRNG key; selection uses ``fold_in(key, 0)``, estimation
      ``fold_in(key, 1)``.
    noise: the noise distribution.
    n0: selection samples.
    n: estimation samples.
    alpha: failure probability of the certificate, in (0, 1).
    batch_size: forward passes per device-loop step.
    value_range: ``(low, high)`` that ``x`` must lie in (default [0, 1], images), or
      None to accept any finite values (tabular data, audio, embeddings).

  Returns:
    A :class:`Certificate`.

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  x = check_inputs(x, batched=False, what="x", value_range=value_range)
  key = check_keys(key, (), "key")
  return _certify(
    logits_fn,
    x[None],
    key[None],
    noise=noise,
    n0=n0,
    n=n,
    alpha=alpha,
    batch_size=batch_size,
    mesh=None,
  )[0]


def predict_batch(
  logits_fn, xs, keys, *, noise, n, alpha, batch_size, mesh=None, value_range=IMAGE_RANGE
) -> np.ndarray:
  """PREDICT (Cohen et al. 2019, Algorithm 2) for a batch of inputs.

  Input ``i`` is counted with key ``fold_in(keys[i], 2)``.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits.
    xs: inputs ``(B, *S)``, e.g. images ``(B, H, W, C)``.
    keys: typed PRNG keys ``(B,)``, one per input.
    noise: the noise distribution.
    n: samples per input.
    alpha: probability of returning a class other than ``g(x)``, in (0, 1).
    batch_size: forward passes per device-loop step over all inputs together.
    mesh: optional mesh whose ``data`` axis shares out the noise samples.
    value_range: ``(low, high)`` that ``xs`` must lie in (default [0, 1]), or None.

  Returns:
    int64 array ``(B,)`` of predicted classes, -1 where abstaining.

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  xs = check_inputs(xs, batched=True, what="xs", value_range=value_range)
  keys = check_keys(keys, (xs.shape[0],), "keys")
  return _predict(
    logits_fn, xs, keys, noise=noise, n=n, alpha=alpha, batch_size=batch_size, mesh=mesh
  )


def _predict(logits_fn, xs, keys, *, noise, n, alpha, batch_size, mesh):
  n = stats.check_count("n", n)
  alpha = stats.check_alpha(alpha)
  (counts,) = count_votes(
    logits_fn,
    xs,
    fold(keys, PREDICTION)[None],
    noise=noise,
    nums=(n,),
    names=("n",),
    batch_size=batch_size,
    num_classes=None,
    mesh=mesh,
  )
  rows = np.arange(xs.shape[0])
  top = np.argmax(counts, axis=1)  # ties: lowest class index
  runner_up = counts.copy()
  runner_up[rows, top] = -1
  n_b = np.maximum(runner_up.max(axis=1), 0)  # 0 when there is a single class
  pvalue = np.atleast_1d(stats.binom_pvalue(counts[rows, top], n_b))
  return np.where(pvalue <= alpha, top, ABSTAIN).astype(np.int64)


def predict(logits_fn, x, key, *, noise, n, alpha, batch_size, value_range=IMAGE_RANGE) -> int:
  """PREDICT (Cohen et al. 2019, Algorithm 2) for one input.

  Args:
    logits_fn: ``(N, *S) -> (N, K)`` base classifier logits.
    x: one input of any shape ``S`` (an ``(H, W, C)`` image, a ``(D,)`` vector, ...).
    key: a typed PRNG key; the samples use ``fold_in(key, 2)``.
    noise: the noise distribution.
    n: number of samples.
    alpha: probability of returning a class other than ``g(x)``, in (0, 1).
    batch_size: forward passes per device-loop step.
    value_range: ``(low, high)`` that ``x`` must lie in (default [0, 1], images), or
      None to accept any finite values.

  Returns:
    The predicted class, or -1 (:data:`ABSTAIN`).

  Raises:
    InputError: on bad arguments, or if ``logits_fn`` returned a non-finite logit.
  """
  x = check_inputs(x, batched=False, what="x", value_range=value_range)
  key = check_keys(key, (), "key")
  return int(
    _predict(
      logits_fn,
      x[None],
      key[None],
      noise=noise,
      n=n,
      alpha=alpha,
      batch_size=batch_size,
      mesh=None,
    )[0]
  )


__all__ = [
  "ABSTAIN",
  "IMAGE_RANGE",
  "STOP_REASONS",
  "Certificate",
  "certify",
  "certify_adaptive",
  "certify_adaptive_batch",
  "certify_batch",
  "predict",
  "predict_batch",
  "sample_counts",
  "sample_counts_batch",
]
