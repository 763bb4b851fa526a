"""What the programs share: one-line errors instead of tracebacks.

Every program ends in one of:

* success, exit status 0;
* ``error: <what is wrong and how to fix it>``, exit status 2, for anything the
  user can cause: an :class:`~smoothjax.errors.InputError`, a bad flag or
  argument, a path that cannot be read or written, a full disk;
* ``error: internal error: <type>: <message> (set SMOOTHJAX_DEBUG=1 for the
  traceback)``, exit status 1, for a bug;
* ``error: stopped by SIGTERM; rerun the same command to resume``, exit status 143,
  at the next safe point after SIGTERM (:mod:`smoothjax.stopping`); 130 for Ctrl-C;
* in a multi-process job, a process that ends with an error leaves a notice that
  stops the other processes too, each with one line naming the process; a process
  that dies outright ends the others with exit status 3
  (:mod:`smoothjax.devices.processes`).

With ``SMOOTHJAX_DEBUG=1`` in the environment the traceback is printed too.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable

from absl import app, flags, logging

from smoothjax import stopping
from smoothjax.devices import numerics, parallel, processes
from smoothjax.errors import InputError
from smoothjax.models import transforms
from smoothjax.results import shares

USER_ERROR = 2
INTERNAL_ERROR = 1
DEBUG_ENV = "SMOOTHJAX_DEBUG"

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Errors of paths the user named (as opposed to, say, a failed system call of a library).
_PATH_ERRORS = (
  errno.ENOENT,
  errno.EACCES,
  errno.EPERM,
  errno.EROFS,
  errno.EISDIR,
  errno.ENOTDIR,
  errno.EEXIST,
  errno.ENAMETOOLONG,
  errno.ELOOP,
  errno.ENXIO,
  errno.ETXTBSY,
)


def _debug() -> bool:
  return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: str, limit: int = 500) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str, status: int, *, tell_others: bool = True) -> None:
  if _debug():
    traceback.print_exc()
  message = _one_line(message, 2000)
  if tell_others:  # In a multi-process job: the others stop too, instead of waiting.
    processes.announce(f"stopped with an error ({_one_line(message, 300)})", status)
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def describe_os_error(e: OSError) -> str | None:
  """A one-line message for an OSError a user can cause and fix, or None for other ones."""
  where = f" ({e.filename})" if e.filename else ""
  if e.errno in _DISK_FULL:
    return (
      f"the disk is full{where}; free some space and rerun the same command: finished work "
      "is kept and the run resumes"
    )
  if e.errno in _PATH_ERRORS or e.filename is not None:
    return f"{e.strerror or e}{where}; check the path and its permissions"
  return None


def run_main(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl ``main`` so that every error ends in one ``error:`` line (see the module)."""

  def wrapped(argv):
    # orbax and absl log every checkpoint operation at INFO; keep the console for progress.
    logging.set_verbosity(logging.WARNING)
    if not _debug():
      # orbax logs a failed background write (a full disk) with tracebacks from every
      # writer thread; the failure reaches us as an exception and becomes one line.
      logging.get_absl_logger().addFilter(_not_from_orbax)
    stopping.install()  # SIGTERM stops the program at a safe point (exit 143).
    try:
      return main(argv)
    except stopping.Stopped as e:
      # A stop this process was asked for has told the others already; one they told it
      # of needs no telling.
      _fail(str(e), e.status, tell_others=False)
    except (InputError, app.UsageError) as e:
      _fail(str(e), USER_ERROR)
    except KeyboardInterrupt:
      _fail("interrupted; rerun the same command to resume", 130)
    except OSError as e:
      message = describe_os_error(e)
      if message is not None:
        _fail(message, USER_ERROR)
      _fail(_internal(e), INTERNAL_ERROR)
    except Exception as e:  # noqa: BLE001 -- the last resort: one line, not a traceback.
      _fail(_internal(e), INTERNAL_ERROR)

  return wrapped


