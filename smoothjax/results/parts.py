"""The parts of a folder of generated images: npz files, each a batch with its settings' digest.

A generation job (:mod:`smoothjax.jobs.generate`) writes its images in batches, each an
npz file ``OUTDIR/parts/part-NNNNNN.npz`` (``part-I-of-N-NNNNNN.npz`` on process ``I``
of ``N``) of the arrays :data:`PART_ARRAYS` and the sha256 digest of the settings it was
generated with (:func:`settings_digest`). Written to a temporary name and renamed, a part
is whole or absent; a rerun reads the parts back (:func:`read_parts`) and generates only
what is missing. A part of other settings (copied from another outdir) is set aside as
``NAME.foreign``, a damaged one (cut off, a bad CRC, arrays that do not fit together) as
``NAME.damaged``: never merged, their images generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile
import zlib

import numpy as np

from smoothjax.errors import InputError, one_line

PART_ARRAYS = ("images", "seeds", "targets", "index", "confidence")
DIGEST_KEY = "settings_digest"
# A part's name (parts of a multi-process run name their process); not the temporary
# ``NAME.tmp.npz`` a writer is filling, nor a part set aside.
PART_NAME = re.compile(r"part-(?:\d+-of-\d+-)?\d+\.npz")
# What reading a damaged npz raises: a cut-off or garbled zip, a CRC mismatch, a bad
# compressed stream, a file that is not an npz at all.
_DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def settings_digest(settings: dict) -> str:
  """The sha256 hex digest of ``settings`` (a generation job's) as canonical JSON.

  Every part records the digest of the settings it was generated with, so that a part
  of other settings (copied from another outdir) is never merged.
  """
  text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def part_problem(arrays: dict) -> str | None:
  """What does not fit together in a part's arrays (None if they do)."""
  images, seeds, targets, index, confidence = (arrays[k] for k in PART_ARRAYS)
  if images.ndim != 4 or seeds.shape != images.shape:
    return f"images {images.shape} and seeds {seeds.shape} are not one batch of images"
  if any(a.ndim != 1 for a in (targets, index, confidence)):
    return "targets, index and confidence are not one value per image"
  if len({len(a) for a in arrays.values()}) != 1:
    return "its arrays have different lengths"
  if not all(np.issubdtype(a.dtype, np.integer) for a in (targets, index)):
    return f"targets ({targets.dtype}) and index ({index.dtype}) are not integers"
  return None


def set_aside(path: str, suffix: str) -> str | None:
  """Renames part ``path`` to the first free ``path + suffix`` (``.1``, ... after it).

  Returns:
    The new name; None if ``path`` is gone (another process of the job set it aside).
  """
  target, number = path + suffix, 0
  while os.path.lexists(target):
    number += 1
    target = f"{path}{suffix}.{number}"
  try:
    os.rename(path, target)
  except FileNotFoundError:
    return None
  return target


def read_part(path: str, digest: str) -> tuple[str, dict | str]:
  """One part: ``("ok", arrays)``, or ``("foreign" | "damaged", why)``."""
  try:
    part = np.load(path)
    if not isinstance(part, np.lib.npyio.NpzFile):
      return "damaged", "an array, not an npz archive of arrays"
    with part:
      if DIGEST_KEY not in part.files:
        return "foreign", "it records no settings digest: written elsewhere or by an older version"
      recorded = part[DIGEST_KEY]
      if recorded.shape or str(recorded) != digest:
        return "foreign", "it was generated with other settings, in another outdir"
      arrays = {k: part[k] for k in PART_ARRAYS}
  except _DAMAGED as e:
    return "damaged", one_line(e, 120)
  problem = part_problem(arrays)
  return ("damaged", problem) if problem else ("ok", arrays)


def read_parts(parts_dir: str, digest: str) -> dict[tuple[int, int], dict]:
  """The images of the parts in ``parts_dir`` generated with settings of ``digest``.

  Sets aside, with a note on stderr, every other part: one
  without this digest as ``NAME.foreign``, a damaged one as ``NAME.damaged``; their
  images are generated again.

  Returns:
    The arrays' rows by (class, index).
  """
  done = {}
  names = sorted(n for n in os.listdir(parts_dir) if PART_NAME.fullmatch(n))
  for path in (os.path.join(parts_dir, n) for n in names):
    kind, found = read_part(path, digest)
    if kind != "ok":
      target = set_aside(path, f".{kind}")
      if target is not None:  # (None: another process of the job set it aside)
        print(
          f"note: set aside the {kind} part {path} as {os.path.basename(target)} ({found}); "
          "its images are generated again",
          file=sys.stderr,
        )
      continue
    for row, (c, j) in enumerate(zip(found["targets"], found["index"], strict=True)):
      done[(int(c), int(j))] = {k: v[row] for k, v in found.items()}
  return done


def check_settings(outdir: str, settings: dict, *, write: bool = True) -> None:
  """Refuses an outdir of other settings; records ``settings`` (``OUTDIR/settings.json``)."""
  path = os.path.join(outdir, "settings.json")
  if os.path.isfile(path):
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except (OSError, ValueError):
      saved = None
    if saved is not None and saved != settings:
      changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
      what = ", ".join(f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:3])
      hint = " (the checkpoint was retrained since)" if "model" in changed else ""
      raise InputError(
        f"{outdir} holds images generated with other settings ({what}){hint}; rerun with "
        "the same settings to resume, or choose another --outdir"
      )
  if not write:
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_part(parts_dir: str, prefix: str, number: int, arrays: dict, digest: str) -> int:
  """Writes a batch as the first free ``PREFIX<number>.npz`` from ``number`` on; returns next.

  The part records ``digest``, its settings' (:func:`settings_digest`).
  """
  while os.path.lexists(path := os.path.join(parts_dir, f"{prefix}{number:06d}.npz")):
    number += 1
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays, **{DIGEST_KEY: np.asarray(digest)})
  os.replace(tmp, path)
  return number + 1
