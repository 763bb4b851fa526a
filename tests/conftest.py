"""Shared test fixtures.

Tests run with JAX's key-reuse checker on, so a PRNG key used twice is an error.
Multi-device tests run in a child process with 8 fake CPU devices
(see :func:`run_with_devices`), because XLA_FLAGS must be set before JAX starts.
"""

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

# Deterministic GPU operations for the whole session, before JAX starts (XLA reads its
# flags once): the tests that compare a resumed training run with an uninterrupted one
# bit for bit run in this process, and on GPUs need them (their configs say
# deterministic=True, which smoothjax.devices.numerics can no longer apply once JAX started).
# On CPUs the flag changes nothing.
_DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
# Most of the suite's time is XLA compiling tiny models' programs, and its CPU backend
# compiles about twice as fast without LLVM's optimisations (the HLO passes, fusion
# included, still run; the results are the same programs' results, computed more slowly).
# The session and every program it starts use the same flags, so files written by a
# program and values computed here are compared under one setting.
# SMOOTHJAX_TEST_OPTIMIZED=1 runs the suite with XLA's default optimisation instead.
_OPTIMIZED = os.environ.get("SMOOTHJAX_TEST_OPTIMIZED") == "1"
_FAST_COMPILE = () if _OPTIMIZED else ("--xla_backend_optimization_level=0",)
TEST_XLA_FLAGS = (_DETERMINISTIC, *_FAST_COMPILE)


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a process the tests start: the session's flags, on ``devices`` CPU devices."""
  count = (f"--xla_force_host_platform_device_count={devices}",) if devices > 1 else ()
  return " ".join((*TEST_XLA_FLAGS, *count))


_present = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(
  [*_present, *(flag for flag in TEST_XLA_FLAGS if flag not in _present)]
)

import jax  # noqa: E402 -- after XLA_FLAGS
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402

jax.config.update("jax_debug_key_reuse", True)
# Full float32 products: on GPUs the default (TF32) moves logits by about 1e-3 with the
# batch size, and the tests hold CERTIFY to the same votes whatever the batch and the
# devices, as the docs promise at this precision. On CPUs it changes nothing.
jax.config.update("jax_default_matmul_precision", "highest")

# Files that run the programs or the training loop end to end (subprocesses, trained
# workdirs): marked ``programs``. CI's second run, under the newest release of every
# dependency, leaves them out (``-m "not programs"``) to stay within its time budget;
# the first run, the README's command, runs everything.
PROGRAM_TEST_FILES = frozenset(
  {
    "test_attack_cli.py",
    "test_cli.py",
    "test_compare.py",
    "test_denoising.py",
    "test_fixedpoint.py",
    "test_generate_cli.py",
    "test_modes.py",
    "test_multihost_training.py",
    "test_multiprocess.py",
    "test_multiprocess_faults.py",
    "test_noise_cli.py",
    "test_stopping.py",
    "test_train_cli.py",
    "test_training.py",
  }
)


# The longest tests (about a minute or more each on 2 CPU cores), longest first. They run
# first: xdist hands the first tests out to the workers in turn, so the long ones spread
# over the workers and the many short ones fill in at the end, and no worker is left
# running a long test alone while the other idles (longest processing time first).
LONG_TESTS = (
  "test_compare.py::test_compare_end_to_end",
  "test_attack_cli.py::test_attack_end_to_end",
  "test_noise_cli.py::test_noise_families_end_to_end",
  "test_generate_cli.py::test_generate_end_to_end",
  "test_multiprocess.py::test_certify_and_attack_on_several_processes",
  "test_multiprocess_faults.py::test_a_killed_process_ends_the_other",
  "test_modes.py::test_every_mode_steps_the_same_on_8_devices_as_on_1",
  "test_denoising.py::test_killed_and_resumed_run_ends_with_the_same_parameters",
  "test_denoising.py::test_the_new_modes_step_the_same_on_8_devices_as_on_1",
  "test_smoothing_multidevice.py::test_certify_batch_on_eight_devices_matches_single_device",
  "test_fixedpoint.py::test_fine_tuning_end_to_end",
  "test_cli.py::test_certify_adaptive_resumes_matches_on_8_devices",
  "test_multihost_training.py::",
  "test_sequential.py::test_end_to_end_coverage_on_an_analytic_classifier",
)


