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
