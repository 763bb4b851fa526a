"""smoothjax: randomized smoothing in JAX and Flax.

The package is layered, and its folders are the layers (``docs/design.md`` has the
rank table that ``tests/test_layers.py`` enforces): each imports only lower ones.

* leaves: ``errors``, ``hashing``, ``locks``, ``stopping``; ``configs`` (shipped configs)
* ``noise``, ``devices``, ``models`` (classifiers, denoisers, diffusion models and
  one-shot diffusion denoising), ``data``
* ``smoothing`` (CERTIFY and PREDICT), ``workdir`` (run files, checkpoints),
  ``published`` (PyTorch checkpoints read without torch, the authors' architectures)
* ``results`` (result files), ``objectives`` (losses, attacks, generation)
* ``analysis`` (tables, plots, pictures), ``training``
* ``jobs`` (certify, attack, generate, compare, convert: callable from Python)
* ``cli`` (the programs: flags to a job's options)

The names here are the ones a notebook starts from: Cohen et al.'s CERTIFY and PREDICT
(fixed ``n`` and sequential) on any ``logits_fn``, the noise families and
:class:`InputError`.
"""

from smoothjax import (
  _moved,
  analysis,
  data,
  devices,
  errors,
  hashing,
  jobs,
  locks,
  models,
  noise,
  objectives,
  published,
  results,
  smoothing,
  stopping,
  training,
  workdir,
)
from smoothjax.errors import InputError
from smoothjax.noise import ExpInf, Gaussian, Laplace, Uniform
from smoothjax.smoothing import (
  ABSTAIN,
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
  "ABSTAIN",
  "Certificate",
  "ExpInf",
  "Gaussian",
  "InputError",
  "Laplace",
  "Uniform",
  "analysis",
  "certify",
  "certify_adaptive",
  "certify_adaptive_batch",
  "certify_batch",
  "data",
  "devices",
  "errors",
  "hashing",
  "jobs",
  "locks",
  "models",
  "noise",
  "objectives",
  "published",
  "predict",
  "predict_batch",
  "results",
  "smoothing",
  "stopping",
  "training",
  "workdir",
]

_moved.install()


def __getattr__(name: str):
  if name in _moved.MOVED:
    return _moved.module(name)
  raise AttributeError(f"module 'smoothjax' has no attribute {name!r}")
