"""train.py as a user runs it: one-line errors for bad flags, config files and fields."""

from __future__ import annotations

import pytest
from conftest import assert_one_line_error, run


@pytest.fixture(scope="module")
def config_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("configs")
  (root / "no_get_config.py").write_text("x = 1\n")
  (root / "broken.py").write_text("def get_config(:\n")
  (root / "few_fields.py").write_text(
    "import ml_collections\n\n"
    "def get_config():\n"
    "  c = ml_collections.ConfigDict()\n"
    "  c.model = 'cnn'\n"
    "  return c\n"
  )
  return root


@pytest.mark.parametrize(
  "args,message",
  [
    (("--config=default", "--config.foo=1"), "no field 'foo'"),
    (("--config=default", "--config.attack.foo=1"), "no field"),
    (("--config=default", "--config.num_epochs=abc"), "--config.num_epochs"),
    (("--config=default", "--bogus=1"), "bogus"),
    (("--config=nope",), "does not exist"),
    (("--config={root}/no_get_config.py",), "no get_config()"),
    (("--config={root}/broken.py",), "does not load"),
    (("--config={root}/few_fields.py",), "the config lacks"),
    (("--config=default", "--config.learning_rate=inf"), "learning_rate"),
    (("--config=default", "--config.noise_sd=1e39"), "sigma"),
    (("--config=default", "--config.batch_size=5000"), "larger than the 4000"),
    (("--config=default", "--config.attack.eps=-1", "--config.mode=pgd"), "attack.eps"),
    (("--config=default", "--config.mode=macer", "--config.macer.m=0"), "macer.m"),
    (("--config=default", "--config.schedule=multistep"), "lr_milestones"),
  ],
)
def test_bad_train_input_is_one_line_and_writes_nothing(tmp_path, config_files, args, message):
  workdir = tmp_path / "w"
  args = [a.format(root=config_files) for a in args]
  proc = run("train.py", *args, f"--workdir={workdir}", check=False)
  assert_one_line_error(proc, message)
  assert not workdir.exists()


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  proc = run("train.py", "--config=default", f"--workdir={path}", check=False)
  assert_one_line_error(proc, "is a file")


@pytest.mark.parametrize(
  "suffix,called",
  [("", "get_config()"), (":wide", "get_config('wide')")],
)
def test_get_config_raising_is_one_line(tmp_path, capsys, suffix, called):
  from smoothjax.cli import train

  path = tmp_path / "raises.py"
  path.write_text("def get_config(arg=None):\n  raise RuntimeError('boom')\n")
  with pytest.raises(SystemExit) as e:
    train.parse_flags(["train.py", f"--config={path}{suffix}", f"--workdir={tmp_path / 'w'}"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err == f"error: config file {path}: {called} raised RuntimeError: boom; fix the file\n"
  assert not (tmp_path / "w").exists()
