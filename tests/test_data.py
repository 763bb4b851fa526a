"""Tests for smoothjax.data: embedded data, IDX files, TFDS sources and batching."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from smoothjax import data
from smoothjax.data import sources
from smoothjax.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def embedded():
  return data.load()


def _index_split(n: int) -> data.ArraySplit:
  """A split whose label is the example's own index, to track where examples go."""
  images = (np.arange(n * 4) % 256).astype(np.uint8).reshape(n, 2, 2)
  return data.ArraySplit(images, np.arange(n))


def _write_idx_folder(folder, rng, *, n_train=12, n_test=5, prefix="", gz=False, classes=4):
  """Writes a small MNIST-format IDX folder; returns the arrays written."""
  os.makedirs(folder, exist_ok=True)
  ext = ".gz" if gz else ""
  arrays = {
    "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 7, 5), dtype=np.uint8),
    "train-labels-idx1-ubyte": rng.integers(0, classes, n_train, dtype=np.uint8),
    "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 7, 5), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": rng.integers(0, classes, n_test, dtype=np.uint8),
  }
  arrays["train-labels-idx1-ubyte"][0] = classes - 1  # Fixes num_classes = max label + 1.
  for name, array in arrays.items():
    if prefix:  # EMNIST names its test files "test-..." rather than "t10k-...".
      name = prefix + name.replace("t10k", "test")
    data.write_idx(os.path.join(folder, name + ext), array)
  return arrays


# Embedded data.


def test_embedded_shapes_range_labels_and_info(embedded):
  train_x, train_y = embedded.split("train").get(np.arange(4000))
  test_x, test_y = embedded.split("test").get(np.arange(1000))
  assert train_x.shape == (4000, 28, 28, 1) and test_x.shape == (1000, 28, 28, 1)
  assert train_x.dtype == np.float32 and train_y.dtype == np.int32
  assert train_x.min() == 0.0 and train_x.max() == 1.0 and test_x.max() == 1.0
  assert set(np.unique(train_y)) == set(range(10)) and test_y.min() >= 0 and test_y.max() <= 9
  np.testing.assert_array_equal(np.bincount(test_y, minlength=10), np.full(10, 100))
  np.testing.assert_array_equal(np.bincount(train_y, minlength=10), np.full(10, 400))
  info = embedded.info
  assert info.num_classes == 10 and info.image_shape == (28, 28, 1)
  assert info.split_sizes == {"train": 4000, "test": 1000}
  assert abs(info.mean[0] - train_x.mean(dtype=np.float64)) < 1e-3
  assert abs(info.std[0] - train_x.std(dtype=np.float64)) < 1e-3
  # Real MNIST digits: the statistics sit near the full set's 0.1307 / 0.3081.
  assert abs(info.mean[0] - 0.1307) < 0.01 and abs(info.std[0] - 0.3081) < 0.01


def test_embedded_alias_and_random_access(embedded):
  alias = data.load("embedded")
  idx = np.array([7, 0, 3999, 7])
  x, y = embedded.split("train").get(idx)
  x2, y2 = alias.split("train").get(list(idx))
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  np.testing.assert_array_equal(x[0], x[3])  # Repeated index: same example.
  single_x, single_y = embedded.split("train").get([3999])
  np.testing.assert_array_equal(single_x[0], x[2])
  assert single_y[0] == y[2]


def test_embedded_errors(embedded):
  with pytest.raises(InputError, match="train"):
    embedded.split("validation")
  with pytest.raises(InputError, match=r"\[0, 1000\)"):
    embedded.split("test").get([1000])
  with pytest.raises(InputError, match="integer"):
    embedded.split("test").get([0.5])
  with pytest.raises(InputError, match="data_dir"):
    data.load("embedded_mnist", data_dir="/tmp")


