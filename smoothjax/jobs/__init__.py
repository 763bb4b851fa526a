"""The resumable jobs, callable from Python: each an ``Options`` value and a ``run``.

* :mod:`smoothjax.jobs.certify`: ``certify.run(certify.Options(workdir=..., outfile=...))``
  certifies (or predicts with, or sequentially certifies) a workdir's split into a
  resumable TSV and returns it as read back.
* :mod:`smoothjax.jobs.attack`: ``attack.run(attack.Options(...))`` attacks the
  base or the smoothed classifier, one TSV row per input; returns the summary.
* :mod:`smoothjax.jobs.generate`: ``generate.run(generate.Options(...))``
  generates images of chosen classes into a resumable folder; returns the summary.
* :mod:`smoothjax.jobs.compare`: ``compare.run(compare.Options(workdirs=..., outdir=...))``
  attacks and certifies several runs (the jobs above) and tabulates them side by side.
* :mod:`smoothjax.jobs.convert`: ``convert.run(convert.Options(torch=..., dataset=...,
  noise_sd=..., workdir=...))`` turns a published PyTorch checkpoint into a workdir that
  the jobs above take.

Each has the options of its program (``certify.py``, ``attack.py``, ``generate.py``:
the same names and defaults) and writes what the program writes for the same
settings: the programs in :mod:`smoothjax.cli` only turn flags into options. Each
resumes, holds its output's lock, refuses to mix settings, models or inputs, and
under ``jax.distributed`` runs its share on each process (:mod:`smoothjax.results.shares`).
"""

from smoothjax.jobs import attack, certify, compare, convert, generate

__all__ = ["attack", "certify", "compare", "convert", "generate"]
