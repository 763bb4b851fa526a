"""Tests for the picture of clean and adversarial examples."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from smoothjax.analysis import pictures
from smoothjax.errors import InputError


def examples(n, channels, seed=0):
  rng = np.random.default_rng(seed)
  clean = rng.uniform(0.2, 0.8, (n, 12, 12, channels)).astype(np.float32)
  delta = np.zeros_like(clean)
  delta[:, 3, 4, 0] = 0.1  # one pixel: l2 = linf = 0.1
  labels = np.arange(n) % 10
  clean_pred = labels.copy()
  adv_pred = labels.copy()
  adv_pred[1::2] = (labels[1::2] + 1) % 10  # every second attack succeeds
  return clean, clean + delta, labels, clean_pred, adv_pred


@pytest.mark.parametrize("channels", [1, 3])
def test_writes_three_rows_one_column_per_example(tmp_path, channels):
  clean, adv, labels, clean_pred, adv_pred = examples(5, channels)
  path = tmp_path / "pics" / "adv.png"
  fig = pictures.adversarial_examples(
    path, clean, adv, labels, clean_pred, adv_pred, max_examples=4, dpi=40
  )
  image = matplotlib.image.imread(path)
  height, width = 3 * pictures.ROW_INCHES * 40, 4 * pictures.COLUMN_INCHES * 40
  assert image.shape[:2] == (round(height), round(width))
  axes = fig.axes
  assert len(axes) == 3 * 4  # the fifth input is left out
  titles = [ax.get_title() for ax in axes]
  # Row-major: clean titles, then adversarial predictions, then perturbation norms.
  assert titles[:4] == [f"label {i}\npred {i}" for i in range(4)]
  assert titles[4:8] == ["adv pred 0", "adv pred 2", "adv pred 2", "adv pred 4"]
  colours = [axes[4 + j].title.get_color() for j in range(4)]
  assert [c == "tab:red" for c in colours] == [False, True, False, True]
  assert all(t == "l2 0.1, linf 0.1\n(range \u00b10.1)" for t in titles[8:])
  # The images drawn are the inputs (grayscale as one 2-D plane).
  drawn = axes[4 + 1].get_images()[0].get_array()  # adversarial row, second column
  expected = adv[1, ..., 0] if channels == 1 else adv[1]
  np.testing.assert_allclose(np.asarray(drawn), expected, rtol=1e-6)
  # The perturbation spans the colour range: +-0.1 around zero.
  perturbation = axes[8].get_images()[0]
  if channels == 1:
    np.testing.assert_allclose(perturbation.get_clim(), (-0.1, 0.1), rtol=1e-5)
    np.testing.assert_allclose(perturbation.get_array()[3, 4], 0.1, rtol=1e-5)
  else:
    np.testing.assert_allclose(perturbation.get_array()[3, 4], [1.0, 0.5, 0.5], rtol=1e-5)


def test_class_names_and_abstain(tmp_path):
  clean, adv, labels, clean_pred, adv_pred = examples(2, 3)
  adv_pred[0] = -1
  names = [f"c{i}" for i in range(10)]
  fig = pictures.adversarial_examples(
    None, clean, adv, labels, clean_pred, adv_pred, class_names=names
  )
  assert not list(tmp_path.iterdir())
  assert fig.axes[0].get_title() == "label c0\npred c0"
  assert fig.axes[2].get_title() == "adv pred abstain"
  assert fig.axes[2].title.get_color() == "tab:red"


@pytest.mark.parametrize(
  "change,pattern",
  [
    (lambda a: {**a, "labels": a["labels"][:-1]}, "labels must hold one class per image"),
    (lambda a: {**a, "adv_pred": a["adv_pred"][:2]}, "adv_pred"),
    (lambda a: {**a, "adversarial": a["adversarial"][:-1]}, "same shape"),
    (
      lambda a: {**a, "clean": a["clean"][..., :2], "adversarial": a["adversarial"][..., :2]},
      "1 or 3 channels",
    ),
    (lambda a: {**a, "max_examples": 0}, "max_examples"),
    (lambda a: {**a, "class_names": ["a", "b"]}, "class_names"),
  ],
)
def test_bad_input_is_an_input_error(tmp_path, change, pattern):
  clean, adv, labels, clean_pred, adv_pred = examples(4, 3)
  args = dict(clean=clean, adversarial=adv, labels=labels, clean_pred=clean_pred, adv_pred=adv_pred)
  path = tmp_path / "bad.png"
  with pytest.raises(InputError, match=pattern):
    pictures.adversarial_examples(path, **change(args))
  assert not path.exists()
