"""Writes the PyTorch files that tests/test_pickles.py reads without PyTorch, and their values.

Needs PyTorch and dill; the tests need neither. Run from the repository root with a
Python that has them::

  /path/to/python-with-torch tools/torch_reader_fixtures.py

It saves one checkpoint-like dict twice into tests/fixtures/torch/reader/, in each of
``torch.save``'s formats, both with ``pickle_module=dill`` (as MadryLab's robustness
saves its checkpoints):

* ``checkpoint_zip.pt``: the zip format of PyTorch >= 1.6;
* ``checkpoint_legacy.pt``: ``_use_new_zipfile_serialization=False``, the format of the
  field's 2019-2020 files;
* ``expected.npz``: every tensor and NumPy array of the dict, by its path (``views/slice``,
  ``state_dict/1.running_mean``, ``optimizer/state/0/exp_avg``), as
  ``tensor.detach().contiguous().numpy()`` gives it (bfloat16 as float32, conjugate and
  negative views resolved).

The dict holds a tensor of every dtype the field uses (and uint16, which torch 2 saves
through ``_rebuild_tensor_v3`` and an untyped storage), views into one storage (a slice
with a storage offset, a transposed view, strided views, two rows of one storage, an
expanded view of stride 0, an empty tensor, lazily conjugated and negated views), 0-d
tensors, ``nn.Parameter``\\ s (one with a Python attribute, one plain tensor with one),
the ``OrderedDict`` state_dict of a small ``nn.Sequential(Conv2d, BatchNorm2d, Linear)``
after one training step (``num_batches_tracked`` included) and its Adam state, nested
lists and tuples, plain Python values, a NumPy float64 scalar and array, an
``argparse.Namespace`` and a lambda, which only dill pickles.
"""

from __future__ import annotations

import argparse
import collections
import os

import dill
import numpy as np
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch", "reader")


def checkpoint() -> dict:
  g = torch.Generator().manual_seed(0)

  def randn(*shape):
    return torch.randn(*shape, generator=g)

  dtypes = {
    "float32": randn(3),
    "float64": randn(2, 2).double(),
    "float16": randn(4).half(),
    "bfloat16": randn(2, 3).bfloat16(),
    "int64": torch.tensor([-(2**40), 7, 2**62], dtype=torch.int64),
    "int32": torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32),
    "int16": torch.tensor([-32768, 1, 32767], dtype=torch.int16),
    "int8": torch.tensor([-128, -1, 127], dtype=torch.int8),
    "uint8": torch.tensor([0, 128, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "uint16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
  }
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  views = {
    "base": base,
    "slice": base[1:3],  # storage offset 6
    "transposed": base.t(),
    "strided": base[:, ::2],
    "offset_strided": base[1:, 1::3],  # offset 7, strides (6, 3)
    "row0": base[0],  # two more views of the same storage
    "row2_tail": base[2, 2:],
    "element": base[3, 5],  # a 0-d view at offset 23, the storage's last element
    "bf16_column": dtypes["bfloat16"][:, 1],  # a view of a bfloat16 storage
    "expanded": randn(1, 3).expand(4, 3),  # stride 0
    "empty": torch.zeros(0, 3),
    # Lazily conjugated and negated views: _rebuild_tensor_v2's metadata sets their bits.
    "conj": torch.complex(randn(2), randn(2)).conj(),
    "neg": torch._neg_view(randn(3)),
  }

  model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(4, 2))
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss = model(randn(2, 1, 6, 6)).square().mean()  # (2, 2, 4, 2): Linear acts on the width
  loss.backward()
  optimizer.step()
  tagged = torch.ones(2)
  tagged.note = "a tensor with a Python attribute"
  parameter = nn.Parameter(randn(2, 2))
  tagged_parameter = nn.Parameter(randn(3))
  tagged_parameter.note = "a parameter with a Python attribute"
  return {
    "dtypes": dtypes,
    "views": views,
    "scalar": torch.tensor(2.5),
    "scalar_int": torch.tensor(7),
    "parameter": parameter,
    "tagged": tagged,
    "tagged_parameter": tagged_parameter,
    "state_dict": model.state_dict(),
    "optimizer": optimizer.state_dict(),
    "nested": [1, (2.5, "three", None, [True, (torch.tensor([4, 5]),)]), {"k": [()]}],
    "plain": {"int": 90, "float": 0.25, "str": "cifar_resnet110", "none": None, "big": 2**70},
    "numpy_scalar": np.float64(0.1),
    "numpy_array": np.arange(6, dtype=np.int32).reshape(2, 3),
    "args": argparse.Namespace(arch="resnet50", noise_sd=0.25, epochs=[1, 2]),
    "schedule": lambda epoch: 0.1 ** (epoch // 30),
    "epoch": 90,
  }


def arrays(obj, path=()) -> dict[str, np.ndarray]:
  """Every tensor and NumPy array in ``obj``, by its path, as NumPy arrays."""
  if isinstance(obj, torch.Tensor):
    t = obj.detach().resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:
      t = t.float()
    return {"/".join(path): t.numpy().copy()}
  if isinstance(obj, np.ndarray):
    return {"/".join(path): obj}
  if isinstance(obj, dict):
    items = obj.items()
  elif isinstance(obj, list | tuple):
    items = enumerate(obj)
  else:
    return {}
  out = {}
  for key, value in items:
    out.update(arrays(value, (*path, str(key))))
  return out


def main():
  os.makedirs(OUT, exist_ok=True)
  obj = checkpoint()
  assert isinstance(obj["state_dict"], collections.OrderedDict)
  torch.save(obj, os.path.join(OUT, "checkpoint_zip.pt"), pickle_module=dill)
  torch.save(obj, os.path.join(OUT, "checkpoint_legacy.pt"), pickle_module=dill,
             _use_new_zipfile_serialization=False)
  np.savez(os.path.join(OUT, "expected.npz"), **arrays(obj))
  for name in sorted(os.listdir(OUT)):
    print(f"{os.path.getsize(os.path.join(OUT, name)):>8,d}  {name}")


if __name__ == "__main__":
  main()
