"""A workdir: its run files and checkpoints, and the model restored from them.

* :mod:`~smoothjax.workdir.runs`: ``config.json`` and ``dataset_info.json``, written
  and read back with their checks.
* :mod:`~smoothjax.workdir.checkpoints`: orbax checkpoints, resume, integrity and
  :func:`restore_model`, the model of a workdir for evaluation.
"""

from smoothjax.workdir import checkpoints, runs
from smoothjax.workdir.checkpoints import (
  CheckpointDamaged,
  Checkpointer,
  restore_model,
)
from smoothjax.workdir.runs import (
  CONFIG_FILE,
  INFO_FILE,
  check_workdir,
  load_config,
  load_info,
  make_workdir,
  save_json,
  save_run_files,
)

__all__ = [
  "check_workdir",
  "CheckpointDamaged",
  "Checkpointer",
  "checkpoints",
  "CONFIG_FILE",
  "INFO_FILE",
  "load_config",
  "load_info",
  "make_workdir",
  "restore_model",
  "runs",
  "save_json",
  "save_run_files",
]
