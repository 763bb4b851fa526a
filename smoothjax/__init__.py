"""smoothjax: randomized smoothing in JAX and Flax.

The pure core (``noise``, ``stats``, ``smoothing``, ``losses``, ``attacks``)
works on any ``logits_fn(inputs) -> logits``; ``data``, ``models``, ``modes``,
``training``, ``checkpointing`` and ``parallel`` train and restore base
classifiers; ``results``, ``locks``, ``analysis`` and ``pictures`` write, read,
summarise and plot certificates and attacks.
"""

from smoothjax import (
  analysis,
  attacks,
  checkpointing,
  data,
  errors,
  locks,
  losses,
  models,
  modes,
  noise,
  parallel,
  pictures,
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
  "attacks",
  "certify",
  "certify_batch",
  "checkpointing",
  "data",
  "errors",
  "locks",
  "losses",
  "models",
  "modes",
  "noise",
  "parallel",
  "pictures",
  "predict",
  "predict_batch",
  "results",
  "smoothing",
  "stats",
  "training",
]
