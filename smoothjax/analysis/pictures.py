"""Pictures of examples: clean inputs beside adversarial ones, with the model's predictions.

:func:`adversarial_examples` draws one column per input: the clean image titled
with its label and the prediction on it, the adversarial image with the
prediction on it (red where it is wrong), and the perturbation, amplified so
that its largest pixel spans the colour range, titled with its l2 and linf
norms. It works on any images in [0, 1] (grayscale or RGB) and any
predictions, so a notebook can draw the attacks of any workdir::

  fig = pictures.adversarial_examples("adv.png", x, x_adv, y, clean_pred, adv_pred)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from smoothjax.errors import InputError
from smoothjax.smoothing import ABSTAIN

__all__ = ["adversarial_examples", "image_grid"]

_WRONG = "tab:red"
_RIGHT = "black"
# Inches per column and for the three rows: the PNG is (3 * ROW) x (cols * COL) inches.
COLUMN_INCHES = 1.7
ROW_INCHES = 2.2


def _images(name: str, images) -> np.ndarray:
  """``images`` as float ``(N, H, W, C)`` with C = 1 or 3; grayscale ``(N, H, W)`` too."""
  array = np.asarray(images, dtype=np.float64)
  if array.ndim == 3:
    array = array[..., None]
  if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.shape[0] == 0:
    raise InputError(
      f"{name} must be a non-empty (N, H, W, C) array with 1 or 3 channels, got shape "
      f"{np.shape(images)}"
    )
  if not np.all(np.isfinite(array)):
    raise InputError(f"{name} contains NaN or infinite values; pass images in [0, 1]")
  return array


def _classes(name: str, values, n: int) -> np.ndarray:
  array = np.asarray(values)
  if array.ndim != 1 or len(array) != n:
    raise InputError(f"{name} must hold one class per image ({n}), got shape {array.shape}")
  if array.size and not np.issubdtype(array.dtype, np.integer):
    if not np.all(np.mod(array, 1) == 0):
      raise InputError(f"{name} must hold integer classes (-1: abstain), got {array[:4]}")
  return array.astype(np.int64)


def _name(cls: int, class_names: Sequence[str] | None) -> str:
  if cls == ABSTAIN:
    return "abstain"
  return str(class_names[cls]) if class_names is not None else str(cls)


def adversarial_examples(
  path: str | os.PathLike | None,
  clean,
  adversarial,
  labels,
  clean_pred,
  adv_pred,
  *,
  class_names: Sequence[str] | None = None,
  max_examples: int = 8,
  title: str | None = None,
  dpi: int = 100,
):
  """Draws clean and adversarial examples with their predictions and writes a PNG.

  Row 1 shows the clean images titled with label and prediction, row 2 the
  adversarial images with their prediction (red when it differs from the
  label), row 3 the perturbation ``adversarial - clean``, amplified so that the
  colour range spans +-(its largest pixel), given in the title with its l2 and
  linf norms (grayscale: blue negative, white zero, red positive; RGB: each
  channel around mid-grey).

  Args:
    path: the PNG to write (missing parent folders are created), or None to
      only return the figure.
    clean: clean images ``(N, H, W, C)`` (C = 1 or 3) or ``(N, H, W)``, in [0, 1].
    adversarial: the adversarial images, same shape.
    labels: true classes ``(N,)``.
    clean_pred: predictions on the clean images ``(N,)``; -1 means abstain.
    adv_pred: predictions on the adversarial images ``(N,)``; -1 means abstain.
    class_names: optional names indexed by class.
    max_examples: draw the first ``min(N, max_examples)`` inputs.
    title: optional figure title.
    dpi: resolution; the image is ``(3 * ROW_INCHES * dpi)`` pixels high and
      ``(k * COLUMN_INCHES * dpi)`` wide for ``k`` columns.

  Returns:
    The ``matplotlib.figure.Figure`` (a notebook displays it).

  Raises:
    InputError: shapes or lengths that do not match, or a bad ``max_examples``.
  """
  clean = _images("clean", clean)
  adversarial = _images("adversarial", adversarial)
  if clean.shape != adversarial.shape:
    raise InputError(
      f"clean and adversarial images must have the same shape, got {clean.shape} and "
      f"{adversarial.shape}"
    )
  n = clean.shape[0]
  labels = _classes("labels", labels, n)
  clean_pred = _classes("clean_pred", clean_pred, n)
  adv_pred = _classes("adv_pred", adv_pred, n)
  if isinstance(max_examples, bool) or not isinstance(max_examples, int | np.integer):
    raise InputError(f"max_examples must be an integer >= 1, got {max_examples!r}")
  if max_examples < 1:
    raise InputError(f"max_examples must be >= 1, got {max_examples}")
  if class_names is not None:
    top = max(int(labels.max()), int(clean_pred.max()), int(adv_pred.max()))
    if top >= len(class_names):
      raise InputError(f"class_names has {len(class_names)} names but class {top} appears")
  if not (isinstance(dpi, int | np.integer) and dpi > 0):
    raise InputError(f"dpi must be a positive integer, got {dpi!r}")

  # Imported here so that the library does not need matplotlib unless drawing.
  from matplotlib.figure import Figure

  k = min(n, int(max_examples))
  fig = Figure(figsize=(k * COLUMN_INCHES, 3 * ROW_INCHES), dpi=dpi)
  axes = fig.subplots(3, k, squeeze=False)
  gray = clean.shape[-1] == 1
  for j in range(k):
    label, before, after = int(labels[j]), int(clean_pred[j]), int(adv_pred[j])
    ax = axes[0, j]
    _show(ax, clean[j])
    ax.set_title(
      f"label {_name(label, class_names)}\npred {_name(before, class_names)}",
      fontsize=9,
      color=_RIGHT if before == label else _WRONG,
    )
    ax = axes[1, j]
    _show(ax, adversarial[j])
    ax.set_title(
      f"adv pred {_name(after, class_names)}",
      fontsize=9,
      color=_RIGHT if after == label else _WRONG,
    )
    delta = adversarial[j] - clean[j]
    peak = float(np.max(np.abs(delta)))
    scale = peak if peak > 0 else 1.0
    ax = axes[2, j]
    if gray:
      ax.imshow(delta[..., 0], cmap="seismic", vmin=-scale, vmax=scale)
    else:
      ax.imshow(np.clip(0.5 + 0.5 * delta / scale, 0.0, 1.0))
    _bare(ax)
    l2, linf = float(np.linalg.norm(delta.ravel())), peak
    ax.set_title(f"l2 {l2:.3g}, linf {linf:.3g}\n(range \u00b1{scale:.2g})", fontsize=8)
  for row, name in enumerate(("clean", "adversarial", "perturbation")):
    axes[row, 0].set_ylabel(name, fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  if path is not None:
    _save(fig, path)
  return fig


def image_grid(
  path: str | os.PathLike | None,
  images,
  *,
  row_labels: Sequence[str] | None = None,
  first_column=None,
  first_column_label: str = "seed",
  title: str | None = None,
  inches: float = 0.9,
  dpi: int = 100,
):
  """Draws a grid of images, one row per group (a class), and writes a PNG.

  Args:
    path: the PNG to write (missing parent folders are created), or None.
    images: ``(rows, cols, H, W, C)`` (C = 1 or 3) or ``(rows, cols, H, W)`` in [0, 1].
    row_labels: one label per row, written left of it.
    first_column: optional ``(rows, H, W, C)`` images drawn before each row (its
      seed), titled ``first_column_label`` on the top row.
    title: optional figure title.
    inches: size of one cell.
    dpi: resolution.

  Returns:
    The ``matplotlib.figure.Figure``.

  Raises:
    InputError: bad shapes or labels.
  """
  array = np.asarray(images, dtype=np.float64)
  if array.ndim == 4:
    array = array[..., None]
  if array.ndim != 5 or 0 in array.shape[:2]:
    raise InputError(f"images must be a (rows, cols, H, W, C) array, got shape {np.shape(images)}")
  rows, cols = array.shape[:2]
  grid = _images("images", array.reshape(rows * cols, *array.shape[2:])).reshape(array.shape)
  extra = None
  if first_column is not None:
    extra = _images("first_column", first_column)
    if extra.shape != (rows, *grid.shape[2:]):
      raise InputError(
        f"first_column must hold one image per row, shape {(rows, *grid.shape[2:])}, got "
        f"{extra.shape}"
      )
  if row_labels is not None and len(row_labels) != rows:
    raise InputError(f"row_labels must hold {rows} labels, one per row, got {len(row_labels)}")
  if not (isinstance(dpi, int | np.integer) and dpi > 0):
    raise InputError(f"dpi must be a positive integer, got {dpi!r}")
  from matplotlib.figure import Figure

  offset = 1 if extra is not None else 0
  total = cols + offset
  head = (0.45 if title else 0.1) + (0.2 if extra is not None else 0.0)
  fig = Figure(figsize=(total * inches + 0.6, rows * inches + head), dpi=dpi)
  axes = fig.subplots(rows, total, squeeze=False)
  for r in range(rows):
    if extra is not None:
      _show(axes[r, 0], extra[r])
      if r == 0:
        axes[r, 0].set_title(first_column_label, fontsize=8)
    for c in range(cols):
      _show(axes[r, c + offset], grid[r, c])
    if row_labels is not None:
      axes[r, 0].set_ylabel(str(row_labels[r]), fontsize=9, rotation=0, ha="right", va="center")
  if title:
    fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(
    left=0.6 / (total * inches + 0.6),
    right=0.99,
    bottom=0.01,
    top=1 - head / (rows * inches + head),
    wspace=0.05,
    hspace=0.05,
  )
  if path is not None:
    _save(fig, path)
  return fig


def _save(fig, path) -> None:
  """Writes ``fig`` as a PNG at ``path``, creating missing parent folders."""
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(os.fspath(path), format="png")


def _show(ax, image: np.ndarray) -> None:
  image = np.clip(image, 0.0, 1.0)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    ax.imshow(image)
  _bare(ax)


def _bare(ax) -> None:
  ax.set_xticks([])
  ax.set_yticks([])
