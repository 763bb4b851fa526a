"""Summaries of generated images: per class and overall, and their table.

:func:`summary` is what :mod:`smoothjax.jobs.generate` writes to ``OUTDIR/summary.json``:
for each class and overall, how many images, the generating model's mean confidence
in the target class, the mean l2 distance to the seed, and with a judge its accuracy on
the images and on their seeds.
"""

from __future__ import annotations

import numpy as np

from smoothjax.analysis import tables


def summary(classes, targets, l2, confidence, judge_pred, seed_pred) -> dict:
  def block(mask):
    out = {
      "images": int(mask.sum()),
      "confidence": float(np.mean(confidence[mask])),
      "l2_to_seed": float(np.mean(l2[mask])),
    }
    if judge_pred is not None:
      out["judge_accuracy"] = float(np.mean(judge_pred[mask] == targets[mask]))
      out["judge_accuracy_seeds"] = float(np.mean(seed_pred[mask] == targets[mask]))
    return out

  return {
    "overall": block(np.ones(len(targets), bool)),
    "per_class": {str(c): block(targets == c) for c in classes},
  }


def table(summary: dict) -> str:
  """A Markdown table of :func:`summary`: per class, then overall."""
  judged = "judge_accuracy" in summary["overall"]
  header = ["class", "images", "confidence", "l2 to seed"]
  if judged:
    header += ["judge acc", "judge acc (seeds)"]
  rows = []
  for name, s in [*summary["per_class"].items(), ("all", summary["overall"])]:
    cells = [str(name), str(s["images"]), f"{s['confidence']:.3f}", f"{s['l2_to_seed']:.2f}"]
    if judged:
      cells += [f"{100 * s['judge_accuracy']:.1f}", f"{100 * s['judge_accuracy_seeds']:.1f}"]
    rows.append(cells)
  return tables.markdown(header, rows)
