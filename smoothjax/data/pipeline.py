"""Training input on one host or many: a grain pipeline over this process's rows of each batch.

Global batch ``b`` of epoch ``e`` is always the rows ``data.permutation(n, seed, e)[b*B:(b+1)*B]``
of the training split (``B`` = ``batch_size``), whatever the number of processes, devices or
data workers. Process ``p`` of a multi-process job reads only its contiguous slice of those rows
(the rows its devices hold, :func:`smoothjax.devices.parallel.process_rows`), and the training loop
assembles the global batch on the mesh with
:func:`smoothjax.devices.parallel.put_process_batch`.

The pipeline is a ``grain.MapDataset`` whose element ``k`` is the run's step ``k`` (epoch
``k // steps_per_epoch``): one element is one process-local batch, read by
``Split.get``. With ``workers`` = 0 batches are read in a background thread of the training
process, ``prefetch`` batches ahead (a TFDS split decodes in its own thread pool); with
``workers`` > 0 they are read in that many grain worker processes (``mp_prefetch``), each
reading (for TFDS: decoding) whole batches. The iterator's state is saved in each checkpoint
by :class:`smoothjax.workdir.checkpoints.Checkpointer` (one file per process), and a resumed run
continues from it; since the element of step ``k`` is a function of ``k`` alone, a checkpoint
without that state (older runs, another process or worker count) resumes from its step.

Host transforms: ``"random_resized_crop"`` is Cohen et al.'s ImageNet training transform,
torchvision's ``RandomResizedCrop(size)`` (scale (0.08, 1), ratio (3/4, 4/3), 10 tries, then a
center crop; bilinear) and ``RandomHorizontalFlip()``, drawn from ``(seed, epoch, example
index)`` so that it does not depend on the process or worker that reads the example.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from smoothjax.data import sources as data_lib
from smoothjax.errors import InputError

# Values of config.host_transform; "auto" is "random_resized_crop" on imagenet2012.
HOST_TRANSFORMS = ("auto", "none", "random_resized_crop")
# A tag in the crop's seed sequence, so its draws are independent of the epoch's permutation.
_CROP_STREAM = 1


def crop_box(
  rng: np.random.Generator,
  height: int,
  width: int,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
  tries: int = 10,
) -> tuple[int, int, int, int]:
  """A random crop ``(top, left, h, w)`` as torchvision's ``RandomResizedCrop.get_params``.

  Up to ``tries`` draws of an area fraction uniform in ``scale`` and an aspect ratio
  (width / height) log-uniform in ``ratio``; the first crop that fits the image is taken
  at a uniform position. If none fits, the largest center crop whose ratio lies in
  ``ratio``.

  References:
    Szegedy et al. 2015, "Going deeper with convolutions" (the Inception crop); torchvision
    ``transforms.RandomResizedCrop``.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(tries):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
  """Cohen et al.'s ImageNet training transform: a random resized crop to ``size``, a flip.

  ``transform(image, index, epoch)`` maps a uint8 ``(H, W, C)`` image to a uint8 ``(size,
  size, C)`` one; the crop and the flip (probability 1/2) are drawn from
  ``(seed, epoch, index)`` alone. Picklable, for grain's worker processes.
  """

  size: int
  seed: int

  def rng(self, index: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, epoch, index, _CROP_STREAM])

  def __call__(self, image: np.ndarray, index: int, epoch: int) -> np.ndarray:
    from PIL import Image

    rng = self.rng(index, epoch)
    height, width, channels = image.shape
    top, left, h, w = crop_box(rng, height, width)
    flip = rng.uniform() < 0.5
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    box = (left, top, left + w, top + h)
    out = pil.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
    out = np.asarray(out).reshape(self.size, self.size, channels)
    return out[:, ::-1] if flip else out


def host_transform(config, info: data_lib.DatasetInfo, seed: int) -> RandomResizedCrop | None:
  """The training images' host transform that ``config.host_transform`` names, or None."""
  name = config.get("host_transform", "auto")
  if name not in HOST_TRANSFORMS:
    raise InputError(f"unknown host_transform {name!r}; choose one of {list(HOST_TRANSFORMS)}")
  if name == "auto":
    name = "random_resized_crop" if info.name.split("/")[0].startswith("imagenet2012") else "none"
  if name == "none":
    return None
  height, width, _ = info.image_shape
  if height != width:
    raise InputError(
      f"host_transform {name!r} makes square images but {info.name!r} has {height}x{width} "
      "images; set --config.host_transform=none"
    )
  return RandomResizedCrop(height, seed)


