"""Tests for smoothjax.hashing: the digests that checkpoints and result files store."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import hashing
from smoothjax.workdir import checkpoints as checkpointing

_Pair = collections.namedtuple("_Pair", ["w", "b"])

# Computed at commit bcd2a6c, before checkpointing and results shared one hashing module.
# Checkpoints store state_checksum values and result files store fingerprints and input
# hashes: if one of these changes, every file written before looks damaged or foreign.
PINNED_CHECKSUM = "sha256:f0d20cc4f4b5af147ed84322184bc5a02fe4d90efbf046e55078df8cbd45b7e4"
PINNED_OPTIMIZER_CHECKSUM = (
  "sha256:f31eadc96b1ee8910cf3189b640559a6fe58d133d7b3313acef0db7b251dca85"
)
PINNED_FINGERPRINT = "sha256:d9fc9f8b70691ce5426a0dff0fc790a752a687c5ccbc6addc3b2af08e66e1119"
PINNED_INPUT_HASHES = ["69fff66778f5fed3", "bcba09c1f6467b3b"]


def _tree():
  # Dict, sequence and attribute keys; 'a' and 'a-b' sort in one order as 'a/x' paths and
  # in the other as keystr paths, so each format's ordering is pinned too.
  return {
    "a": {"x": np.arange(6, dtype=np.float32).reshape(2, 3)},
    "a-b": [np.array([True, False]), jnp.arange(3, dtype=jnp.int32)],
    "layer": _Pair(w=jnp.full((2, 2), 0.5, jnp.bfloat16), b=np.float64(-1.25)),
    "key": jax.random.key(7),
    "step": np.int64(3),
  }


def test_checkpoint_checksums_keep_their_values():
  assert checkpointing.state_checksum(_tree()) == PINNED_CHECKSUM
  assert hashing.state_checksum(_tree()) == PINNED_CHECKSUM
  both = hashing.state_checksums({"model": _tree(), "optimizer": {"count": jnp.int32(2)}})
  assert both == {"model": PINNED_CHECKSUM, "optimizer": PINNED_OPTIMIZER_CHECKSUM}


def test_result_fingerprints_and_input_hashes_keep_their_values():
  assert hashing.fingerprint(_tree()) == PINNED_FINGERPRINT
  assert hashing.fingerprint(_tree()) == PINNED_FINGERPRINT
  images = np.arange(18, dtype=np.float32).reshape(2, 3, 3, 1) / 17
  assert hashing.input_hashes(images, [4, 9]) == PINNED_INPUT_HASHES


def test_the_two_formats_order_paths_their_own_way():
  pairs = hashing.host_leaves({"t": _tree()})["t"]
  by_path_str = [
    hashing.path_str(p) for p, _ in sorted(pairs, key=lambda x: hashing.path_str(x[0]))
  ]
  by_keystr = [
    hashing.path_str(p) for p, _ in sorted(pairs, key=lambda x: jax.tree_util.keystr(x[0]))
  ]
  assert by_path_str[:3] == ["a-b/0", "a-b/1", "a/x"]
  assert by_keystr[:3] == ["a/x", "a-b/0", "a-b/1"]


def test_host_leaves_hand_back_key_data_and_numpy_arrays():
  pairs = dict((hashing.path_str(p), a) for p, a in hashing.host_leaves({"t": _tree()})["t"])
  assert all(isinstance(a, np.ndarray) for a in pairs.values())
  np.testing.assert_array_equal(pairs["key"], jax.random.key_data(jax.random.key(7)))
  assert pairs["layer/w"].dtype == jnp.bfloat16
