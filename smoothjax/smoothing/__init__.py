"""Randomized smoothing proper: vote counts, confidence bounds, CERTIFY and PREDICT.

* :mod:`~smoothjax.smoothing.fixed`: Cohen et al.'s CERTIFY and PREDICT at fixed ``n``
  (:func:`certify`, :func:`certify_batch`, :func:`predict`, :func:`predict_batch`).
* :mod:`~smoothjax.smoothing.sequential`: sequential CERTIFY, each input taking the
  samples it needs (:func:`certify_adaptive`, :func:`certify_adaptive_batch`).
* :mod:`~smoothjax.smoothing.votes`: the device side, Monte Carlo vote counting.
* :mod:`~smoothjax.smoothing.stats`: the host side, confidence bounds and tests (SciPy).
* :mod:`~smoothjax.smoothing.certificates`: :class:`Certificate`, the outcome for one input.

Every function takes any ``logits_fn(inputs) -> logits``; this package imports only
JAX, NumPy, SciPy, :mod:`smoothjax.noise` and :mod:`smoothjax.devices`.
"""

from smoothjax.smoothing import certificates, fixed, sequential, stats, votes
from smoothjax.smoothing.fixed import (
  ABSTAIN,
  ESTIMATION,
  IMAGE_RANGE,
  PREDICTION,
  SELECTION,
  STOP_REASONS,
  Certificate,
  certify,
  certify_adaptive,
  certify_adaptive_batch,
  certify_batch,
  check_inputs,
  check_keys,
  count_votes,
  fold,
  predict,
  predict_batch,
  sample_counts,
  sample_counts_batch,
)

__all__ = [
  "ABSTAIN",
  "Certificate",
  "certificates",
  "certify",
  "certify_adaptive",
  "certify_adaptive_batch",
  "certify_batch",
  "check_inputs",
  "check_keys",
  "count_votes",
  "ESTIMATION",
  "fixed",
  "fold",
  "IMAGE_RANGE",
  "predict",
  "predict_batch",
  "PREDICTION",
  "sample_counts",
  "sample_counts_batch",
  "SELECTION",
  "sequential",
  "stats",
  "STOP_REASONS",
  "votes",
]