# One persistent JAX compilation cache for the programs the tests start (train.py,
# certify.py, ...: dozens of runs compiling the same tiny models' steps), made by the
# session's main process and inherited by its xdist workers and their children.
_CACHE_ENV = "SMOOTHJAX_TEST_COMPILATION_CACHE"


def pytest_configure(config):
  if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="smoothjax-test-jax-cache-")
    config._smoothjax_cache = os.environ[_CACHE_ENV]


def pytest_unconfigure(config):
  cache = getattr(config, "_smoothjax_cache", None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)


def _child_env(**extra) -> dict:
  """The environment of a program a test starts: CPU, the repository, the shared cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT, **extra)
  if _CACHE_ENV in env and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = env[_CACHE_ENV]
  return env


def _long_rank(item) -> int:
  where = f"{item.path.name}::{item.name}"
  return next((i for i, p in enumerate(LONG_TESTS) if where.startswith(p)), len(LONG_TESTS))


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.path.name in PROGRAM_TEST_FILES:
      item.add_marker(pytest.mark.programs)
  items.sort(key=_long_rank)  # stable: the other tests keep their order


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 600) -> str:
  """Runs Python `code` in a fresh process with `num_devices` fake CPU devices.

  Returns the child's stdout; fails the calling test with the child's output if it
  exits non-zero.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(num_devices)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    env=env,
    timeout=timeout,
    cwd=REPO_ROOT,
  )
  if proc.returncode != 0:
    pytest.fail(f"child process failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc.stdout


def run_python(args, *, what: str, check: bool = True, devices: int = 1):
  """Runs ``python ARGS`` from the repository root on `devices` CPU devices.

  Returns the completed process; fails the calling test with its output if it exits
  non-zero and ``check`` is set.
  """
  env = _child_env(XLA_FLAGS=xla_flags(devices))
  proc = subprocess.run(
    [sys.executable, *map(str, args)],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO_ROOT,
    timeout=600,
  )
  if check and proc.returncode != 0:
    pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_processes(
  args, num_processes: int, *, devices: int = 1, port: int | None = None, extra=None
):
  """Starts ``python ARGS`` as the ``num_processes`` processes of one multi-process JAX job.

  They find each other on 127.0.0.1 through the environment variables a user sets
  (``SMOOTHJAX_DISTRIBUTED=1``, ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``), each with ``devices`` CPU devices; ``extra[i]``, if given, are
  arguments of process ``i`` alone. Returns the ``Popen`` objects (stdout and stderr
  piped, text); :func:`wait_processes` collects them.
  """
  port = free_port() if port is None else port
  procs = []
  for index in range(num_processes):
    env = _child_env(XLA_FLAGS=xla_flags(devices))
    env.update(
      SMOOTHJAX_DISTRIBUTED="1",
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES=str(num_processes),
      JAX_PROCESS_ID=str(index),
    )
    procs.append(popen_python([*args, *(extra[index] if extra else ())], env))
  return procs


def popen_python(args, env):
  """Starts ``python ARGS`` from the repository root in ``env``, stdout and stderr piped."""
  return subprocess.Popen(
    [sys.executable, *map(str, args)],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd=REPO_ROOT,
  )


def wait_processes(procs, *, what: str, check: bool = True, timeout: float = 600):
  """Waits for the processes of :func:`start_processes`; returns ``[(returncode, out, err)]``.

  Fails the calling test with every process's output if one exits non-zero and
  ``check`` is set, or if they do not finish within ``timeout`` seconds (then they are
  killed).
  """
  outcomes = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=timeout)
      outcomes.append((proc.returncode, out, err))
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    pytest.fail(f"{what}: the processes did not finish within {timeout} s")
  if check and any(code != 0 for code, _, _ in outcomes):
    report = "\n".join(
      f"--- process {i} exited {code}:\n{out}\n{err}" for i, (code, out, err) in enumerate(outcomes)
    )
    pytest.fail(f"{what} failed:\n{report}")
  return outcomes


