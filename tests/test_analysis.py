"""Tests for certified accuracy, ACR, tables and plots."""

from __future__ import annotations

import os

import numpy as np
import pytest

from smoothjax import analysis, results
from smoothjax.errors import InputError
from smoothjax.results import CERTIFY_COLUMNS, Results, ResultWriter


def make_results(label, predict, radius, path=None) -> Results:
  label, predict = np.asarray(label), np.asarray(predict)
  return Results(
    idx=np.arange(len(label)),
    label=label,
    predict=predict,
    radius=np.asarray(radius, dtype=np.float64),
    correct=(predict == label).astype(np.int64),
    path=path,
  )


# 8 rows: 5 correct (radii 0.0, 0.25, 0.5, 0.5, 1.0), one abstain, two wrong.
HAND = make_results(
  label=[0, 1, 2, 3, 4, 5, 6, 7],
  predict=[0, 1, 2, 3, 4, -1, 0, 0],
  radius=[0.0, 0.25, 0.5, 0.5, 1.0, 0.0, 0.75, 2.0],
)


def direct_certified_accuracy(results: Results, r: float) -> float:
  hits = 0
  for c, rad in zip(results.correct, results.radius, strict=True):
    if c == 1 and rad >= r:
      hits += 1
  return hits / len(results.correct)


def test_hand_made_known_answers():
  radii = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
  # Equal radius certifies (>=); wrong rows with large radii (0.75, 2.0) never count.
  np.testing.assert_allclose(
    analysis.certified_accuracy(HAND, radii), [5 / 8, 4 / 8, 3 / 8, 1 / 8, 1 / 8, 0.0]
  )
  assert analysis.acr(HAND) == pytest.approx((0.25 + 0.5 + 0.5 + 1.0) / 8)
  assert analysis.abstain_rate(HAND) == pytest.approx(1 / 8)
  assert analysis.clean_accuracy(HAND) == pytest.approx(5 / 8)
  assert analysis.certified_accuracy(HAND, 0.5).shape == ()


def test_matches_direct_recomputation():
  rng = np.random.default_rng(0)
  n = 500
  label = rng.integers(0, 10, n)
  predict = np.where(rng.random(n) < 0.7, label, rng.integers(-1, 10, n))
  radius = np.where(predict == -1, 0.0, np.round(rng.exponential(0.5, n), 2))
  results = make_results(label, predict, radius)
  radii = np.concatenate([analysis.default_radii(2.0, 0.05), radius[:20]])
  expected = [direct_certified_accuracy(results, r) for r in radii]
  np.testing.assert_allclose(analysis.certified_accuracy(results, radii), expected)
  direct_acr = sum(r * c for r, c in zip(radius, results.correct, strict=True)) / n
  assert analysis.acr(results) == pytest.approx(direct_acr)
  assert analysis.abstain_rate(results) == pytest.approx(np.sum(predict == -1) / n)


def test_default_radii():
  np.testing.assert_array_equal(analysis.default_radii(1.0), [0.0, 0.25, 0.5, 0.75, 1.0])
  np.testing.assert_array_equal(analysis.default_radii(0.9, 0.3), [0.0, 0.3, 0.6, 0.9])
  assert analysis.default_radii(0.2).tolist() == [0.0]
  with pytest.raises(InputError):
    analysis.default_radii(1.0, 0.0)


def test_summary_and_predict_files(tmp_path):
  s = analysis.summary(HAND, [0.0, 0.5])
  assert s["count"] == 8 and s["certified_accuracy"] == [0.625, 0.375]
  assert s["abstain_rate"] == 0.125 and s["clean_accuracy"] == 0.625
  path = tmp_path / "predict.tsv"
  path.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:01\n1\t2\t-1\t0\t0:00:01\n")
  p = analysis.summary(path, [0.0])
  assert p["certified_accuracy"] is None and p["acr"] is None and p["clean_accuracy"] == 0.5
  with pytest.raises(InputError, match="radius"):
    analysis.certified_accuracy(results.read_results(path), [0.0])
  with pytest.raises(InputError, match="no result rows"):
    analysis.acr(make_results([], [], []))


def test_other_norm_column():
  results = make_results([0, 1], [0, 1], [0.5, 0.1])
  results.extra["radius_l1"] = np.array([2.0, 0.0])
  np.testing.assert_allclose(
    analysis.certified_accuracy(results, [1.0, 2.0], column="radius_l1"), [0.5, 0.5]
  )
  with pytest.raises(InputError, match="radius_l1"):
    analysis.acr(results, column="radius_linf")


def test_tables(tmp_path):
  path = tmp_path / "run_b.tsv"
  with ResultWriter(path, CERTIFY_COLUMNS) as w:
    for i, (label, predict, radius) in enumerate([(0, 0, 0.3), (1, -1, 0.0)]):
      w.write(
        dict(
          idx=i,
          label=label,
          predict=predict,
          radius=radius,
          correct=int(label == predict),
          time=1.0,
        )
      )
  runs = {"sigma_0.25": HAND, "b": path}
  md = analysis.table(runs, [0.0, 0.5])
  lines = md.splitlines()
  assert lines[0] == "| run | r = 0.00 | r = 0.50 | ACR | abstain |"
  assert lines[2] == "| sigma_0.25 | 62.5 | 37.5 | 0.281 | 12.5 |"
  assert lines[3] == "| b | 50.0 | 0.0 | 0.150 | 50.0 |"
  tex = analysis.table(runs, [0.0, 0.5], fmt="latex")
  assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
  assert r"\begin{tabular}{lrrrr}" in tex
  assert r"sigma\_0.25 & 62.5 & 37.5 & 0.281 & 12.5 \\" in tex
  tsv = analysis.table(runs, [0.0, 0.5], fmt="tsv")
  assert tsv.splitlines()[1].split("\t") == ["sigma_0.25", "62.5", "37.5", "0.281", "12.5"]
  with pytest.raises(InputError, match="format"):
    analysis.table(runs, [0.0], fmt="html")


