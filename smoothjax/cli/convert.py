"""convert.py: the flags of :mod:`smoothjax.jobs.convert`, whose docstring describes the program.

A published PyTorch checkpoint (Cohen et al., SmoothAdv, consistency, MadryLab) as a
workdir that certify.py, attack.py, generate.py, compare.py and train.py take::

  python convert.py --torch models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar \
      --arch cifar_resnet110 --dataset cifar10 --noise_sd 0.25 --workdir workdirs/cohen_025
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from smoothjax.cli.common import run_app
from smoothjax.jobs.convert import Options
from smoothjax.jobs.convert import run as run_convert
from smoothjax.published import architectures


def _define_flags() -> None:
  """Defines the flags, once; at run time only, so importing this module defines none."""
  if "torch" in flags.FLAGS:
    return
  d = Options.__dataclass_fields__
  flags.DEFINE_string("torch", None, "The PyTorch checkpoint to convert (.pth.tar, .pt).")
  flags.DEFINE_string(
    "arch", None,
    f"The authors' architecture: {', '.join(architectures.ARCH_NAMES)}; default the file's "
    "'arch' entry.",
  )
  flags.DEFINE_string(
    "dataset", None, f"The dataset it classifies: {', '.join(architectures.DATASETS)}."
  )
  flags.DEFINE_float(
    "noise_sd", None, "The noise level it was trained with (certify.py's default --sigma)."
  )
  flags.DEFINE_string("workdir", None, "The workdir to write; must not exist or be empty.")
  flags.DEFINE_string(
    "normalization", None,
    "The input layer it was trained behind: cohen (NormalizeLayer, mean and std), center "
    "(SmoothAdv's InputCenterLayer, mean only) or none; default cohen (none for lenet). "
    "MadryLab's files carry theirs.",
  )
  flags.DEFINE_string("noise", d["noise"].default, "The training noise family (config.noise).")
  flags.DEFINE_string("data_dir", d["data_dir"].default, "Where the dataset is read from later.")


def options_from_flags() -> Options:
  """The :class:`Options` of the parsed command line."""
  f = flags.FLAGS
  return Options(**{field.name: f[field.name].value for field in dataclasses.fields(Options)})


def main(argv):
  if argv[1:]:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  run_convert(options_from_flags())


def run():
  _define_flags()
  run_app(main)


if __name__ == "__main__":
  sys.exit(run())
