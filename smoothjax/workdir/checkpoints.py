"""Checkpoints in a workdir: orbax saves, resume, integrity, and restore for evaluation.

Checkpoints live beside the run files of :mod:`smoothjax.workdir`::

  WORKDIR/checkpoints/<step>/{model,optimizer,meta}    orbax checkpoints
  WORKDIR/checkpoints_damaged/<step>    damaged checkpoints set aside on resume

Model and optimiser states are saved as separate items so evaluation restores
the model alone.

Integrity: each checkpoint's ``meta`` item records a SHA-256 checksum of the model
state and of the optimiser state (:func:`smoothjax.hashing.state_checksum`: every
array's path, dtype, shape and bytes, in sorted path order), computed from host
copies before orbax's asynchronous save starts. :meth:`Checkpointer.restore`
verifies the items it restores and raises :class:`CheckpointDamaged`, naming the
step and the directory, when a checksum does not match or an item is missing,
truncated or unreadable; :meth:`Checkpointer.restore_latest` falls back to the
newest intact checkpoint. Checkpoints written before checksums existed are
restored unverified.

The run files' names and readers (``CONFIG_FILE``, ``load_config``, ...) live in
:mod:`smoothjax.workdir` and are offered here too (``__all__``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from smoothjax import models
from smoothjax.errors import InputError, one_line
from smoothjax.hashing import path_str, state_checksum, state_checksums
from smoothjax.workdir.runs import (
  CONFIG_FILE,
  INFO_FILE,
  check_workdir,
  load_config,
  load_info,
  save_json,
  save_run_files,
)

# The run files' names and readers (workdir.py) and the checksum (hashing.py) are
# offered here too, where they were first.
__all__ = [
  "CHECKPOINT_DIR",
  "CHECKSUMS",
  "CONFIG_FILE",
  "DAMAGED_DIR",
  "INFO_FILE",
  "CheckpointDamaged",
  "Checkpointer",
  "load_config",
  "load_info",
  "require_checkpoints",
  "restore_model",
  "save_json",
  "save_run_files",
  "state_checksum",
]

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
# The key of the meta item that holds the checksums; restore hands meta back without it.
CHECKSUMS = "checksums"
_STATE_ITEMS = ("model", "optimizer")


def _one_line(error: BaseException) -> str:
  # orbax wraps TensorStore's own error (which names the array and the file) in a generic one.
  if str(error).startswith("Encountered error while reading") and error.__cause__ is not None:
    error = error.__cause__
  # TensorStore appends a dump of its spec to the useful part.
  return one_line(error, drop_from=" See full TensorStore details")


class CheckpointDamaged(InputError):
  """A checkpoint that cannot be trusted: an item missing, truncated, unreadable or
  failing its checksum.

  Attributes:
    directory: the checkpoints directory (``WORKDIR/checkpoints``).
    step: the step of the damaged checkpoint.
    reason: what is wrong with it.
  """

  def __init__(self, directory: str, step: int, reason: str, advice: str | None = None):
    self.directory = directory
    self.step = step
    self.reason = reason
    advice = advice or "restore an older checkpoint (another epoch) or retrain"
    super().__init__(f"checkpoint {step} in {directory} is damaged: {reason}; {advice}")


# --------------------------------------------------------------------------
# The checkpoint manager.


def _abstract(state):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _leaf_specs(tree) -> dict[str, tuple[tuple[int, ...], Any]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): (tuple(getattr(x, "shape", ())), getattr(x, "dtype", None)) for p, x in flat}


# Room for orbax's metadata files beside the arrays.
_SAVE_SLACK_BYTES = 1 << 20


class Checkpointer:
  """orbax ``CheckpointManager`` over ``WORKDIR/checkpoints``, indexed by training step.

  Each checkpoint's ``meta`` item holds what the caller saved (``step``, the completed
  ``epoch``s, ``steps_per_epoch``, ...) plus the checksums of the model and optimiser
  states, which :meth:`restore` verifies and removes.
  """

  def __init__(self, workdir: str, *, keep: int = 3, create: bool = True):
    check_workdir(workdir)
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.damaged_directory = os.path.abspath(os.path.join(workdir, DAMAGED_DIR))
    self._last_saved = None
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise InputError(f"{self.directory} is a file, not a checkpoint directory; move it away")
    if not create and not os.path.isdir(self.directory):
      raise InputError(f"no checkpoints in {workdir!r}; train first or check --workdir")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    handlers = {
      "model": ocp.StandardCheckpointHandler(),
      "optimizer": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler(),
    }
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    except OSError as e:
      raise InputError(
        f"cannot use {self.directory} for checkpoints ({_one_line(e)}); pass a writable --workdir"
      ) from e

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of every checkpoint, oldest first."""
    return sorted(self.manager.all_steps())

  def _damaged(self, step: int, reason: str) -> CheckpointDamaged:
    return CheckpointDamaged(self.directory, step, reason)

  def _check_step(self, step) -> int:
    steps = self.all_steps()
    if step not in steps:
      raise InputError(f"no checkpoint of step {step!r} in {self.directory}; have steps {steps}")
    return int(step)

  def _read_meta(self, step: int) -> dict:
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = meta["meta"]
    except Exception as e:  # orbax, tensorstore and json errors all mean the same here
      raise self._damaged(step, f"its meta item cannot be read ({_one_line(e)})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get(CHECKSUMS, {}), dict):
      raise self._damaged(step, f"its meta item holds {type(meta).__name__}, not a JSON object")
    return meta

  def meta(self, step: int) -> dict:
    """The ``meta`` item saved with checkpoint ``step`` (without the checksums)."""
    meta = self._read_meta(self._check_step(step))
    meta.pop(CHECKSUMS, None)
    return meta

  def step_of_epoch(self, epoch: int) -> int:
    """The checkpoint taken at the end of ``epoch``; InputError if there is none.

    A checkpoint whose meta item cannot be read is skipped with a warning.
    """
    ends, unreadable, steps_per_epoch = {}, {}, set()
    for step in self.all_steps():
      try:
        meta = self.meta(step)
        steps_per_epoch.add(meta["steps_per_epoch"])
        if step == meta["epoch"] * meta["steps_per_epoch"]:
          ends[meta["epoch"]] = step
      except (CheckpointDamaged, KeyError, TypeError) as e:
        if not isinstance(e, CheckpointDamaged):
          e = self._damaged(step, f"its meta item lacks {e}")
        print(
          f"warning: skipping checkpoint {step} in {self.directory}: {e.reason}", file=sys.stderr
        )
        unreadable[step] = e
    if epoch in ends:
      return ends[epoch]
    for spe in steps_per_epoch:
      if isinstance(epoch, int) and epoch * spe in unreadable:
        raise unreadable[epoch * spe]  # the end of that epoch, by the other checkpoints' meta
    damaged = f" (checkpoints {sorted(unreadable)} are damaged)" if unreadable else ""
    raise InputError(
      f"no checkpoint at the end of epoch {epoch}: have epochs {sorted(ends)}{damaged}"
    )

  def save(self, step: int, model_state, optimizer_state, meta: dict, data_iterator=None) -> None:
    """Saves a checkpoint asynchronously, with the checksums of both states in ``meta``.

    ``optimizer_state`` None saves the model alone (a model converted by convert.py,
    which evaluation and ``init_from`` restore; training does not resume from it).

    The checksums are computed from one host copy of the states before orbax starts.
    ``data_iterator``, a grain iterator, is saved too (item ``data``, one file per
    process: ``process_<i>-of-<n>.json``); every process must call this.
    """
    meta = dict(meta)
    states = {"model": model_state}
    if optimizer_state is not None:  # None: a model alone (a converted one, convert.py)
      states["optimizer"] = optimizer_state
    meta[CHECKSUMS] = state_checksums(states)
    # orbax reports a full disk from its writer threads, each printing a traceback;
    # checking first turns the common case into one clear error before any write.
    need = sum(int(x.nbytes) for x in jax.tree.leaves(states))
    need += _SAVE_SLACK_BYTES
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise InputError(
        f"the disk is full: checkpoint {step} needs about {need / 2**20:.1f} MiB in "
        f"{self.directory} but {free / 2**20:.1f} MiB are free; free some space and rerun the "
        "same command (training resumes from the last complete checkpoint)"
      )
    items = {name: ocp.args.StandardSave(state) for name, state in states.items()}
    items["meta"] = ocp.args.JsonSave(meta)
    if data_iterator is not None:
      # grain's handler is synchronous: the state is taken now, not when the arrays land.
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._writing(step):
      self.manager.save(step, args=ocp.args.Composite(**items))
    self._last_saved = step

  def restore_data(self, step: int, data_iterator) -> bool:
    """Restores this process's grain iterator state saved with checkpoint ``step``.

    Every process of a job must call this, and all return the same (orbax restores
    collectively).

    Returns:
      True if it was restored; False if the checkpoint lacks the state of any process of
      this job (saved before there was one, or by a job of another process count).
    """
    count = jax.process_count()
    folder = os.path.join(self.directory, str(step), "data")
    names = [f"process_{i}-of-{count}.json" for i in range(count)]
    if not all(os.path.isfile(os.path.join(folder, name)) for name in names):
      return False
    args = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator))
    try:
      self.manager.restore(step, args=args)
    except Exception as e:  # orbax, json and grain errors all mean the same here
      raise self._damaged(step, f"its input pipeline state cannot be read ({_one_line(e)})") from e
    return True

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    """Turns a failed write (a full disk, a read-only folder) into a one-line InputError.

    orbax writes in background threads and reports a failure at the next save or
    at ``wait_until_finished``; the half-written step stays in a temporary folder
    that orbax ignores, so the previous checkpoints remain the latest intact ones.
    """
    try:
      yield
    except Exception as e:
      text = " ".join(str(e).split())
      which = f"checkpoint {step}" if step is not None else "a checkpoint"
      if "No space left" in text or "os_error_code='28'" in text or "ENOSPC" in text:
        raise InputError(
          f"the disk is full: {which} could not be written to {self.directory}; free "
          "some space and rerun the same command (training resumes from the last "
          "complete checkpoint)"
        ) from e
      if "Permission denied" in text or "Read-only file system" in text:
        raise InputError(
          f"{which} could not be written to {self.directory} (permission denied or a "
          "read-only file system); make the workdir writable and rerun"
        ) from e
      raise

  def _saved_specs(self, step: int, names) -> dict[str, dict]:
    """Paths, shapes and dtypes of the saved arrays of items ``names``."""
    try:
      metadata = self.manager.item_metadata(step)
    except Exception as e:
      raise self._damaged(step, f"its metadata cannot be read ({_one_line(e)})") from e
    specs = {}
    for name in names:
      try:
        tree = metadata[name]
      except (KeyError, TypeError):
        tree = None
      if tree is None:
        raise self._damaged(step, f"its {name} item is missing")
      specs[name] = _leaf_specs(tree)
    return specs

  def _check_fits(self, step: int, name: str, saved: dict, target) -> None:
    want = _leaf_specs(target)
    if {p: s for p, (s, _) in saved.items()} == {p: s for p, (s, _) in want.items()}:
      return
    differ = sorted(p for p in want.keys() & saved.keys() if want[p][0] != saved[p][0])
    if differ:
      p = differ[0]
      detail = f"{p} is {saved[p][0]} there but {want[p][0]} here"
    elif want.keys() - saved.keys():
      detail = f"it lacks {sorted(want.keys() - saved.keys())[0]}"
    else:
      detail = f"it has an extra {sorted(saved.keys() - want.keys())[0]}"
    if name == "model":
      why = (
        f"it was trained as another model or on other data; restore it with the "
        f"{CONFIG_FILE} and {INFO_FILE} it was trained with"
      )
    else:
      why = "it was saved with another optimiser; resume with the optimiser settings it had"
    raise InputError(
      f"the {name} state of checkpoint {step} in {self.directory} does not fit the one to "
      f"restore into ({detail}): {why}"
    )

  def restore(self, step: int, model_state, optimizer_state=None):
    """Restores checkpoint ``step`` into the structure, dtypes and shardings of the states.

    Args:
      step: the checkpoint's training step.
      model_state: the model state (or its abstract ``jax.ShapeDtypeStruct`` tree).
      optimizer_state: the optimiser state to restore too, or None for the model alone.

    Returns:
      ``(model_state, optimizer_state or None, meta)``; ``meta`` is what was saved.

    Raises:
      CheckpointDamaged: an item is missing, truncated or unreadable, or a restored
        state does not match the checksum saved with it.
      InputError: there is no checkpoint ``step``, or the states have other shapes than
        the saved ones (another model or dataset).
    """
    step = self._check_step(step)
    targets = {"model": model_state}
    if optimizer_state is not None:
      targets["optimizer"] = optimizer_state
    saved = self._saved_specs(step, targets)
    for name, target in targets.items():
      self._check_fits(step, name, saved[name], target)
    meta = self._read_meta(step)

    def abstract(name, state):
      # Restored in the saved dtypes (so the checksum can be checked), then cast.
      def spec(path, s):
        dtype = saved[name][path_str(path)][1] or s.dtype
        return jax.ShapeDtypeStruct(s.shape, dtype, sharding=s.sharding)

      return jax.tree_util.tree_map_with_path(spec, _abstract(state))

    args = {n: ocp.args.StandardRestore(abstract(n, t)) for n, t in targets.items()}
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # orbax and tensorstore raise many types for damaged files
      raise self._damaged(step, f"it cannot be read ({_one_line(e)})") from e
    restored = {name: out[name] for name in targets}
    expected = meta.pop(CHECKSUMS, None)
    if expected is not None:  # Checkpoints from before checksums are not verified.
      got = state_checksums(restored)
      for name in targets:
        if expected.get(name) != got[name]:
          raise self._damaged(step, f"its {name} state does not match the checksum saved with it")

    def cast(state, target):
      return jax.tree.map(
        lambda a, t: a if a.dtype == t.dtype else a.astype(t.dtype), state, target
      )

    restored = {name: cast(restored[name], targets[name]) for name in targets}
    return restored["model"], restored.get("optimizer"), meta

  def restore_latest(self, model_state, optimizer_state=None, *, set_aside: bool = True):
    """Restores the newest intact checkpoint, skipping damaged ones with a warning.

    Walks from the newest step back; each damaged checkpoint skipped is reported on
    stderr and, with ``set_aside`` (for training), moved to ``WORKDIR/checkpoints_damaged/``
    once an intact one is found, so that orbax saves the steps after it again (it skips
    saving any step not newer than its latest checkpoint).

    Args:
      model_state: the model state (or its abstract tree) to restore into.
      optimizer_state: the optimiser state to restore too, or None.
      set_aside: move the damaged checkpoints that were skipped out of the way.

    Returns:
      ``(step, model_state, optimizer_state or None, meta)``, or None when there is no
      checkpoint at all.

    Raises:
      CheckpointDamaged: every checkpoint is damaged.
      InputError: the states do not fit the saved ones (another model or dataset).
    """
    skipped = []
    for step in reversed(self.all_steps()):
      try:
        model, optimizer, meta = self.restore(step, model_state, optimizer_state)
      except CheckpointDamaged as e:
        print(
          f"warning: skipping damaged checkpoint {step} in {self.directory}: {e.reason}",
          file=sys.stderr,
          flush=True,
        )
        skipped.append(e)
        continue
      if skipped and set_aside:
        self._set_aside([e.step for e in skipped])
      return step, model, optimizer, meta
    if skipped:
      newest = skipped[0]
      older = f"; so are the older ones ({[e.step for e in skipped[1:]]})" if skipped[1:] else ""
      raise CheckpointDamaged(
        self.directory,
        newest.step,
        newest.reason + older,
        advice=f"no intact checkpoint is left: retrain (delete {self.directory} first)",
      )
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:  # one process moves them on a shared filesystem
      self._move_aside(steps)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("smoothjax checkpoints set aside")
    self.manager.reload()

  def _move_aside(self, steps: list[int]) -> None:
    os.makedirs(self.damaged_directory, exist_ok=True)
    for step in steps:
      source = os.path.join(self.directory, str(step))
      target = os.path.join(self.damaged_directory, str(step))
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(self.damaged_directory, f"{step}.{suffix}")
      try:
        os.rename(source, target)
      except OSError as e:
        raise InputError(
          f"cannot move damaged checkpoint {source} aside ({_one_line(e)}); delete it"
        ) from e
      print(f"warning: moved damaged checkpoint {step} to {target}", file=sys.stderr, flush=True)

  def close(self) -> None:
    """Waits for the last save to be written, then closes; InputError if it failed."""
    try:
      with self._writing(self._last_saved):
        self.manager.wait_until_finished()
    except BaseException:
      with contextlib.suppress(Exception):  # Best effort: the write error is the one to report.
        self.manager.close()
      raise
    self.manager.close()