def test_plot_writes_png(tmp_path):
  import matplotlib.image

  rng = np.random.default_rng(1)
  other = make_results(rng.integers(0, 3, 50), rng.integers(-1, 3, 50), rng.uniform(0.0, 1.5, 50))
  path = tmp_path / "plots" / "curve.png"
  analysis.plot_certified_accuracy(
    {"a": HAND, "b": other}, path, title="test", figsize=(4.0, 3.0), dpi=50
  )
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(path)
  assert image.shape[:2] == (150, 200)
  # Not blank: the curves and labels draw non-white pixels.
  assert (image[..., :3] < 0.5).any()


def test_radius_grid_is_bounded():
  # A radius of 1e5 at Cohen's step of 0.25 would make a 400,001-column table.
  with pytest.raises(InputError, match="more than 1000"):
    analysis.default_radii(1e5)
  for max_radius in [0.0, 1.0, 4.0, 7.3, 1e5, 1e12]:
    step = analysis.radius_step(max_radius)
    radii = analysis.default_radii(max_radius, step)
    assert 1 <= len(radii) <= 17 and radii[-1] <= max_radius
    assert radii[-1] + step > max_radius  # The grid reaches max_radius.
  assert analysis.radius_step(4.0) == 0.25  # Cohen et al.'s tables.
  with pytest.raises(InputError, match="unreadable"):
    analysis.table({"a": HAND}, np.linspace(0, 1, 1001))


def test_plot_into_a_directory_or_under_a_file_is_input_error(tmp_path):
  folder = tmp_path / "folder"
  folder.mkdir()
  with pytest.raises(InputError, match="is a directory"):
    analysis.plot_certified_accuracy({"a": HAND}, folder, dpi=20)
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(InputError, match="is a file, not a folder"):
    analysis.plot_certified_accuracy({"a": HAND}, blocker / "p.png", dpi=20)
  assert sorted(os.listdir(tmp_path)) == ["file", "folder"] and not os.listdir(folder)


def test_in_norm_reads_the_norms_column_or_the_primary_one(tmp_path):
  import dataclasses

  rows = dataclasses.replace(
    HAND, extra={"radius_l1": HAND.radius * 3, "radius_linf": HAND.radius / 784}
  )
  np.testing.assert_array_equal(analysis.in_norm(rows, "l1").radius, HAND.radius * 3)
  assert analysis.acr(analysis.in_norm(rows, "linf")) == pytest.approx(analysis.acr(HAND) / 784)
  # Without a radius_l2 column, `radius` is l2 only for files whose noise says so.
  assert analysis.in_norm(rows, "l2") is rows
  path = tmp_path / "lap.tsv"
  with ResultWriter(path, CERTIFY_COLUMNS, settings={"noise": "laplace:0.5"}) as w:
    w.write(dict(idx=0, label=1, predict=1, radius=0.5, correct=1, time=1.0))
  with pytest.raises(InputError, match="its radius column is in l1; .* or choose --norm l1"):
    analysis.in_norm(str(path), "l2")
  assert analysis.in_norm(str(path), "l1").radius[0] == 0.5
  with pytest.raises(InputError, match="unknown norm 'l3'"):
    analysis.in_norm(rows, "l3")


def test_primary_norm_of_settings():
  assert analysis.primary_norm(None) == "l2"  # Cohen et al.'s files: Gaussian
  assert analysis.primary_norm({"noise": "gaussian", "noise_scale": 0.25}) == "l2"
  assert analysis.primary_norm({"noise": "uniform:0.5"}) == "l1"
  assert analysis.primary_norm({"noise": "expinf:0.5:k=2:j=0"}) == "l1"
  assert analysis.primary_norm({"noise_norm": "linf", "noise": "uniform:0.5"}) == "linf"


def test_small_radii_get_a_grid_and_labels_of_their_own():
  # linf radii of MNIST-sized inputs are of order 1e-3: the table keeps columns.
  assert analysis.default_max_radius(0.0013) == pytest.approx(0.002)
  assert analysis.default_max_radius(0.3) == 0.5
  assert analysis.default_max_radius(0.0) == 0.25
  radii = analysis.default_radii(0.002, analysis.radius_step(0.002))
  assert 3 <= len(radii) <= 17 and radii[-1] == pytest.approx(0.002)
  small = make_results([1, 1], [1, 1], [0.0005, 0.0015])
  text = analysis.table({"a": small}, radii)
  assert "r = 0.0010" in text or "r = 0.001" in text
  cells = text.splitlines()[0].split("|")[1:-1]
  assert len(set(cells)) == len(cells)  # no two columns with the same label
