"""Result files written by the processes of a multi-process JAX job, each its own share.

Under ``jax.distributed`` (one process per host, the same command line on every
process) a program that writes one row per input, such as ``certify.py`` or
``attack.py``, splits the inputs it is asked for by position: process ``i`` of
``N`` takes ``indices[i::N]`` (:func:`smoothjax.devices.parallel.process_share`). Keys
derive from the dataset index, so a row is the same whichever process computes it.
Each process appends its rows to its own part file, ``OUTFILE.part-I-of-N``, a
result file with its own settings and lock; no process waits on another between
inputs. At the end the processes meet once and process 0 merges the parts into
``OUTFILE``, rows sorted by index (:func:`smoothjax.results.merge_parts`).

Resuming: every process reads the rows already in ``OUTFILE`` and in every part
(of any process count) and skips them, so rerunning the same command resumes every
part, and a rerun on another number of processes neither repeats nor loses a row:
parts of another count are only read. A single-process run onto a result that has
parts does the same and merges them at the end. Readers
(:func:`smoothjax.results.read_results`, ``certify.py analyze``) read ``OUTFILE``
with its parts as one result at any time.

Process 0 holds ``OUTFILE.lock`` for the whole run, so another job, or a
single-process run, on the same output is refused; each process holds its part's
lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from smoothjax import locks, stopping
from smoothjax.devices import parallel, processes
from smoothjax.errors import InputError
from smoothjax.results import paths, reader, writer

# How long the processes wait for each other: to start (model and data loading), and
# at the end (shares finish at different times; sequential CERTIFY's more so).
START_TIMEOUT_SECONDS = 30 * 60
FINISH_TIMEOUT_SECONDS = 30 * 24 * 3600


class Share:
  """This process's share of a result file: where it writes and what is done already.

  Attributes:
    outfile: the result file the job writes.
    path: the file this process appends to (``outfile`` itself in a single process).
    index, count: this process and the number of processes.
    done: idx values in ``outfile`` or any of its parts, this process's file included.
    to_check: the rows already written whose inputs this process re-hashes against
      the dataset (its own rows, and its share of the others'), or None for files
      without the standard columns.
  """

  def __init__(self, outfile, writer, others, index: int, count: int):
    self.outfile = outfile
    self.path = writer.path
    self.index, self.count = index, count
    self._writer = writer
    self.done = set(writer.done)
    self.to_check = writer.existing
    if others is not None:
      self.done |= set(others.idx.tolist())
      if self.to_check is not None and len(others.idx):
        mine = np.zeros(len(others.idx), bool)
        mine[np.argsort(others.idx, kind="stable")[index::count]] = True
        self.to_check = _concat(self.to_check, _rows(others.results, mine))

  def mine(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """This process's share of ``indices`` (:func:`smoothjax.devices.parallel.process_share`)."""
    return parallel.process_share(np.asarray(indices), index=self.index, count=self.count)

  def todo(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """This process's share of ``indices`` that is not done yet, in order."""
    return np.array([i for i in self.mine(indices) if int(i) not in self.done], dtype=np.int64)

  def write(self, row: Mapping[str, Any]) -> None:
    """Appends one row to this process's file (see :meth:`ResultWriter.write`)."""
    self._writer.write(row)
    self.done.add(int(row["idx"]))


def _rows(res: reader.Results, mask: np.ndarray) -> reader.Results:
  return reader.Results(
    idx=res.idx[mask],
    label=res.label[mask],
    predict=res.predict[mask],
    radius=res.radius[mask],
    correct=res.correct[mask],
    extra={k: v[mask] for k, v in res.extra.items()},
    path=res.path,
  )


def _concat(a: reader.Results, b: reader.Results) -> reader.Results:
  return reader.Results(
    idx=np.concatenate([a.idx, b.idx]),
    label=np.concatenate([a.label, b.label]),
    predict=np.concatenate([a.predict, b.predict]),
    radius=np.concatenate([a.radius, b.radius]),
    correct=np.concatenate([a.correct, b.correct]),
    extra={k: np.concatenate([a.extra[k], b.extra[k]]) for k in a.extra},
    path=a.path,
  )


def _read_others(outfile: str, own: str, columns, settings, hints):
  """The rows of ``outfile`` and its parts but ``own`` (None: none), checked against this run."""
  combined = reader.read_combined(outfile, exclude=[own])
  if combined is None:
    return None
  if combined.header.split("\t") != list(columns):
    raise InputError(
      f"{combined.files[0]} has columns {combined.header.split(chr(9))} but this run writes "
      f"{list(columns)}; choose another --outfile or move that file away"
    )
  rows = combined.parsed.idx
  if len(rows) and combined.settings is None:
    raise InputError(
      f"{combined.files[0]} has rows but no settings file, so they may come from other "
      "settings; choose another --outfile or move it away"
    )
  if len(rows):
    problem = writer.settings_mismatch(combined.files[0], combined.settings, settings, hints)
    if problem:
      raise InputError(problem)
  return combined.parsed


@contextlib.contextmanager
def open_share(
  outfile: str,
  columns: Sequence[str],
  *,
  settings: Mapping[str, Any],
  hints: Mapping[str, str] | None = None,
) -> Iterator[Share]:
  """Opens this process's file of result ``outfile`` for the rows of its share.

  In a single process this is ``outfile`` itself, under ``outfile``'s lock, as
  before multi-process runs existed. On leaving the ``with`` block without an error,
  the processes wait for each other and process 0 merges every part into ``outfile``.

  Raises:
    InputError: a lock is held by another run, a file has other columns or settings
      (see :class:`smoothjax.results.ResultWriter`), the processes of the job were
      started with other settings, or another process of the job failed to start.
  """
  index, count = jax.process_index(), jax.process_count()
  if count > 1:
    # Processes started with other command lines fail together, before any work.
    agree = {"outfile": os.path.abspath(outfile), "columns": list(columns), **settings}
    processes.agree(f"smoothjax {outfile} settings", agree, START_TIMEOUT_SECONDS)
  path = outfile if count == 1 else paths.part_path(outfile, index, count)
  parent = os.path.dirname(outfile)
  if parent:
    os.makedirs(parent, exist_ok=True)
  outfile_lock = None
  if index == 0:
    outfile_lock = locks.acquire(paths.lock_path(outfile), f"--outfile {outfile}")
  try:
    part_lock = None
    if path != outfile:
      part_lock = locks.acquire(paths.lock_path(path), f"--outfile part {path}")
    try:
      # The other files first: one that refuses this run must leave nothing written.
      others = _read_others(outfile, path, columns, settings, hints or {})
      with writer.ResultWriter(path, columns, settings=settings, hints=hints) as out:
        meet(f"smoothjax {outfile} open", START_TIMEOUT_SECONDS)
        yield Share(outfile, out, others, index, count)
    finally:
      if part_lock is not None:
        locks.release(paths.lock_path(path), part_lock)
    meet(f"smoothjax {outfile} done", FINISH_TIMEOUT_SECONDS)
    if index == 0:
      writer.merge_parts(outfile)  # In a single process: parts of an earlier run, if any.
  finally:
    if outfile_lock is not None:
      locks.release(paths.lock_path(outfile), outfile_lock)


def meet(name: str, timeout_seconds: float) -> None:
  """Waits for every process of the job (:func:`smoothjax.devices.parallel.wait_for_processes`).

  Raises:
    InputError: a process failed or did not come within ``timeout_seconds``.
  """
  try:
    parallel.wait_for_processes(name, timeout_seconds)
  except Exception as e:  # noqa: BLE001 - JAX raises its runtime's own error types.
    if isinstance(e, InputError | stopping.Stopped):
      raise
    raise InputError(
      f"the processes of this job did not all reach {name.split()[-1]!r} "
      f"({' '.join(str(e).split())[:200]}); see the other processes' messages"
    ) from None
