"""SHA-256 digests of arrays: checkpoint checksums, model fingerprints, input hashes.

Every digest of a pytree hashes each array's path, dtype, shape and bytes, in
sorted path order, from host copies made in one transfer. Two record formats
are kept, because files already store digests of each and a changed digest
would make an intact file look damaged:

* :func:`state_checksum` (checkpoints' ``meta`` item): paths as ``a/b/0``,
  the fields separated by NUL bytes.
* :func:`fingerprint` (result files' settings): paths as
  ``jax.tree_util.keystr`` writes them, ``path:dtype:shape;``.

:func:`input_hashes` gives one short digest per dataset input, written beside
each result row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KeyPath = tuple[Any, ...]


def path_str(path: KeyPath) -> str:
  """A pytree path as ``'a/b/0'``, the same for a state and for orbax's metadata of it."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def host_leaves(trees: Mapping[str, Any]) -> dict[str, list[tuple[KeyPath, np.ndarray]]]:
  """Host copies of every leaf of each tree, with its path, in one transfer.

  PRNG keys become their key data; arrays sharded over several hosts are
  gathered (replicated ones are read from a local shard).

  Args:
    trees: pytrees of arrays (JAX, NumPy or scalars) by name.

  Returns:
    For each name, ``(path, array)`` pairs in the tree's flattening order.
  """
  flat = {name: jax.tree_util.tree_flatten_with_path(tree)[0] for name, tree in trees.items()}
  leaves = []
  for pairs in flat.values():
    for _, leaf in pairs:
      if isinstance(leaf, jax.Array):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
          leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
          if leaf.is_fully_replicated:
            leaf = leaf.addressable_data(0)
          else:
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
      leaves.append(leaf)
  host = iter(jax.device_get(leaves))
  return {
    name: [(path, np.asarray(next(host))) for path, _ in pairs] for name, pairs in flat.items()
  }


def _sha256(records: Iterable[tuple[str, np.ndarray]], sep: str, end: str) -> str:
  """``"sha256:<hex>"`` of ``path{sep}dtype{sep}shape{end}`` and the bytes of each array.

  The records are hashed in sorted path order (stable for equal paths).
  """
  h = hashlib.sha256()
  for path, array in sorted(records, key=lambda record: record[0]):
    array = np.ascontiguousarray(array)
    h.update(f"{path}{sep}{array.dtype.str}{sep}{array.shape}{end}".encode())
    h.update(array.reshape(-1).view(np.uint8).data)
  return "sha256:" + h.hexdigest()


def state_checksums(states: Mapping[str, Any]) -> dict[str, str]:
  """:func:`state_checksum` of each state, from one host transfer of them all."""
  out = {}
  for name, pairs in host_leaves(states).items():
    # By path string: a later leaf with the same string replaces an earlier one.
    arrays = {path_str(path): array for path, array in pairs}
    out[name] = _sha256(arrays.items(), "\0", "\0")
  return out


def state_checksum(state) -> str:
  """SHA-256 of a state's arrays: each one's path, dtype, shape and bytes, in path order.

  The checksum a checkpoint's ``meta`` item stores for each of its states.

  Args:
    state: a pytree of arrays (e.g. ``nnx.state(model)``), on any devices.

  Returns:
    ``"sha256:<hex digest>"``.
  """
  return state_checksums({"state": state})["state"]


def fingerprint(tree) -> str:
  """SHA-256 of every array in a pytree (paths, dtypes, shapes and bytes), in path order.

  ``fingerprint(nnx.state(model))`` identifies a model's parameters and
  statistics: a retrained or replaced checkpoint gives another value. Result
  files store it among their settings.

  Args:
    tree: a pytree of arrays (JAX, NumPy or scalars), e.g. ``nnx.state(model)``.

  Returns:
    ``"sha256:"`` followed by 64 hex digits.
  """
  pairs = host_leaves({"tree": tree})["tree"]
  return _sha256([(jax.tree_util.keystr(path), array) for path, array in pairs], ":", ";")


def input_hashes(images, labels) -> list[str]:
  """One short digest per input: SHA-256 of its label, shape, dtype and bytes, 16 hex digits.

  Written beside each result row (column ``input_hash``), so a resumed run can
  check that every row already in a file was computed from the input that the
  dataset holds now at that index.

  Args:
    images: array ``(B, ...)`` of inputs.
    labels: array ``(B,)`` of integer labels.

  Returns:
    ``B`` strings.
  """
  images = np.ascontiguousarray(np.asarray(images))
  labels = np.asarray(labels).astype(np.int64)
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  head = f"{images.dtype.str}{images.shape[1:]}".encode()
  out = []
  for image, label in zip(images, labels, strict=True):
    h = hashlib.sha256(head)
    h.update(label.tobytes())
    h.update(image.tobytes())
    out.append(h.hexdigest()[:16])
  return out