@dataclasses.dataclass
class _ReadBatch:
  """Step ``k`` -> this process's rows of that step's global batch (picklable)."""

  split: data_lib.Split
  batch_size: int
  steps_per_epoch: int
  seed: int
  rows: tuple[int, int]
  transform: RandomResizedCrop | None = None

  def __post_init__(self):
    self._epoch, self._order = None, None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_epoch"] = state["_order"] = None  # Each worker draws the permutations it needs.
    return state

  def indices(self, step: int) -> np.ndarray:
    """The split indices of this process's rows of step ``step``'s global batch."""
    epoch, b = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch, self._order = epoch, data_lib.permutation(len(self.split), self.seed, epoch)
    start = b * self.batch_size
    return self._order[start + self.rows[0] : start + self.rows[1]]

  def __call__(self, step: int) -> dict:
    epoch = step // self.steps_per_epoch
    transform = None
    if self.transform is not None:
      crop = self.transform

      def transform(image, index):
        return crop(image, index, epoch)

    images, labels = self.split.get(self.indices(step), transform)
    return {"images": images, "labels": labels, "step": np.int64(step)}


def _parse_absl_flags() -> None:
  # grain's worker processes read an absl flag of grain's own; a program that does not
  # parse absl flags (a notebook, a test) would make them fail: mark defaults as parsed.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class TrainInput:
  """The training batches of a run for this process, as a checkpointable grain iterator.

  Args:
    split: the training split.
    batch_size: the global batch size ``B``.
    steps_per_epoch: global batches per epoch (the remainder of the epoch is dropped).
    num_epochs: epochs of the run (the iterator ends after them).
    seed: the run's seed: epoch ``e``'s order is ``data.permutation(n, seed, e)``.
    rows: ``(start, stop)``, the rows of each global batch this process reads.
    workers: grain worker processes (0: read in this process, in a background thread).
    prefetch: batches read ahead (per worker with workers).
    transform: a host transform of the training images, or None.
    start: the step of the iterator's first element: the resume step, or the ``start``
      of the run whose iterator state is to be restored (:attr:`description`).
  """

  def __init__(
    self,
    split: data_lib.Split,
    *,
    batch_size: int,
    steps_per_epoch: int,
    num_epochs: int,
    seed: int,
    rows: tuple[int, int],
    workers: int = 0,
    prefetch: int = 2,
    transform: RandomResizedCrop | None = None,
    start: int = 0,
  ):
    import grain

    for name, value, low in (("data_workers", workers, 0), ("data_prefetch", prefetch, 1)):
      if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0 <= rows[0] < rows[1] <= batch_size:
      raise InputError(f"rows {rows} must be a non-empty slice of the batch of {batch_size}")
    self.read = _ReadBatch(split, batch_size, steps_per_epoch, seed, tuple(rows), transform)
    self.steps_per_epoch = steps_per_epoch
    self.start, self.workers = int(start), int(workers)
    self._next = self.start
    total = num_epochs * steps_per_epoch
    dataset = grain.MapDataset.range(self.start, max(total, self.start)).map(self.read)
    stream = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=0 if workers else 1, prefetch_buffer_size=prefetch)
    )
    if workers:
      _parse_absl_flags()
      options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
      stream = stream.mp_prefetch(options)
    self.iterator = iter(stream)

  @property
  def description(self) -> dict:
    """What a saved iterator state is valid for: a resume builds the iterator from it."""
    # Only settings that are the same on every process of a job: meta is written by process
    # 0 for all, and every process must come to the same decision (orbax restores
    # collectively). The process count is in the names of the state files.
    return {"start": self.start, "workers": self.workers, "batch_size": self.read.batch_size}

  def compatible(self, saved) -> bool:
    """Whether an iterator state saved with ``saved`` (a :attr:`description`) fits this one."""
    if not isinstance(saved, dict):
      return False
    mine = {k: v for k, v in self.description.items() if k != "start"}
    return {k: saved.get(k) for k in mine} == mine and isinstance(saved.get("start"), int)

  def restored(self, step: int) -> None:
    """Notes that the iterator state of checkpoint ``step`` was restored into :attr:`iterator`."""
    self._next = step

  def epoch(self, epoch: int, start_batch: int = 0):
    """Yields this process's ``(images, labels)`` of batches ``start_batch ..`` of ``epoch``.

    Epochs are taken in order from one iterator, which reads ahead across epochs.
    """
    first = epoch * self.steps_per_epoch + start_batch
    if first != self._next:
      raise RuntimeError(f"the input is at step {self._next}, not at step {first}")
    for step in range(first, (epoch + 1) * self.steps_per_epoch):
      batch = next(self.iterator)
      if int(batch["step"]) != step:
        raise InputError(
          f"the saved input pipeline state gave the batch of step {int(batch['step'])} at step "
          f"{step}; delete the checkpoints' 'data' folders to resume from the step alone"
        )
      self._next = step + 1
      yield batch["images"], batch["labels"]

  def close(self) -> None:
    """Stops the worker processes and the background reading."""
    close = getattr(self.iterator, "close", None)
    if close is not None:
      close()
