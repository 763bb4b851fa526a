"""Shared test fixtures.

Tests run with JAX's key-reuse checker on, so a PRNG key used twice is an error.
Multi-device tests run in a child process with 8 fake CPU devices
(see :func:`run_with_devices`), because XLA_FLAGS must be set before JAX starts.
"""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

jax.config.update("jax_debug_key_reuse", True)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 600) -> str:
  """Runs Python `code` in a fresh process with `num_devices` fake CPU devices.

  Returns the child's stdout; fails the calling test with the child's output if it
  exits non-zero.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
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
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT)
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
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
    "--config=configs/default.py",
    f"--workdir={workdir}",
    "--config.model=cnn_tiny",
    "--config.num_epochs=1",
    "--config.progress=False",
    *overrides,
  )