def run_processes(args, num_processes: int, *, what: str, check: bool = True, devices: int = 1):
  """Runs ``python ARGS`` as one multi-process JAX job on 127.0.0.1 (:func:`start_processes`)."""
  procs = start_processes(args, num_processes, devices=devices)
  return wait_processes(procs, what=what, check=check)


# The end of a child-process driver that runs a program's main on each case of the JSON
# file sys.argv[1] in one process, recording each case's exit status and stderr into the
# JSON file sys.argv[2]. The driver's start imports what it needs and defines ``call(case)``.
IN_PROCESS_CASES = """
outcomes = []
for case in json.load(open(sys.argv[1])):
  err = io.StringIO()
  code = 0
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      call(case)
    except SystemExit as e:
      code = e.code
    except Exception as e:
      code = f"{type(e).__name__}: {e}"
  outcomes.append({"code": code, "stderr": err.getvalue()})
json.dump(outcomes, open(sys.argv[2], "w"))
"""


# Runs a program's entry point (``smoothjax.cli.NAME.run``, what ``NAME.py`` and the
# ``smoothjax-NAME`` script call) on each argument list of the JSON file sys.argv[1], all in
# one child process, flags reset between cases: a table of bad inputs costs one start-up.
PROGRAM_CASES = (
  """
import contextlib, importlib, io, json, sys
from absl import flags
name = sys.argv[3]
program = importlib.import_module("smoothjax.cli." + name)

def call(argv):
  saved, sys.argv = sys.argv, [name + ".py", *argv]
  try:
    flags.FLAGS.unparse_flags()
    for flag in [f for f in flags.FLAGS if f.startswith("config.")]:
      delattr(flags.FLAGS, flag)  # each parse of train.py's --config defines its overrides
    program.run()
  finally:
    sys.argv = saved
"""
  + IN_PROCESS_CASES
)


def run_program_cases(name: str, cases, root) -> list[dict]:
  """``{"code", "stderr"}`` of program ``name`` (``train``, ``attack``, ...) on each case.

  ``cases`` are argument lists; they run in one child process from the repository root,
  with the files of the run in folder ``root``.
  """
  cases_file, outcomes_file = os.path.join(root, "cases.json"), os.path.join(root, "outcomes.json")
  with open(cases_file, "w") as f:
    json.dump([list(map(str, case)) for case in cases], f)
  run_python(["-c", PROGRAM_CASES, cases_file, outcomes_file, name], what=f"{name} cases")
  with open(outcomes_file) as f:
    return json.load(f)


def assert_one_line_outcome(outcome, pattern: str) -> None:
  """A case of :func:`run_program_cases` exited 2 with one ``error:`` line naming ``pattern``."""
  assert outcome["code"] == 2, outcome
  assert "Traceback" not in outcome["stderr"]
  lines = [ln for ln in outcome["stderr"].splitlines() if ln.startswith("error: ")]
  assert len(lines) == 1 and pattern in lines[0], outcome["stderr"]


def run(script: str, *args, check: bool = True, devices: int = 1):
  """Runs one of the programs (``train.py``, ``certify.py``, ...) as a user would."""
  return run_python(
    [os.path.join(REPO_ROOT, script), *args], what=f"{script} {args}", check=check, devices=devices
  )


def assert_one_line_error(proc, pattern: str) -> None:
  """The program exited 2 with exactly one ``error:`` line containing ``pattern``."""
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr
  error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
  assert len(error_lines) == 1, proc.stderr
  assert pattern in error_lines[0], error_lines[0]


def train_tiny(workdir, *overrides: str) -> None:
  """Trains the tiny CNN for one epoch on the embedded digits with train.py."""
  run(
    "train.py",
    "--config=default",
    f"--workdir={workdir}",
    "--config.model=cnn_tiny",
    "--config.num_epochs=1",
    "--config.progress=False",
    *overrides,
  )


