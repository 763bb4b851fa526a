"""The comparison of several runs (:mod:`smoothjax.jobs.compare`): its table and figure.

One row per run: its mode and noise, the base classifier's accuracy clean and under
each attack at each eps, the smoothed classifier's certified accuracy at each radius
and its ACR. The figure has three panels: certified accuracy against radius, and
accuracy under PGD in l2 and in linf.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

from smoothjax.analysis import certified, tables

# One compared run: (its description: name, config, sigma, family; its attack summaries
# by (attack, norm); its certificates in the table's norm).
Row = tuple[Mapping, Mapping, object]


def table(rows: Sequence[Row], eps: Mapping[str, Sequence[float]], radii, attacks) -> tuple:
  """Header and rows (strings) of the comparison table."""
  header = ["run", "mode", "noise", "trained sigma", "certified sigma", "clean"]
  for attack in attacks:
    for norm in ("l2", "linf"):
      header += [f"{attack} {norm} {e:g}" for e in eps[norm]]
  header += [f"cert r={r:g}" for r in radii] + ["ACR"]
  body = []
  for run, summaries, cert in rows:
    first = next(iter(summaries.values()))
    mode = str(run["config"].get("mode", "?"))
    noise_config = run.get("noise_config", run["config"])
    if run.get("denoiser"):  # denoised smoothing: the denoiser's loss, its training sigma
      denoiser_mode = str(noise_config.get("mode", "?"))
      if denoiser_mode == "denoiser":
        denoiser_mode = str((noise_config.get("denoiser") or {}).get("loss", "mse"))
      mode = f"{mode} + {denoiser_mode} denoiser"
    line = [
      run["name"],
      mode,
      run["family"],
      f"{float(noise_config.get('noise_sd', 0.0)):g}",
      f"{run['sigma']:g}",
      f"{100 * first['clean_accuracy']:.1f}",
    ]
    for attack in attacks:
      for norm in ("l2", "linf"):
        line += [f"{100 * a:.1f}" for a in summaries[(attack, norm)]["accuracy"]]
    line += [f"{100 * certified.certified_accuracy(cert, r):.1f}" for r in radii]
    line.append(f"{certified.acr(cert):.3f}")
    body.append(line)
  return header, body


def write_table(header, body, outdir: str, norm: str) -> str:
  """Writes ``OUTDIR/comparison.md`` (with its legend) and ``.csv``; returns the Markdown."""
  text = tables.markdown(header, body, left=2)
  with open(os.path.join(outdir, "comparison.md"), "w", encoding="utf-8") as f:
    f.write(
      "Accuracy (%) of the base classifier, clean and under each attack at each eps; "
      f"certified accuracy (%) of the smoothed classifier at each {norm} radius; "
      f"ACR ({norm}).\n\n" + text
    )
  with open(os.path.join(outdir, "comparison.csv"), "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(body)
  return text


def plot(rows: Sequence[Row], path: str, attacks, norm: str) -> None:
  """Three panels: certified accuracy against radius, accuracy under PGD in l2 and linf."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  top = max(float(np.max(cert.radius, initial=0.0)) for _, _, cert in rows)
  grid = np.linspace(0, max(top, 0.25) * 1.05, 200)
  for run, summaries, cert in rows:
    noise = "" if run["family"] == "gaussian" else f"{run['family']} "
    label = f"{run['name']} ({noise}sigma={run['sigma']:g})"
    axes[0].plot(grid, [certified.certified_accuracy(cert, r) for r in grid], label=label)
    for ax, attack_norm in zip(axes[1:], ("l2", "linf"), strict=True):
      attack = "pgd" if ("pgd", attack_norm) in summaries else attacks[0]
      s = summaries[(attack, attack_norm)]
      ax.plot([0, *s["eps"]], [s["clean_accuracy"], *s["accuracy"]], "o-", label=run["name"])
      ax.set_title(f"base classifier under {attack.upper()} ({attack_norm})")
      ax.set_xlabel(f"{attack_norm} eps")
  axes[0].set_title("smoothed classifier: certified accuracy")
  axes[0].set_xlabel(f"{norm} radius")
  for ax in axes:
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
