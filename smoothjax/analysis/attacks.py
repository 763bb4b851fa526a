"""Summaries of attack results: accuracy clean and under attack at each eps, and its table.

:func:`summarize` reads a file of :mod:`smoothjax.jobs.attack` (``attack.py``), one row
per input with ``predict_epsE`` and ``correct_epsE`` columns for each radius ``E``;
:func:`table` puts several runs side by side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from smoothjax import noise, results
from smoothjax.analysis import tables
from smoothjax.errors import InputError


def eps_name(eps: float) -> str:
  """The text of ``eps`` in column names: ``0.25``, ``1``, ``0.0313725``."""
  return f"{eps:g}"


def summarize(path: str | os.PathLike) -> dict:
  """Clean accuracy and accuracy under attack at each eps of an ``attack.py`` output.

  Accuracy under attack is the fraction of inputs whose adversarial point is
  classified correctly (an abstention of the smoothed classifier counts as
  wrong), as in Salman et al.'s empirical accuracy.

  Args:
    path: a TSV written by ``attack.py``.

  Returns:
    A dict with ``inputs`` (rows), ``clean_accuracy``, ``eps`` (the radii, in
    column order), ``accuracy`` (one per eps), ``clean_abstain_rate`` and
    ``abstain_rate`` (one per eps; 0 for the base classifier), and
    ``settings`` (the run's settings, ``{}`` if the file has none).

  Raises:
    InputError: the file is missing, has no rows or no ``correct_eps`` column.
  """
  res = results.read_results(path)
  if len(res) == 0:
    raise InputError(f"no result rows in {path}; run attack.py first or check the file")
  eps_columns = [c for c in res.extra if c.startswith("correct_eps")]
  if not eps_columns:
    raise InputError(f"{path} has no correct_eps columns; is it an attack.py output?")
  eps, accuracy, abstain = [], [], []
  for column in eps_columns:
    name = column.removeprefix("correct_eps")
    predictions = res.extra.get(f"predict_eps{name}")
    try:
      eps.append(float(name))
    except ValueError:
      predictions = None
    if predictions is None or predictions.dtype.kind != "f":
      raise InputError(f"{path}: column {column} lacks its predict_eps{name}; is it attack.py's?")
    accuracy.append(float(np.mean(res.extra[column])))
    abstain.append(float(np.mean(predictions < 0)))
  return {
    "inputs": len(res),
    "clean_accuracy": float(np.mean(res.correct)),
    "eps": eps,
    "accuracy": accuracy,
    "clean_abstain_rate": float(np.mean(res.predict < 0)),
    "abstain_rate": abstain,
    "settings": results.read_settings(path) or {},
  }


def describe(settings: Mapping) -> str:
  """A short description of the attack in ``settings``: ``pgd l2, 20 steps``."""
  if not settings:
    return ""
  attack = settings.get("attack", "?")
  text = f"{attack} {settings.get('norm', '?')}"
  if settings.get("steps"):
    text += f", {settings['steps']} steps"
  if settings.get("smoothed"):
    family = noise.family_name(settings.get("noise") or "gaussian")
    scale = f"sigma={settings.get('sigma'):g}"
    scale = scale if family == "gaussian" else f"{family} {scale}"
    text += f", {scale}, m={settings.get('m')}, n={settings.get('n')}"
  return text


def table(summaries: Mapping[str, Mapping]) -> str:
  """A Markdown table of accuracy (%) clean and under attack, one row per run.

  Args:
    summaries: run name -> :func:`summarize` output. Runs may attack at
      different radii; a radius a run lacks shows ``-``.

  Returns:
    The table text, ending in a newline.
  """
  radii = sorted({e for s in summaries.values() for e in s["eps"]})
  header = ["run", "inputs", "clean"] + [f"eps = {eps_name(e)}" for e in radii]
  smoothed = any(s["clean_abstain_rate"] > 0 or any(s["abstain_rate"]) for s in summaries.values())
  if smoothed:
    header.append("abstain (clean)")
  rows = []
  for name, s in summaries.items():
    by_eps = dict(zip(s["eps"], s["accuracy"], strict=True))
    cells = [str(name), str(s["inputs"]), f"{100 * s['clean_accuracy']:.1f}"]
    cells += [f"{100 * by_eps[e]:.1f}" if e in by_eps else "-" for e in radii]
    if smoothed:
      cells.append(f"{100 * s['clean_abstain_rate']:.1f}")
    rows.append(cells)
  return tables.markdown(header, rows)
