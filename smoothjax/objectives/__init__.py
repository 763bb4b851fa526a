"""Differentiable functions of a ``logits_fn``: losses, attacks and generation.

* :mod:`~smoothjax.objectives.losses`: the soft smoothed classifier and the training
  objectives of the field (Gaussian, consistency, MACER, ...).
* :mod:`~smoothjax.objectives.attacks`: FGSM, PGD and SmoothAdv as transforms of a loss.
* :mod:`~smoothjax.objectives.generation`: image generation with smoothed and robust
  classifiers, and the fixed-point objective.

Imports only JAX, :mod:`smoothjax.noise` and :mod:`smoothjax.smoothing`.
"""

from smoothjax.objectives import attacks, generation, losses

__all__ = [
  "attacks",
  "generation",
  "losses",
]
