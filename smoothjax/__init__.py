"""smoothjax: randomized smoothing in JAX and Flax.

The pure core (``noise``, ``stats``, ``votes``, ``certificates``, ``sequential``,
``smoothing``, ``losses``, ``attacks``, ``generation``) works on any
``logits_fn(inputs) -> logits``; ``data``, ``models``, ``modes``, ``optim``,
``pipeline`` (training input), ``training``, ``workdir``, ``checkpointing`` and
``parallel`` train and restore base classifiers (``models.transforms``: folded BatchNorm
and bfloat16 for evaluation; ``numerics``: matmul precision and deterministic GPU
operations; ``sizing``: step sizes from device memory); ``results``, ``result_reader``,
``outputs``, ``locks``, ``analysis`` and ``pictures`` write, read, summarise and plot
certificates and attacks; ``hashing`` fingerprints models, checkpoints and inputs.
"""

from smoothjax import (
  analysis,
  attacks,
  certificates,
  checkpointing,
  data,
  errors,
  generation,
  hashing,
  locks,
  losses,
  models,
  modes,
  noise,
  numerics,
  optim,
  outputs,
  parallel,
  pictures,
  pipeline,
  result_reader,
  results,
  sequential,
  sizing,
  smoothing,
  stats,
  training,
  workdir,
)
from smoothjax.errors import InputError
from smoothjax.noise import Gaussian
from smoothjax.smoothing import (
  Certificate,
  certify,
  certify_adaptive,
  certify_adaptive_batch,
  certify_batch,
  predict,
  predict_batch,
)

__version__ = "0.1.0"

__all__ = [
  "Certificate",
  "Gaussian",
  "InputError",
  "analysis",
  "attacks",
  "certificates",
  "certify",
  "certify_adaptive",
  "certify_adaptive_batch",
  "certify_batch",
  "checkpointing",
  "data",
  "errors",
  "generation",
  "hashing",
  "locks",
  "losses",
  "models",
  "modes",
  "noise",
  "numerics",
  "optim",
  "outputs",
  "parallel",
  "pictures",
  "pipeline",
  "predict",
  "predict_batch",
  "result_reader",
  "results",
  "sequential",
  "sizing",
  "smoothing",
  "stats",
  "training",
  "votes",
  "workdir",
]
