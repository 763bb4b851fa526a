"""Old import paths of modules that moved into the layer folders, kept for one release.

Until version 0.1.0 every module sat directly under ``smoothjax/``. They now live in
the folder of their layer (see the package docstring); the old paths keep working,
with a :class:`DeprecationWarning` naming the new one, through the one table below:
``import smoothjax.stats``, ``from smoothjax import stats`` and
``from smoothjax.stats import clopper_pearson`` all give ``smoothjax.smoothing.stats``.
Modules whose old name is now the name of their folder (``data``, ``training``,
``workdir``, ``results``, ``analysis``, ``smoothing``) need no alias: the folder's
``__init__`` offers the old module's names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

# old module name under smoothjax -> its module now
MOVED = {
  "parallel": "smoothjax.devices.parallel",
  "numerics": "smoothjax.devices.numerics",
  "sizing": "smoothjax.devices.sizing",
  "processes": "smoothjax.devices.processes",
  "stats": "smoothjax.smoothing.stats",
  "votes": "smoothjax.smoothing.votes",
  "certificates": "smoothjax.smoothing.certificates",
  "sequential": "smoothjax.smoothing.sequential",
  "losses": "smoothjax.objectives.losses",
  "attacks": "smoothjax.objectives.attacks",
  "generation": "smoothjax.objectives.generation",
  "pipeline": "smoothjax.data.pipeline",
  "augment": "smoothjax.data.augment",
  "modes": "smoothjax.training.modes",
  "optim": "smoothjax.training.optim",
  "checkpointing": "smoothjax.workdir.checkpoints",
  "result_reader": "smoothjax.results.reader",
  "outputs": "smoothjax.results.paths",
  "shares": "smoothjax.results.shares",
  "pictures": "smoothjax.analysis.pictures",
}


def _warn(old: str, new: str, stacklevel: int) -> None:
  warnings.warn(
    f"smoothjax.{old} moved to {new}; the old name goes away in the next release",
    DeprecationWarning,
    stacklevel=stacklevel,
  )


def module(old: str):
  """The module that ``smoothjax.<old>`` names now, with the deprecation warning."""
  new = MOVED[old]
  _warn(old, new, stacklevel=4)
  return importlib.import_module(new)


class _Loader(importlib.abc.Loader):
  """Gives the module at its new path for the old one (``sys.modules`` keeps both names)."""

  def __init__(self, new: str):
    self.new = new

  def create_module(self, spec):
    found = importlib.import_module(self.new)
    self._spec = found.__spec__
    return found

  def exec_module(self, found):
    found.__spec__ = self._spec  # the import system set the alias's spec: put the module's back


class _Finder(importlib.abc.MetaPathFinder):
  def find_spec(self, fullname, path, target=None):
    package, _, old = fullname.partition(".")
    if package != "smoothjax" or old not in MOVED:
      return None
    _warn(old, MOVED[old], stacklevel=6)
    return importlib.machinery.ModuleSpec(fullname, _Loader(MOVED[old]))


def install() -> None:
  if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
    sys.meta_path.append(_Finder())
