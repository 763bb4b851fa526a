"""Tests for exclusive lock files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

from smoothjax import locks
from smoothjax.errors import InputError


def dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_holds_json_and_is_released(tmp_path):
  path = tmp_path / "out.tsv.lock"
  with locks.exclusive(path, "output out.tsv"):
    holder = json.loads(path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["started"]
  assert not path.exists()
  with pytest.raises(RuntimeError), locks.exclusive(path, "x"):
    raise RuntimeError("boom")
  assert not path.exists()  # Released on exceptions too.


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
  path = tmp_path / "train.lock"
  with locks.exclusive(path, "workdir w"):
    before = path.read_bytes()
    with pytest.raises(InputError) as e, locks.exclusive(path, "workdir w"):
      pass
    message = str(e.value)
    assert message.startswith(f"workdir w is in use by process {os.getpid()} on ")
    assert f"delete {path} if that process is gone" in message and "\n" not in message
    assert path.read_bytes() == before  # The refused attempt leaves the holder's lock alone.
  assert not path.exists()


def test_lock_held_by_another_live_process_is_refused(tmp_path):
  path = tmp_path / "a.lock"
  code = textwrap.dedent(
    f"""
    import sys, time
    from smoothjax import locks
    with locks.exclusive({str(path)!r}, "output a"):
      print("locked", flush=True)
      sys.stdin.readline()
    """
  )
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.Popen(
    [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
  )
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(InputError, match=f"in use by process {proc.pid} "):
      locks.acquire(path, "output a")
  finally:
    proc.communicate("\n", timeout=60)
  assert proc.returncode == 0 and not path.exists()
  with locks.exclusive(path, "output a"):
    pass


def test_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, capsys):
  path = tmp_path / "s.lock"
  pid = dead_pid()
  stale = {"pid": pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
  path.write_text(json.dumps(stale))
  with locks.exclusive(path, "output s"):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  err = capsys.readouterr().err
  assert f"taking over the lock {path} of process {pid}" in err
  assert not path.exists() and not os.path.exists(f"{path}.takeover")


@pytest.mark.parametrize(
  "content",
  [
    # Another host's pid cannot be checked from here: never taken over.
    lambda: json.dumps({"pid": dead_pid(), "host": "elsewhere.example", "started": "t"}),
    lambda: "not json",
  ],
)
def test_locks_that_cannot_be_judged_stale_are_refused(tmp_path, content):
  path = tmp_path / "o.lock"
  path.write_text(content())
  before = path.read_bytes()
  with pytest.raises(InputError, match="if that process is gone"):
    locks.acquire(path, "output o")
  assert path.read_bytes() == before


def test_release_never_deletes_another_holders_lock(tmp_path):
  path = tmp_path / "r.lock"
  record = locks.acquire(path, "r")
  other = dict(record, pid=record["pid"] + 1)
  path.write_text(json.dumps(other))  # As if our lock had been deleted and taken by another.
  locks.release(path, record)
  assert json.loads(path.read_text()) == other


def test_missing_folder_is_one_line_input_error(tmp_path):
  with pytest.raises(InputError, match="cannot create the lock file"):
    locks.acquire(tmp_path / "no" / "such" / "x.lock", "x")
