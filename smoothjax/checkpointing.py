"""Checkpoints in a workdir: orbax saves, resume, and restore for evaluation.

A workdir holds everything needed to use a trained model without the original
command line::

  WORKDIR/config.json         the run's ml_collections config
  WORKDIR/dataset_info.json   classes, image shape and normalisation constants
  WORKDIR/checkpoints/<step>/{model,optimizer,meta}    orbax checkpoints
  WORKDIR/metrics.jsonl       one line of metrics per epoch

Model and optimiser states are saved as separate items so evaluation restores
the model alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from smoothjax import data as data_lib
from smoothjax import models
from smoothjax.errors import InputError

CONFIG_FILE = "config.json"
INFO_FILE = "dataset_info.json"
CHECKPOINT_DIR = "checkpoints"


def save_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def save_run_files(workdir: str, config: ml_collections.ConfigDict, info: data_lib.DatasetInfo):
  """Saves the config and the dataset description beside the checkpoints."""
  os.makedirs(workdir, exist_ok=True)
  save_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()))
  save_json(os.path.join(workdir, INFO_FILE), dataclasses.asdict(info))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise InputError(
      f"no trained run in {workdir!r} ({CONFIG_FILE} missing); train one with "
      f"python train.py --config configs/default.py --workdir {workdir}"
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_info(workdir: str) -> data_lib.DatasetInfo:
  with open(os.path.join(workdir, INFO_FILE)) as f:
    raw = json.load(f)
  for key in ("image_shape", "mean", "std"):
    raw[key] = tuple(raw[key])
  return data_lib.DatasetInfo(**raw)


class Checkpointer:
  """orbax ``CheckpointManager`` over ``WORKDIR/checkpoints``, indexed by training step.

  Each checkpoint's ``meta`` item holds its ``step``, the completed ``epoch``s and
  ``steps_per_epoch``.
  """

  def __init__(self, workdir: str, *, keep: int = 3, create: bool = True):
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not create and not os.path.isdir(directory):
      raise InputError(f"no checkpoints in {workdir!r}; train first or check --workdir")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self.manager = ocp.CheckpointManager(
      directory, options=options, item_names=("model", "optimizer", "meta")
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def step_of_epoch(self, epoch: int) -> int:
    """The checkpoint taken at the end of ``epoch``; InputError if there is none."""
    ends = {}
    for step in self.manager.all_steps():
      meta = self.meta(step)
      if step == meta["epoch"] * meta["steps_per_epoch"]:
        ends[meta["epoch"]] = step
    if epoch not in ends:
      raise InputError(f"no checkpoint at the end of epoch {epoch}: have epochs {sorted(ends)}")
    return ends[epoch]

  def save(self, step: int, model_state, optimizer_state, meta: dict) -> None:
    self.manager.save(
      step,
      args=ocp.args.Composite(
        model=ocp.args.StandardSave(model_state),
        optimizer=ocp.args.StandardSave(optimizer_state),
        meta=ocp.args.JsonSave(meta),
      ),
    )

  def restore(self, step: int, model_state, optimizer_state=None):
    """Restores into the structure, dtypes and shardings of the given states.

    Returns ``(model_state, optimizer_state or None, meta)``.
    """
    items = {
      "model": ocp.args.StandardRestore(_abstract(model_state)),
      "meta": ocp.args.JsonRestore(),
    }
    if optimizer_state is not None:
      items["optimizer"] = ocp.args.StandardRestore(_abstract(optimizer_state))
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return out["model"], out.get("optimizer") if optimizer_state is not None else None, out["meta"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _abstract(state):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def restore_model(workdir: str, epoch: int | None = None):
  """Rebuilds a trained model from its workdir alone, in eval mode.

  Args:
    workdir: a directory written by ``train.py``.
    epoch: restore the checkpoint taken at the end of this epoch; by default the
      latest checkpoint.

  Returns:
    ``(model, config, info, meta)`` where ``meta`` holds the checkpoint's ``step``
    and completed ``epoch``s.
  """
  config = load_config(workdir)
  info = load_info(workdir)
  ckpt = Checkpointer(workdir, create=False)
  try:
    step = ckpt.latest_step() if epoch is None else ckpt.step_of_epoch(epoch)
    if step is None:
      raise InputError(f"no checkpoints in {workdir!r}; train first or check --workdir")
    model = nnx.eval_shape(lambda: models.from_config(config, info, seed=0))
    graphdef, abstract_state = nnx.split(model)
    state, _, meta = ckpt.restore(step, abstract_state)
  finally:
    ckpt.close()
  model = nnx.merge(graphdef, state)
  model.eval()
  return model, config, info, meta