def test_image_size_resizes_and_native_size_is_identity(embedded):
  resized = data.load(image_size=32)
  x, _ = resized.split("test").get([0, 1])
  assert x.shape == (2, 32, 32, 1) and resized.info.image_shape == (32, 32, 1)
  same, _ = data.load(image_size=28).split("test").get([0, 1])
  np.testing.assert_array_equal(same, embedded.split("test").get([0, 1])[0])
  # A constant image stays constant under bilinear resizing and cropping.
  flat = sources._resize_center_crop(np.full((30, 60, 3), 200, np.uint8), 16)
  assert flat.shape == (16, 16, 3) and np.all(flat == 200)
  # Left half black, right half white, wide image: the center crop straddles the edge evenly.
  half = np.zeros((40, 80, 1), np.uint8)
  half[:, 40:] = 255
  crop = sources._resize_center_crop(half, 14)
  assert crop.shape == (14, 14, 1)
  assert np.all(crop[:, :5] == 0) and np.all(crop[:, -5:] == 255)
  np.testing.assert_allclose(crop.mean() / 255, 0.5, atol=0.05)


# Shuffling and batching.


def test_permutation_is_a_function_of_seed_and_epoch():
  np.testing.assert_array_equal(
    data.permutation(50, 3, 2), np.random.default_rng([3, 2]).permutation(50)
  )
  np.testing.assert_array_equal(data.permutation(50, 3, 2), data.permutation(50, 3, 2))
  assert not np.array_equal(data.permutation(50, 3, 2), data.permutation(50, 3, 1))
  assert not np.array_equal(data.permutation(50, 3, 2), data.permutation(50, 4, 2))


def test_batches_deterministic(embedded):
  split = embedded.split("test")
  a = list(data.batches(split, 128, seed=5, epoch=1))
  b = list(data.batches(split, 128, seed=5, epoch=1))
  assert len(a) == data.num_batches(split, 128) == 7
  for (xa, ya), (xb, yb) in zip(a, b, strict=True):
    assert xa.shape == (128, 28, 28, 1) and xa.dtype == np.float32 and ya.dtype == np.int32
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  c = list(data.batches(split, 128, seed=5, epoch=2))
  assert not np.array_equal(a[0][1], c[0][1])


def test_every_index_once_per_epoch_and_remainder():
  split = _index_split(103)
  got = list(data.batches(split, 10, seed=0, epoch=4, drop_remainder=False))
  assert [len(y) for _, y in got] == [10] * 10 + [3]
  order = np.concatenate([y for _, y in got])
  np.testing.assert_array_equal(np.sort(order), np.arange(103))
  np.testing.assert_array_equal(order, data.permutation(103, 0, 4))
  dropped = list(data.batches(split, 10, seed=0, epoch=4))
  assert len(dropped) == data.num_batches(split, 10) == 10
  assert data.num_batches(split, 10, drop_remainder=False) == 11
  unshuffled = np.concatenate([y for _, y in data.batches(split, 25, seed=None, shuffle=False)])
  np.testing.assert_array_equal(unshuffled, np.arange(100))


def test_start_batch_equals_skipping():
  split = _index_split(64)
  full = list(data.batches(split, 8, seed=9, epoch=3))
  resumed = list(data.batches(split, 8, seed=9, epoch=3, start_batch=5))
  assert len(resumed) == 3
  for (xa, ya), (xb, yb) in zip(full[5:], resumed, strict=True):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert list(data.batches(split, 8, seed=9, start_batch=8)) == []


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(batch_size=8, seed=None), "seed"),
    (dict(batch_size=0, seed=1), "batch_size"),
    (dict(batch_size=65, seed=1), "exceeds"),
    (dict(batch_size=8, seed=1, start_batch=9), "start_batch"),
    (dict(batch_size=8, seed=-1), "non-negative"),
  ],
)
def test_batches_errors_are_raised_on_call(kwargs, match):
  with pytest.raises(InputError, match=match):
    data.batches(_index_split(64), **kwargs)  # Eager: no need to iterate.


# IDX files.


