"""train.py as a user runs it: one-line errors for bad flags, config files and fields."""

from __future__ import annotations

import pytest
from conftest import assert_one_line_error, assert_one_line_outcome, run, run_program_cases


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


BAD_INPUTS = [
  (("--config=default", "--config.foo=1"), "no field 'foo'"),
  (("--config=default", "--config.attack.foo=1"), "no field"),
  (("--config=default", "--config.num_epochs=abc"), "--config.num_epochs"),
  (("--config=default", "--bogus=1"), "bogus"),
  (("--config=nope",), "no shipped config has that name"),
  (("--config=",), "--config is empty"),
  (("--config={root}/nope.py",), "does not exist"),
  (("--config={root}/no_get_config.py",), "no get_config()"),
  (("--config={root}/broken.py",), "does not load"),
  (("--config={root}/few_fields.py",), "the config lacks"),
  (("--config=default", "--config.learning_rate=inf"), "learning_rate"),
  (("--config=default", "--config.noise_sd=1e39"), "sigma"),
  (("--config=default", "--config.batch_size=5000"), "larger than the 4000"),
  (("--config=default", "--config.attack.eps=-1", "--config.mode=pgd"), "attack.eps"),
  (("--config=default", "--config.mode=macer", "--config.macer.m=0"), "macer.m"),
  (("--config=default", "--config.schedule=multistep"), "lr_milestones"),
  (("--config=default", "--config.dataset=not_a_dataset"), "not_a_dataset"),
  (("--config=default", "--config.model=resnet9000"), "unknown model"),
  (("--config=default", "--config.noise_sd=-0.5"), "noise_sd"),
  (("--config=default", "--config.batch_size=0"), "batch_size"),
  (("--config=default", "--config.mode=magic"), "unknown training mode"),
  (("--config=default", "--workdir={root}/a_file"), "is a file"),
  # (Every bad noise setting is refused by modes.noise_from_config: see test_modes.)
  (("--config=default", "--config.noise=cauchy"), "config.noise: unknown noise 'cauchy'"),
  (("--config=default", "--config.mode=macer", "--config.noise=uniform"), "not uniform"),
]

@pytest.fixture(scope="module")
def bad_input_outcomes(config_files):
  (config_files / "a_file").write_text("x")
  cases = []
  for i, (args, _) in enumerate(BAD_INPUTS):
    argv = [a.format(root=config_files) for a in args]
    if not any(a.startswith("--workdir=") for a in argv):
      argv.append(f"--workdir={config_files}/w{i}")
    cases.append(argv)
  return run_program_cases("train", cases, config_files)


@pytest.mark.parametrize("index", range(len(BAD_INPUTS)), ids=[m for _, m in BAD_INPUTS])
def test_bad_train_input_is_one_line_and_writes_nothing(config_files, bad_input_outcomes, index):
  assert_one_line_outcome(bad_input_outcomes[index], BAD_INPUTS[index][1])
  assert not (config_files / f"w{index}").exists()


def test_train_py_itself_gives_one_line_and_exit_2(tmp_path):
  """The program, not only its main: a bad flag ends the process with one line."""
  workdir = tmp_path / "w"
  proc = run("train.py", "--config=default", "--config.foo=1", f"--workdir={workdir}", check=False)
  assert_one_line_error(proc, "no field 'foo'")
  assert not workdir.exists()


def test_a_shipped_config_by_name_is_its_file():
  from smoothjax.cli import train

  assert train.resolve_config("default") == str(train.SHIPPED / "default.py")
  wide = train.resolve_config("cifar10_resnet110:wide")
  assert wide == f"{train.SHIPPED}/cifar10_resnet110.py:wide"
  assert train.resolve_config("configs/mine.py") == "configs/mine.py"  # a path stays a path
  assert "default" in train.shipped_configs() and "__init__" not in train.shipped_configs()


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
