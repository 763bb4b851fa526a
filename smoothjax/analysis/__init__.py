"""Analysis of results: certified-accuracy tables and plots, and pictures of examples.

* :mod:`~smoothjax.analysis.certified`: certified accuracy, ACR, tables and plots.
* :mod:`~smoothjax.analysis.attacks`: accuracy clean and under attack, from attack files.
* :mod:`~smoothjax.analysis.generation`: summaries of generated images per class.
* :mod:`~smoothjax.analysis.comparison`: the table and figure comparing several runs.
* :mod:`~smoothjax.analysis.pictures`: clean and adversarial examples, image grids.
* :mod:`~smoothjax.analysis.tables`: the one Markdown table builder.
"""

from smoothjax.analysis import attacks, certified, comparison, generation, pictures, tables
from smoothjax.analysis.certified import (
  MAX_RADII,
  RunLike,
  abstain_rate,
  acr,
  certified_accuracy,
  clean_accuracy,
  default_max_radius,
  default_radii,
  in_norm,
  plot_certified_accuracy,
  primary_norm,
  radius_step,
  summary,
  table,
)

__all__ = [
  "attacks",
  "comparison",
  "generation",
  "tables",
  "abstain_rate",
  "acr",
  "certified",
  "certified_accuracy",
  "clean_accuracy",
  "default_max_radius",
  "default_radii",
  "in_norm",
  "MAX_RADII",
  "pictures",
  "plot_certified_accuracy",
  "primary_norm",
  "radius_step",
  "RunLike",
  "summary",
  "table",
]