# A tiny CNN trained without noise (tiny_run(tmp_path_factory, *STANDARD)): the standard
# run that compare.py compares and the independent judge of generate.py.
STANDARD = ("--config.mode=standard", "--config.noise_sd=0.0")


def tiny_run(tmp_path_factory, *overrides: str):
  """A tiny CNN trained by :func:`train_tiny` with ``overrides``, once per test session.

  The xdist workers of one session share it (the first to ask trains it, under a file
  lock; the others wait and reuse it), so files that need the same trained run do not
  each pay for it. Tests read it: one that changes a run copies it first.
  """
  base = tmp_path_factory.getbasetemp()
  # The session's folder: the workers' basetemps lie in it under xdist.
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  key = hashlib.sha256("\0".join(overrides).encode()).hexdigest()[:12]
  workdir = root / f"tiny_run_{key}"
  with open(root / f"tiny_run_{key}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / f"tiny_run_{key}.done").exists():
      if workdir.exists():
        import shutil

        shutil.rmtree(workdir)  # a half-trained run of a worker that failed
      train_tiny(workdir, *overrides)
      (root / f"tiny_run_{key}.done").touch()
  return workdir


def cp_lower(k, n, alpha):
  """Reference one-sided Clopper-Pearson lower bound, straight from SciPy (0 for k = 0)."""
  k = np.asarray(k)
  safe = np.maximum(k, 1)
  return np.where(k == 0, 0.0, scipy.stats.beta.ppf(alpha, safe, n - safe + 1))


def certify_miss_probability(p, n0, n, alpha):
  """Exact P[CERTIFY's p_lower exceeds the probability of the class it selects].

  Two classes, class 1 of probability ``p``: the ``n0`` selection votes pick class 1
  on a strict majority (ties go to class 0), then ``n`` independent votes bound it.
  """
  support = np.arange(n + 1)
  select_1 = scipy.stats.binom.sf(n0 // 2, n0, p)
  miss_1 = scipy.stats.binom.pmf(support, n, p)[cp_lower(support, n, alpha) > p].sum()
  miss_0 = scipy.stats.binom.pmf(support, n, 1 - p)[cp_lower(support, n, alpha) > 1 - p].sum()
  return select_1 * miss_1 + (1 - select_1) * miss_0


def assert_certify_coverage(certs, *, p, margin, n0, n, alpha):
  """CERTIFY's guarantee over many certificates of one two-class input.

  Class 1 has probability ``p`` and the true radius is ``margin``. The rate at which
  ``p_lower`` exceeds the selected class's probability must match its exact value
  (which must be close to alpha, so a 2 alpha bound would show), every wrong
  certificate (wrong class, or radius beyond ``margin``) must be such a miss, and
  wrong ones must be at most alpha of them plus three standard errors.

  Returns:
    ``(prediction, radius, p_lower)`` arrays, for the caller's own checks.
  """
  from smoothjax.smoothing import ABSTAIN

  trials = len(certs)
  top = np.array([c.top_class for c in certs])
  p_lower = np.array([c.p_lower for c in certs])
  prediction = np.array([c.prediction for c in certs])
  radius = np.array([c.radius for c in certs])
  assert all(int(c.counts.sum()) == n and int(c.counts_selection.sum()) == n0 for c in certs)
  exact = certify_miss_probability(p, n0, n, alpha)
  se = np.sqrt(alpha * (1 - alpha) / trials)
  assert 0.5 * alpha < exact <= alpha
  assert certify_miss_probability(p, n0, n, 2 * alpha) > alpha + 3 * se
  miss = p_lower > np.where(top == 1, p, 1 - p)
  assert abs(miss.mean() - exact) <= 4 * np.sqrt(exact * (1 - exact) / trials)
  wrong = (prediction != ABSTAIN) & ((prediction != 1) | (radius > margin))
  assert not np.any(wrong & ~miss)
  assert wrong.mean() <= alpha + 3 * se
  np.testing.assert_array_equal(radius[prediction == ABSTAIN], 0.0)
  return prediction, radius, p_lower
