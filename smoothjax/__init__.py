"""smoothjax: randomized smoothing in JAX and Flax.

The pure core (``noise``, ``stats``, ``smoothing``) works on any
``logits_fn(images) -> logits``; ``data``, ``models``, ``training``,
``checkpointing`` and ``parallel`` train and restore base classifiers;
``results`` and ``analysis`` read, summarise and plot certificates.
"""

from smoothjax import (
  analysis,
  checkpointing,
  data,
  errors,
  models,
  noise,
  parallel,
  results,
  smoothing,
  stats,
  training,
)
from smoothjax.errors import InputError
from smoothjax.noise import Gaussian
from smoothjax.smoothing import Certificate, certify, certify_batch, predict, predict_batch

__version__ = "0.1.0"

__all__ = [
  "Certificate",
  "Gaussian",
  "InputError",
  "analysis",
  "certify",
  "certify_batch",
  "checkpointing",
  "data",
  "errors",
  "models",
  "noise",
  "parallel",
  "predict",
  "predict_batch",
  "results",
  "smoothing",
  "stats",
  "training",
]
