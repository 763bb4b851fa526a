"""The field's published PyTorch models: reading their files safely, mapping their architectures.

* :mod:`~smoothjax.published.pickles`: ``torch.save`` files (zip and legacy formats) read
  without PyTorch and without running their code (:func:`read`).
* :mod:`~smoothjax.published.architectures`: the authors' architectures (Cohen et al.,
  SmoothAdv, consistency, MadryLab) mapped onto smoothjax's models, every key accounted
  for (:func:`convert`).

``convert.py`` (:mod:`smoothjax.jobs.convert`) writes the workdir of a converted model.
"""

from smoothjax.published import architectures, pickles
from smoothjax.published.architectures import ARCH_NAMES, DATASETS, Converted, convert
from smoothjax.published.pickles import Placeholder, TorchFile, read

__all__ = [
  "ARCH_NAMES",
  "architectures",
  "convert",
  "Converted",
  "DATASETS",
  "pickles",
  "Placeholder",
  "read",
  "TorchFile",
]
