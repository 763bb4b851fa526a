"""Random crops and flips: every output is a crop of the padded input, offsets are uniform."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

from smoothjax.data import augment


def _images(n, h=6, w=5, c=2):
  return np.random.default_rng(0).uniform(size=(n, h, w, c)).astype(np.float32)


def _find_crop(out, image, padding):
  """(dy, dx, flipped) such that out is that crop of the padded image, or None."""
  h, w, _ = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      window = padded[dy : dy + h, dx : dx + w]
      for flipped, candidate in ((False, window), (True, window[:, ::-1])):
        if np.array_equal(out, candidate):
          return dy, dx, flipped
  return None


def test_crop_flip_outputs_are_crops_of_the_padded_image_with_uniform_offsets():
  images = _images(400)
  out = np.asarray(augment.apply("crop_flip", jax.random.key(0), images, padding=2))
  assert out.shape == images.shape and out.dtype == images.dtype
  found = [_find_crop(o, i, 2) for o, i in zip(out, images, strict=True)]
  assert all(f is not None for f in found)
  dy = np.array([f[0] for f in found])
  flipped = np.array([f[2] for f in found])
  # Offsets uniform on {0, ..., 4}: chi-square goodness of fit.
  assert stats.chisquare(np.bincount(dy, minlength=5)).pvalue > 1e-3
  assert stats.binomtest(int(flipped.sum()), len(flipped), 0.5).pvalue > 1e-3


def test_flip_only_mirrors_or_keeps():
  images = _images(200)
  out = np.asarray(augment.apply("flip", jax.random.key(1), images))
  same = np.all(out == images, axis=(1, 2, 3))
  mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and 60 < mirrored.sum() < 140


def test_none_is_identity_and_unknown_rejected():
  images = _images(3)
  np.testing.assert_array_equal(augment.apply("none", jax.random.key(2), images), images)
  with pytest.raises(ValueError, match="unknown augmentation"):
    augment.apply("mixup", jax.random.key(3), images)


def test_same_key_same_augmentation():
  images = _images(8)
  a = augment.apply("crop_flip", jax.random.key(4), images)
  b = augment.apply("crop_flip", jax.random.key(4), images)
  np.testing.assert_array_equal(a, b)
