"""Certified accuracy curves, average certified radius, tables and plots.

Certified accuracy at radius r is the fraction of test inputs whose smoothed
prediction is correct and certified with radius at least r (Cohen, Rosenfeld
& Kolter 2019, Section 4; their ``analyze.py`` computes
``(df["correct"] & (df["radius"] >= r)).mean()``, matched here exactly).
The average certified radius, ACR (Zhai et al. 2020, "MACER"), is the mean over
all inputs of the radius, counting abstentions and wrong predictions as 0.

Every function takes a :class:`~smoothjax.results.Results` (or, for several
runs, a mapping from run name to a ``Results`` or to the path of a result file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

from smoothjax import noise as noise_lib
from smoothjax.analysis import tables
from smoothjax.errors import InputError
from smoothjax.results import (
  ABSTAIN,
  RADIUS_COLUMNS,
  Results,
  check_output_path,
  read_results,
  read_settings,
)

__all__ = [
  "Results",
  "abstain_rate",
  "acr",
  "certified_accuracy",
  "clean_accuracy",
  "default_max_radius",
  "default_radii",
  "in_norm",
  "plot_certified_accuracy",
  "primary_norm",
  "radius_step",
  "read_results",
  "summary",
  "table",
]

RunLike = Results | str | os.PathLike
_FORMATS = ("markdown", "latex", "tsv")
# More radii than this make a table nobody can read (and a radius of 1e5 at step 0.25 would
# make 400,001 columns): the grid functions refuse, radius_step picks a coarser step.
MAX_RADII = 1000
# Steps of readable tables, as Cohen et al.'s 0.25 and its coarser multiples.
_NICE_STEPS = (0.25, 0.5, 1.0, 2.0, 2.5, 5.0)


def primary_norm(settings: Mapping | None) -> str:
  """The norm of the ``radius`` column of a result file, from its settings file.

  Files of this library record it (``noise_norm``), or at least the noise; files
  without settings (Cohen et al.'s, which smoothed with Gaussian noise) are l2.
  """
  settings = settings or {}
  norm = settings.get("noise_norm")
  if norm in noise_lib.NORMS:
    return norm
  spec = settings.get("noise")
  family = noise_lib.FAMILIES.get(noise_lib.family_name(spec)) if isinstance(spec, str) else None
  return family.norms[0] if family is not None else "l2"


def in_norm(results: RunLike, norm: str) -> Results:
  """The results with ``radius`` holding the certified radii in ``norm``.

  Taken from the file's ``radius_<norm>`` column, or from ``radius`` where that is
  already in ``norm`` (files without the per-norm columns, Cohen et al.'s among them,
  hold their noise's primary norm: l2 for Gaussian noise).

  Args:
    results: one run's rows, or the path of its result file.
    norm: one of ``l1``, ``l2``, ``linf``.

  Raises:
    InputError: the file has no radii in ``norm``.
  """
  if norm not in noise_lib.NORMS:
    raise InputError(f"unknown norm {norm!r}; choose one of: {', '.join(noise_lib.NORMS)}")
  results = _as_results(results)
  column = RADIUS_COLUMNS[norm]
  if column in results.extra and results.extra[column].dtype.kind == "f":
    return dataclasses.replace(results, radius=results.extra[column])
  if not results.has_radius:
    return results  # a prediction file: no radii in any norm, its table row says so
  where = results.path or "these results"
  settings = None
  if results.path:
    with contextlib.suppress(InputError):
      settings = read_settings(results.path)
  primary = primary_norm(settings)
  if primary != norm:
    raise InputError(
      f"{where} has no {column} column and its radius column is in {primary}; certify "
      f"again (certify.py writes radii in every norm) or choose --norm {primary}"
    )
  return results


def default_max_radius(largest: float) -> float:
  """The right end of a table's radii: past ``largest`` on Cohen et al.'s 0.25 grid.

  Radii below 0.25 (linf radii, small noise) get the next of 1, 2, 2.5, 5 times a
  power of ten instead, so that the table does not shrink to one column.
  """
  if not np.isfinite(largest) or largest <= 0:
    return 0.25
  if largest >= 0.25:
    return float(0.25 * np.ceil(largest / 0.25 - 1e-9))
  scale = 10.0 ** np.floor(np.log10(largest))
  for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
    if mantissa * scale >= largest * (1 - 1e-9):
      return float(mantissa * scale)
  return 0.25


def _as_results(run: RunLike) -> Results:
  if isinstance(run, Results):
    return run
  if isinstance(run, str | os.PathLike):
    return read_results(run)
  raise TypeError(f"expected Results or a path, got {type(run).__name__}")


def _nonempty(results: Results) -> Results:
  if len(results) == 0:
    where = f" in {results.path}" if results.path else ""
    raise InputError(f"no result rows{where}; run certification first or check the file")
  return results


def _radius(results: Results, column: str) -> np.ndarray:
  """The radius column as floats; an InputError for files that have none."""
  if column == "radius":
    if not results.has_radius:
      raise InputError(
        f"{results.path or 'these results'} have no radius column (a predict output?); "
        "certified accuracy needs a certify output"
      )
    return np.asarray(results.radius, dtype=np.float64)
  values = results.extra.get(column)
  if values is None or values.dtype.kind != "f":
    numeric = ["radius"] + sorted(
      c for c, v in results.extra.items() if c.startswith("radius") and v.dtype.kind == "f"
    )
    raise InputError(f"no numeric radius column {column!r}; choose one of {numeric}")
  return values


def _certified_radii(results: Results, column: str) -> np.ndarray:
  """Sorted radii of the correctly classified rows (NaN radii never certify)."""
  radius = _radius(_nonempty(results), column)
  radius = radius[(np.asarray(results.correct) == 1) & ~np.isnan(radius)]
  return np.sort(radius)


def certified_accuracy(results: Results, radii, *, column: str = "radius") -> np.ndarray:
  """Fraction of inputs predicted correctly with certified radius ``>= r``, for each r.

  Cohen et al. (2019), ``analyze.py``: ``(correct & (radius >= r)).mean()`` over
  all rows, so abstentions and wrong predictions count against the accuracy.

  Args:
    results: one run's rows.
    radii: a radius or an array of radii.
    column: the radius column, e.g. ``radius_l1`` for another norm.

  Returns:
    Float array with the shape of ``radii``.
  """
  radii = np.asarray(radii, dtype=np.float64)
  certified = _certified_radii(results, column)
  # searchsorted(left) counts radii < r, so the rest are >= r: ties certify.
  count = len(certified) - np.searchsorted(certified, radii, side="left")
  return count / len(results)


def acr(results: Results, *, column: str = "radius") -> float:
  """Average certified radius: mean over all rows of radius, 0 if abstained or wrong.

  Zhai et al. (2020), "MACER: Attack-free and Scalable Robust Training via
  Maximizing Certified Radius".

  Args:
    results: one run's rows.
    column: the radius column.

  Returns:
    The ACR.
  """
  return float(np.sum(_certified_radii(results, column)) / len(results))


def abstain_rate(results: Results) -> float:
  """Fraction of rows where the smoothed classifier abstained (prediction -1)."""
  return float(np.mean(np.asarray(_nonempty(results).predict) == ABSTAIN))


def clean_accuracy(results: Results) -> float:
  """Fraction of rows predicted correctly by the smoothed classifier, abstaining counts wrong.

  For a certify output this equals the certified accuracy at radius 0; it also
  works for a predict output, which has no radii.
  """
  return float(np.mean(np.asarray(_nonempty(results).correct) == 1))


def radius_step(max_radius: float, max_columns: int = 17) -> float:
  """The finest step of 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, ... giving at most ``max_columns`` radii.

  Cohen et al.'s tables step by 0.25 up to 4 (17 radii); larger radii get a
  coarser step, so a table stays readable whatever the largest radius.

  Args:
    max_radius: the largest radius of the table, finite and >= 0.
    max_columns: the most radii wanted (0 included), at least 2.

  Returns:
    The step.
  """
  if not (np.isfinite(max_radius) and max_radius >= 0):
    raise InputError(f"max_radius must be a finite number >= 0, got {max_radius}")
  # Below Cohen et al.'s grid (linf radii are often of order 0.001) the steps shrink too.
  scale = 1.0
  if 0 < max_radius < 0.25:
    scale = 10.0 ** (np.floor(np.log10(max_radius)) - 2)
  while True:
    for step in _NICE_STEPS:
      if np.floor(max_radius / (step * scale) + 1e-9) + 1 <= max(max_columns, 2):
        return step * scale
    scale *= 10.0


def default_radii(max_radius: float, step: float = 0.25) -> np.ndarray:
  """Radii 0, step, 2 step, ... up to ``max_radius`` (included), as in Cohen et al.'s tables.

  Args:
    max_radius: the largest radius, at least 0.
    step: the spacing, positive; at most :data:`MAX_RADII` radii result (see
      :func:`radius_step` for a step that keeps a table short).

  Returns:
    Float array of radii.
  """
  if not (np.isfinite(max_radius) and max_radius >= 0):
    raise InputError(f"max_radius must be a finite number >= 0, got {max_radius}")
  if not (np.isfinite(step) and step > 0):
    raise InputError(f"radius step must be a positive number, got {step}")
  count = int(np.floor(max_radius / step + 1e-9)) + 1
  if count > MAX_RADII:
    raise InputError(
      f"radii up to {max_radius:g} in steps of {step:g} make {count} columns, more than "
      f"{MAX_RADII}; use a larger step (e.g. {radius_step(max_radius):g}) or a smaller max_radius"
    )
  # Multiplying (not accumulating) keeps 0.25 * k exact and the last radius <= max.
  return np.round(np.arange(count) * step, 12)


def summary(results: RunLike, radii, *, column: str = "radius") -> dict:
  """The headline numbers of one run, JSON-serialisable.

  Args:
    results: one run's rows, or the path of its result file.
    radii: radii at which to report certified accuracy.
    column: the radius column.

  Returns:
    A dict with ``count``, ``radii``, ``certified_accuracy`` (one per radius),
    ``acr``, ``clean_accuracy`` and ``abstain_rate``. For a predict output
    (no radii) ``certified_accuracy`` and ``acr`` are None.
  """
  results = _nonempty(_as_results(results))
  radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
  certify = column != "radius" or results.has_radius
  return {
    "count": len(results),
    "radii": radii.tolist(),
    "certified_accuracy": (
      certified_accuracy(results, radii, column=column).tolist() if certify else None
    ),
    "acr": acr(results, column=column) if certify else None,
    "clean_accuracy": clean_accuracy(results),
    "abstain_rate": abstain_rate(results),
  }


def _escape_latex(text: str) -> str:
  replacements = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
  }
  return "".join(replacements.get(c, c) for c in text)


def _radius_labels(radii: np.ndarray) -> list[str]:
  """Radii with two decimals (Cohen et al.'s tables), or as many as tell them apart."""
  for decimals in range(2, 10):
    labels = [f"{r:.{decimals}f}" for r in radii]
    if np.allclose([float(x) for x in labels], radii, rtol=0, atol=1e-12):
      return labels
  return [f"{r:.3g}" for r in radii]


def table(
  runs: Mapping[str, RunLike],
  radii,
  *,
  fmt: str = "markdown",
  column: str = "radius",
) -> str:
  """A table of certified accuracy (%) at each radius, ACR and abstain rate (%), one row per run.

  Args:
    runs: run name -> results or path of a result file.
    radii: radii for the certified-accuracy columns.
    fmt: ``markdown``, ``latex`` (a booktabs ``tabular``) or ``tsv``.
    column: the radius column.

  Returns:
    The table text, ending in a newline. Accuracies are percentages with one
    decimal, ACR has three decimals; ``-`` marks numbers a predict output lacks.
  """
  if fmt not in _FORMATS:
    raise InputError(f"unknown table format {fmt!r}; choose one of {list(_FORMATS)}")
  radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
  if radii.size > MAX_RADII:
    raise InputError(f"{radii.size} radii make an unreadable table; pass at most {MAX_RADII}")
  labels = _radius_labels(radii)
  header = ["run"] + [f"r = {r}" for r in labels] + ["ACR", "abstain"]
  body = []
  for name, run in runs.items():
    s = summary(run, radii, column=column)
    if s["certified_accuracy"] is None:
      cells = ["-"] * (len(radii) + 1)
    else:
      cells = [f"{100 * a:.1f}" for a in s["certified_accuracy"]] + [f"{s['acr']:.3f}"]
    body.append([str(name)] + cells + [f"{100 * s['abstain_rate']:.1f}"])

  if fmt == "tsv":
    lines = ["\t".join(row) for row in [header] + [[c.replace("\t", " ") for c in r] for r in body]]
  elif fmt == "markdown":
    return tables.markdown(header, body)
  else:
    latex_header = ["run"] + [f"$r = {r}$" for r in labels] + ["ACR", r"abstain (\%)"]
    lines = [
      r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
      r"\toprule",
      " & ".join(latex_header) + r" \\",
      r"\midrule",
    ]
    lines += [" & ".join([_escape_latex(row[0])] + row[1:]) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
  return "\n".join(lines) + "\n"


def plot_certified_accuracy(
  runs: Mapping[str, RunLike],
  path: str | os.PathLike,
  *,
  max_radius: float | None = None,
  title: str | None = None,
  column: str = "radius",
  norm: str | None = None,
  figsize: Sequence[float] = (6.4, 4.0),
  dpi: int = 150,
) -> None:
  """Saves a PNG of certified accuracy against radius, one step curve per run.

  The curves are exact: each is evaluated on a fine grid plus every radius at
  which it drops, as in Cohen et al. (2019), Figure 7.

  Args:
    runs: run name -> results or path of a result file.
    path: the PNG file to write; missing parent folders are created.

  Raises:
    InputError: no runs, a bad ``max_radius``, or ``path`` cannot be written.
    max_radius: right end of the x axis; default a little past the largest
      certified radius.
    title: optional figure title.
    column: the radius column (``radius`` is l2 for Gaussian noise).
    norm: the norm named on the x axis; default the column's (``radius``: l2).
    figsize: figure size in inches.
    dpi: resolution; the image is ``figsize * dpi`` pixels.
  """
  # Imported here so that the library does not need matplotlib unless plotting.
  from matplotlib.figure import Figure

  loaded = {name: _as_results(run) for name, run in runs.items()}
  if not loaded:
    raise InputError("no runs to plot; pass at least one result file")
  certified = {name: _certified_radii(r, column) for name, r in loaded.items()}
  if max_radius is None:
    finite = [r[np.isfinite(r)] for r in certified.values()]
    largest = max((float(r.max()) for r in finite if r.size), default=0.0)
    max_radius = 1.05 * largest if largest > 0 else 1.0
  if not (np.isfinite(max_radius) and max_radius > 0):
    raise InputError(f"max_radius must be a positive number, got {max_radius}")

  fig = Figure(figsize=tuple(figsize), dpi=dpi)
  ax = fig.subplots()
  grid = np.linspace(0.0, max_radius, 1001)
  for name, radii in certified.items():
    x = np.union1d(grid, radii[(radii >= 0) & (radii <= max_radius)])
    y = certified_accuracy(loaded[name], x, column=column)
    # Accuracy is constant on (r_k-1, r_k] and drops just after each radius r_k.
    ax.step(x, y, where="pre", label=str(name))
  if norm is None:
    norm = "l2" if column == "radius" else column.removeprefix("radius_")
  ax.set_xlabel(f"radius ({norm})")
  ax.set_ylabel("certified accuracy")
  ax.set_xlim(0.0, max_radius)
  ax.set_ylim(0.0, 1.0)
  ax.grid(True, alpha=0.4)
  ax.legend()
  if title:
    ax.set_title(title)
  fig.tight_layout()
  path = check_output_path(path, "plot")
  try:
    parent = os.path.dirname(path)
    if parent:
      os.makedirs(parent, exist_ok=True)
    # Written beside and renamed, so a failed write leaves no half image.
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(path + ".tmp")
    raise InputError(f"cannot write the plot {path}: {e.strerror}; choose another path") from None