def _not_from_orbax(record) -> bool:
  return "/orbax/" not in record.pathname.replace(os.sep, "/")


def _internal(e: BaseException) -> str:
  return f"internal error: {type(e).__name__}: {_one_line(e)} (set {DEBUG_ENV}=1 for the traceback)"


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing whose errors (unknown flag, bad value) are one ``error:`` line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_one_line(e)} (see --helpshort for the flags)", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR)


def run_app(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run`` of ``main`` with one-line errors for bad flags and everything in main.

  The flags of ``main``'s module become key flags of the program, so that
  ``--helpshort`` lists them (absl lists only those of the script it runs, here a
  thin wrapper).
  """
  show_flags_of(main.__module__)
  show_flags_of(__name__)  # define_evaluation_flags, where the program calls it.
  app.run(run_main(main), flags_parser=parse_flags)


def show_flags_of(module_name: str) -> None:
  """Makes the flags that ``module_name`` defines key flags of the running script."""
  for flag in flags.FLAGS.get_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


class EvaluationFlags:
  """The flags of how a program evaluates a trained model: dtype, folding, numerics, and
  the denoiser in front of it.

  Defined by :func:`define_evaluation_flags` in the programs that evaluate a model
  (certify.py, attack.py, generate.py), before their own flags.
  """

  def __init__(self):
    self.dtype = flags.DEFINE_enum(
      "dtype",
      "float32",
      list(transforms.COMPUTE_DTYPES),
      "Computation dtype of the evaluated model (parameters stay float32). The results hold "
      "for the model as evaluated; bfloat16 is about twice as fast on GPUs and TPUs.",
    )
    self.fold_batchnorm = flags.DEFINE_boolean(
      "fold_batchnorm",
      True,
      "Fold each BatchNorm into its convolution: the same predictions up to float rounding, "
      "one pass over the activations fewer per layer.",
    )
    self.precision = flags.DEFINE_enum(
      "precision",
      "default",
      list(numerics.PRECISIONS),
      "Matmul precision: default (TF32 on GPUs: fast), highest (full float32: on GPUs, "
      "results that do not depend on the step size or the device count).",
    )
    self.deterministic = flags.DEFINE_boolean(
      "deterministic", False, "Deterministic GPU operations (slower; changes nothing on CPUs)."
    )
    # Denoised smoothing: the model evaluated is classifier(denoiser(x)).
    self.denoiser = flags.DEFINE_string(
      "denoiser",
      None,
      "Workdir of a denoiser (train.py --config.mode=denoiser) or diffusion model "
      "(--config.mode=diffusion) put in front of the classifier: denoised smoothing of "
      "classifier(denoiser(x)). The default noise is then the denoiser's training noise.",
    )
    self.denoiser_epoch = flags.DEFINE_integer(
      "denoiser_epoch", None, "Checkpoint epoch of --denoiser (default: latest)."
    )

  def configure(self) -> None:
    """Applies --precision and --deterministic; call before the first computation."""
    numerics.configure(precision=self.precision.value, deterministic=self.deterministic.value)


_EVALUATION_FLAGS: list[EvaluationFlags] = []


def start_jobs(evaluation: EvaluationFlags | None = None) -> None:
  """The start of a program that runs jobs: numerics first, then multi-process JAX.

  ``evaluation``'s --precision and --deterministic are applied before JAX starts (XLA
  reads its flags once); then ``jax.distributed`` starts where the environment asks.
  """
  if evaluation is not None:
    evaluation.configure()
  parallel.initialize_distributed(shutdown_timeout_seconds=shares.FINISH_TIMEOUT_SECONDS)


def define_evaluation_flags() -> EvaluationFlags:
  """Defines --dtype, --fold_batchnorm, --precision and --deterministic (see EvaluationFlags).

  Once per process: the programs' modules that call it can be imported together.
  """
  if not _EVALUATION_FLAGS:
    _EVALUATION_FLAGS.append(EvaluationFlags())
  return _EVALUATION_FLAGS[0]
