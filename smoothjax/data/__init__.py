"""Data: datasets, the training input pipeline and augmentation.

* :mod:`~smoothjax.data.sources`: the embedded MNIST subset, IDX folders and TFDS
  datasets as random-access splits (:func:`load`, :class:`Dataset`, :class:`DatasetInfo`).
* :mod:`~smoothjax.data.pipeline`: training input on one host or many (grain).
* :mod:`~smoothjax.data.augment`: random crops and flips on the device.
"""

from smoothjax.data import augment, pipeline, sources
from smoothjax.data.sources import (
  EMBEDDED_NAMES,
  ArraySplit,
  Dataset,
  DatasetInfo,
  Split,
  TfdsSplit,
  Transform,
  batches,
  load,
  num_batches,
  permutation,
  read_idx,
  write_idx,
)

__all__ = [
  "ArraySplit",
  "augment",
  "batches",
  "Dataset",
  "DatasetInfo",
  "EMBEDDED_NAMES",
  "load",
  "num_batches",
  "permutation",
  "pipeline",
  "read_idx",
  "sources",
  "Split",
  "TfdsSplit",
  "Transform",
  "write_idx",
]
