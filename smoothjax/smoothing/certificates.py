"""The outcome of CERTIFY for one input, from fixed-n or sequential certification.

:class:`Certificate` is what :func:`smoothjax.smoothing.certify` and
:func:`smoothjax.smoothing.certify_adaptive` return; :func:`build` turns the vote
counts and lower bounds of a batch of inputs into certificates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ABSTAIN = -1


@dataclasses.dataclass(frozen=True, eq=False)
class Certificate:
  """The outcome of CERTIFY for one input.

  Attributes:
    prediction: the certified class, or -1 (:data:`ABSTAIN`).
    radius: certified radius in the noise's primary norm (l2 for Gaussian); 0
      when abstaining.
    p_lower: the lower confidence bound on the top class's probability.
    top_class: the class selected from the selection votes, also when abstaining.
    counts: votes per class of the estimation samples (int64, ``(K,)``).
    counts_selection: votes per class of the ``n0`` selection samples.
    radii: certified radius in each norm of :data:`smoothjax.noise.NORMS` (l1, l2,
      linf), directly or by conversion (see :func:`smoothjax.noise.convert_radius`).
    samples: the estimation samples spent (``n`` for fixed-n CERTIFY; the stopping
      sample size for sequential CERTIFY); ``counts`` sums to it.
    stop: why estimation stopped: ``"fixed"`` for fixed-n CERTIFY, else one of
      :data:`smoothjax.smoothing.sequential.STOP_REASONS`.
  """

  prediction: int
  radius: float
  p_lower: float
  top_class: int
  counts: np.ndarray
  counts_selection: np.ndarray
  radii: dict[str, float]
  samples: int
  stop: str = "fixed"

  @property
  def abstained(self) -> bool:
    return self.prediction == ABSTAIN

  def __eq__(self, other):
    if not isinstance(other, Certificate):
      return NotImplemented
    return (
      self.prediction == other.prediction
      and self.radius == other.radius
      and self.p_lower == other.p_lower
      and self.top_class == other.top_class
      and np.array_equal(self.counts, other.counts)
      and np.array_equal(self.counts_selection, other.counts_selection)
      and self.radii == other.radii
      and self.samples == other.samples
      and self.stop == other.stop
    )

  __hash__ = None


def build(*, noise, dim, top, p_lower, selection, estimation, samples, stops) -> list[Certificate]:
  """Certificates of ``B`` inputs from their bounds and votes (host side).

  Cohen et al. abstain iff the bound is below 1/2; exactly 1/2 certifies radius 0.

  Args:
    noise: the noise distribution (its radii).
    dim: the number of values of one input (radius conversions need it).
    top: the selected class of each input ``(B,)``.
    p_lower: the lower bounds on their probabilities ``(B,)``.
    selection: selection votes ``(B, K)``.
    estimation: estimation votes ``(B, K)``.
    samples: estimation samples spent per input ``(B,)``.
    stops: why each input's estimation stopped ``(B,)``.
  """
  p_lower = np.atleast_1d(np.asarray(p_lower, np.float64))
  abstain = p_lower < 0.5
  radii = {
    norm: np.where(abstain, 0.0, np.atleast_1d(r))
    for norm, r in noise.radii(p_lower, dim=dim).items()
  }
  primary = noise.norms[0]
  return [
    Certificate(
      prediction=ABSTAIN if abstain[i] else int(top[i]),
      radius=float(radii[primary][i]),
      p_lower=float(p_lower[i]),
      top_class=int(top[i]),
      counts=estimation[i],
      counts_selection=selection[i],
      radii={norm: float(r[i]) for norm, r in radii.items()},
      samples=int(samples[i]),
      stop=str(stops[i]),
    )
    for i in range(len(p_lower))
  ]