def require_checkpoints(workdir: str, what: str) -> None:
  """Refuses a workdir without checkpoints: ``what`` (a setting's name) names it in the error.

  Raises:
    InputError: ``"{what} {workdir} has no checkpoints; train it first"``.
  """
  ckpt = Checkpointer(workdir, create=False)
  try:
    if ckpt.latest_step() is None:
      raise InputError(f"{what} {workdir} has no checkpoints; train it first")
  finally:
    ckpt.close()


def restore_model(workdir: str, epoch: int | None = None):
  """Rebuilds a trained model from its workdir alone, in eval mode.

  The checkpoint is verified against its checksum. Without ``epoch``, a damaged
  latest checkpoint is skipped with a warning on stderr for the newest intact one
  (nothing in the workdir is changed); with ``epoch``, a damaged checkpoint raises.

  Args:
    workdir: a directory written by ``train.py``.
    epoch: restore the checkpoint taken at the end of this epoch; by default the
      latest intact checkpoint.

  Returns:
    ``(model, config, info, meta)`` where ``meta`` holds the checkpoint's ``step``
    and completed ``epoch``s.

  Raises:
    CheckpointDamaged: the checkpoint (every checkpoint, without ``epoch``) is damaged.
    InputError: the workdir, its config.json or dataset_info.json are missing or
      invalid, or the checkpoint holds another model than config.json names.
  """
  config = load_config(workdir)
  info = load_info(workdir)
  ckpt = Checkpointer(workdir, create=False)
  try:
    model = nnx.eval_shape(lambda: models.from_config(config, info, seed=0))
    graphdef, abstract_state = nnx.split(model)
    # On this process's first device: under jax.distributed a program that evaluates the
    # model (certify.py, attack.py) computes on its own devices, never across processes.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=local), abstract_state
    )
    if epoch is None:
      restored = ckpt.restore_latest(abstract_state, set_aside=False)
      if restored is None:
        raise InputError(f"no checkpoints in {workdir!r}; train first or check --workdir")
      _, state, _, meta = restored
    else:
      state, _, meta = ckpt.restore(ckpt.step_of_epoch(epoch), abstract_state)
  finally:
    ckpt.close()
  model = nnx.merge(graphdef, state)
  model.eval()
  return model, config, info, meta