def test_write_idx_header_follows_the_mnist_format(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  data.write_idx(str(tmp_path / "x-idx3-ubyte"), images)
  raw = (tmp_path / "x-idx3-ubyte").read_bytes()
  assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
  assert raw[16:] == images.tobytes()
  data.write_idx(str(tmp_path / "y-idx1-ubyte.gz"), np.array([9, 1], np.uint8))
  assert gzip.decompress((tmp_path / "y-idx1-ubyte.gz").read_bytes()) == bytes(
    [0, 0, 8, 1, 0, 0, 0, 2, 9, 1]
  )
  with pytest.raises(InputError, match="uint8"):
    data.write_idx(str(tmp_path / "z"), np.zeros(3, np.int32))


@pytest.mark.parametrize("gz, prefix", [(False, ""), (True, ""), (True, "emnist-digits-")])
def test_idx_round_trip(tmp_path, gz, prefix):
  arrays = _write_idx_folder(tmp_path, np.random.default_rng(0), gz=gz, prefix=prefix)
  ds = data.load("idx", data_dir=str(tmp_path))
  x, y = ds.split("train").get(np.arange(12))
  np.testing.assert_array_equal(x[..., 0], arrays["train-images-idx3-ubyte"] / np.float32(255))
  np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
  x, y = ds.split("test").get(np.arange(5))
  assert x.shape == (5, 7, 5, 1) and x.dtype == np.float32 and y.dtype == np.int32
  np.testing.assert_array_equal(y, arrays["t10k-labels-idx1-ubyte"])
  assert ds.info.num_classes == 4 and ds.info.image_shape == (7, 5, 1)
  assert ds.info.split_sizes == {"train": 12, "test": 5}
  assert ds.info.mean == (0.1307,) and ds.info.std == (0.3081,)
  same = data.load(f"idx:{tmp_path}")
  np.testing.assert_array_equal(same.split("train").get([3])[0], ds.split("train").get([3])[0])


def test_idx_prefers_uncompressed_copy_and_rejects_two_datasets(tmp_path):
  arrays = _write_idx_folder(tmp_path, np.random.default_rng(1), gz=True)
  # An uncompressed copy next to the .gz (as `gunzip -k` leaves) is the same data.
  data.write_idx(str(tmp_path / "train-labels-idx1-ubyte"), arrays["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(
    data.load("idx", data_dir=str(tmp_path)).split("train").get(np.arange(12))[1],
    arrays["train-labels-idx1-ubyte"],
  )
  data.write_idx(str(tmp_path / "emnist-train-labels-idx1-ubyte"), np.zeros(12, np.uint8))
  with pytest.raises(InputError, match="several files match"):
    data.load("idx", data_dir=str(tmp_path))


def _corrupt(path, edit):
  path.write_bytes(edit(bytearray(path.read_bytes())))


@pytest.mark.parametrize(
  "file, edit, match",
  [
    ("train-images-idx3-ubyte", lambda b: b"\x01" + b[1:], "magic"),
    ("train-images-idx3-ubyte", lambda b: b[:3] + b"\x01" + b[4:], "magic"),  # 1-D file
    ("train-labels-idx1-ubyte", lambda b: b[:2] + b"\x0d" + b[3:], "dtype"),
    ("t10k-images-idx3-ubyte", lambda b: b[:-1], "truncated"),
    ("t10k-images-idx3-ubyte", lambda b: b + b"\x00", "truncated"),
    ("t10k-labels-idx1-ubyte", lambda b: b[:6], "truncated"),
  ],
)
def test_idx_corrupt_files(tmp_path, file, edit, match):
  _write_idx_folder(tmp_path, np.random.default_rng(2))
  _corrupt(tmp_path / file, edit)
  with pytest.raises(InputError, match=match) as error:
    data.load("idx", data_dir=str(tmp_path))
  assert file in str(error.value) and "\n" not in str(error.value)


def _flip_deflate_bytes(b):
  # Inside the compressed stream (after the 10-byte gzip header): a bad deflate block
  # (zlib.error) or a CRC mismatch (gzip.BadGzipFile).
  middle = len(b) // 2
  return b[:middle] + bytes(x ^ 0xFF for x in b[middle : middle + 16]) + b[middle + 16 :]


@pytest.mark.parametrize(
  "edit",
  [
    _flip_deflate_bytes,
    lambda b: b[: len(b) // 2],  # truncated download: EOFError
    lambda b: b"not gzip at all" + b,  # gzip.BadGzipFile
    lambda b: b[:10] + b"\x07" * 40 + b[50:],  # invalid block type: zlib.error
  ],
  ids=["flipped", "truncated", "not-gzip", "bad-block"],
)
def test_idx_corrupt_gzip_files(tmp_path, edit):
  _write_idx_folder(tmp_path, np.random.default_rng(4), gz=True, n_train=200)
  _corrupt(tmp_path / "train-images-idx3-ubyte.gz", edit)
  with pytest.raises(
    InputError, match="cannot read IDX file .*train-images-idx3-ubyte.gz"
  ) as error:
    data.load(f"idx:{tmp_path}")
  assert "\n" not in str(error.value)


def test_idx_inconsistent_folders(tmp_path):
  _write_idx_folder(tmp_path / "a", np.random.default_rng(3))
  data.write_idx(str(tmp_path / "a" / "t10k-labels-idx1-ubyte"), np.zeros(4, np.uint8))
  with pytest.raises(InputError, match="5 images but 4 labels"):
    data.load("idx", data_dir=str(tmp_path / "a"))
  _write_idx_folder(tmp_path / "b", np.random.default_rng(3))
  data.write_idx(str(tmp_path / "b" / "t10k-labels-idx1-ubyte"), np.full(5, 4, np.uint8))
  with pytest.raises(InputError, match="test labels"):
    data.load("idx", data_dir=str(tmp_path / "b"))
  _write_idx_folder(tmp_path / "c", np.random.default_rng(3))
  os.remove(tmp_path / "c" / "t10k-images-idx3-ubyte")
  with pytest.raises(InputError, match="t10k-images-idx3-ubyte"):
    data.load("idx", data_dir=str(tmp_path / "c"))
  with pytest.raises(InputError, match="does not exist"):
    data.load(f"idx:{tmp_path / 'missing'}")
  with pytest.raises(InputError, match="IDX folder"):
    data.load("idx")


# TFDS. `tfds.testing.mock_data` patches `DatasetBuilder.as_data_source`, which is what
# data.load calls, so the real TFDS code path runs on generated examples. The default policy
# (AUTO) falls back to USE_CODE because the wheel ships no metadata files: builder.info.splits
# is then empty and data.load asks for 'train' and 'test' ('validation' for imagenet2012).


@pytest.mark.parametrize(
  "name, shape, mean",
  [("mnist", (28, 28, 1), (0.1307,)), ("cifar10", (32, 32, 3), (0.4914, 0.4822, 0.4465))],
)
def test_tfds_mock(tmp_path, name, shape, mean):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=9):
    ds = data.load(name, data_dir=str(tmp_path))
    x, y = ds.split("test").get(np.arange(9)[::-1])
    x0, y0 = ds.split("test").get([8])
  assert x.shape == (9, *shape) and x.dtype == np.float32 and y.dtype == np.int32
  assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9  # uint8 / 255, not raw bytes.
  assert y.min() >= 0 and y.max() < ds.info.num_classes == 10
  np.testing.assert_array_equal(x[0], x0[0])
  assert y[0] == y0[0]
  assert ds.info.image_shape == shape and ds.info.mean == mean
  assert ds.info.split_sizes == {"train": 9, "test": 9}


def test_tfds_mock_imagenet_is_resized_and_batched(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load("imagenet2012", data_dir=str(tmp_path), image_size=40)
    ((x, y),) = data.batches(ds.split("test"), 4, seed=0)
  assert x.shape == (4, 40, 40, 3) and ds.info.image_shape == (40, 40, 3)
  assert ds.info.num_classes == 1000 and y.max() < 1000
  assert ds.info.std == (0.229, 0.224, 0.225)


def test_tfds_not_prepared_and_unknown(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(InputError, match="not prepared") as error:
    data.load("cifar10", data_dir=str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and "tfds build cifar10" in message and str(tmp_path) in message
  assert os.listdir(tmp_path) == []  # Nothing was downloaded or generated.
  with pytest.raises(InputError, match="not a TFDS dataset") as error:
    data.load("no_such_dataset", data_dir=str(tmp_path))
  assert "embedded_mnist" in str(error.value) and "idx" in str(error.value)


@pytest.mark.parametrize(
  "name, match",
  [
    ("mnist:99.9.9", "cannot be loaded at version 99.9.9, only: 3.0.1"),
    ("mnist:1.0.0", "version 1.0.0"),
    ("mnist/no_such_config", "BuilderConfig no_such_config not found"),
  ],
)
def test_tfds_unknown_version_or_config(tmp_path, name, match):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(InputError, match=f"cannot load TFDS dataset '{name}': .*{match}") as error:
    data.load(name, data_dir=str(tmp_path))
  assert "\n" not in str(error.value)


def test_import_does_not_load_tfds():
  code = "import sys, smoothjax.data; print('tensorflow_datasets' in sys.modules)"
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
  )
  assert out.stdout.strip() == "False"
