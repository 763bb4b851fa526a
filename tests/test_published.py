"""The field's published PyTorch checkpoints: converted models compute what PyTorch computes.

The fixtures in tests/fixtures/torch/models were written by real PyTorch
(tools/torch_fixtures.py, which needs torch; these tests do not), laid out as their
authors' code saves them, with the logits PyTorch computed on fixed images beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict

import numpy as np
import pytest
from conftest import REPO_ROOT, assert_one_line_outcome, run, run_program_cases, run_with_devices
from flax import nnx

from smoothjax import models
from smoothjax.errors import InputError
from smoothjax.jobs import convert as convert_job
from smoothjax.models import transforms
from smoothjax.published import architectures, pickles
from smoothjax.workdir import checkpoints

FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures", "torch", "models")
COHEN_TSV = os.path.join(
  REPO_ROOT, "tests", "fixtures", "cohen", "cifar10_resnet110_noise_0.25_sigma_0.25.tsv"
)

# (file, arch, dataset, normalization, logits key in the .npz, format, smoothjax model)
CASES = {
  "cohen_resnet20_legacy": (
    "cohen_cifar_resnet20.pth.tar", "cifar_resnet20", "cifar10", None, "logits", "legacy",
    "resnet20",
  ),
  "cohen_resnet20_zip": (
    "cohen_cifar_resnet20_zip.pth.tar", "cifar_resnet20", "cifar10", None, "logits", "zip",
    "resnet20",
  ),
  "smoothadv_center": (
    "cohen_cifar_resnet20.pth.tar", "cifar_resnet20", "cifar10", "center", "logits_center",
    "legacy", "resnet20",
  ),
  "cohen_imagenet_resnet50": (
    "cohen_resnet50_tiny.pth.tar", "resnet50", "imagenet", None, "logits", "zip",
    "resnet50_tiny",
  ),
  "madry_cifar_resnet50": (
    "madry_cifar_resnet50_tiny.pt", "resnet50", "cifar10", None, "logits", "zip",
    "resnet50_cifar_tiny",
  ),
  "consistency_lenet": (
    "consistency_lenet.pth.tar", "lenet", "mnist", None, "logits", "zip", "lenet",
  ),
}
RTOL = 1e-5  # of the largest logit, in float32


def fixture(name: str) -> str:
  return os.path.join(FIXTURES, name)


def expected(path: str, key: str):
  stored = np.load(re.sub(r"(_zip)?\.(pth\.tar|pt)$", ".npz", path))
  return stored["images"], stored[key]


def close(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def state_of(file: str):
  return architectures.find_state_dict(pickles.read(fixture(file)).obj)[0]


def converted(case: str) -> architectures.Converted:
  file, arch, dataset, normalization, *_ = CASES[case]
  state = state_of(file)
  return architectures.convert(
    architectures.architecture(arch, dataset), state, normalization=normalization
  )


@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_gives_the_logits_pytorch_gave(case):
  file, _, _, _, key, fmt, model_name = CASES[case]
  assert pickles.read(fixture(file)).format == fmt
  c = converted(case)
  assert c.model_name == model_name
  images, want = expected(fixture(file), key)
  for fold in (False, True):
    model = transforms.for_inference(c.model, fold=fold, dtype="float32")
    assert close(model(images), want) < RTOL, (case, fold)
  # Wrong on purpose, to show the comparison can fail: the other normalisation.
  if case == "cohen_resnet20_legacy":
    assert close(converted("smoothadv_center").model(images), want) > 1e-2


def test_every_key_is_accounted_for():
  c = converted("madry_cifar_resnet50")
  # MadryLab's AttackerModel holds the model twice (module.model, module.attacker.model)
  # and its normaliser twice; the copies are recognised, not silently dropped.
  assert c.prefix == "module.model." and c.normalization == "file" and c.clip_inputs
  assert all(k.startswith("module.attacker.") for k in c.duplicates)
  assert c.duplicates["module.attacker.model.linear.weight"] == "module.model.linear.weight"
  assert c.duplicates["module.attacker.normalize.new_mean"] == "module.normalizer.new_mean"
  assert c.mean == pytest.approx(architectures.CIFAR_MEAN, abs=1e-7)
  assert all(k.endswith("num_batches_tracked") for k in c.unused)
  state = state_of(CASES["madry_cifar_resnet50"][0])
  assert set(c.mapped) | set(c.duplicates) | set(c.unused) == set(state)
  # Cohen's files: the prefix of Sequential(NormalizeLayer, DataParallel(resnet50)).
  assert converted("cohen_imagenet_resnet50").prefix == "1.module."
  # MadryLab's InputNormalize clamps: images beyond [0, 1] (as in the fixture) differ
  # from an unclamped model.
  images, want = expected(fixture("madry_cifar_resnet50_tiny.pt"), "logits")
  assert images.min() < 0 and images.max() > 1
  c.model.normalize.clip = False
  assert close(c.model(images), want) > 1e-3


def _torch_layout(arch, model):
  """A random state_dict in the authors' layout for ``model``, and the arrays it becomes."""
  rng = np.random.default_rng(0)
  state, want = OrderedDict(), {}
  shapes = {tuple(p): v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(model))}
  for path, (key, convert) in architectures.torch_names(arch, model).items():
    shape = shapes[path]
    ours = rng.standard_normal(shape).astype(np.float32)
    if len(shape) == 4:
      torch_array = ours.transpose(3, 2, 0, 1)
    elif len(shape) == 2:
      torch_array = ours.T
    else:
      torch_array = ours
    assert np.array_equal(convert(torch_array), ours)
    state["1." + key] = torch_array
    want[".".join(map(str, path))] = ours
  return state, want


@pytest.mark.parametrize("arch_name", ["cifar_resnet110", "cifar_resnet20"])
def test_full_size_cifar_resnets_map_every_array(arch_name):
  arch = architectures.architecture(arch_name, "cifar10")
  abstract = nnx.eval_shape(
    lambda: models.create(arch.models[0], num_classes=10, mean=(0.5,) * 3, std=(0.2,) * 3,
                          rngs=nnx.Rngs(0))
  )
  state, want = _torch_layout(arch, abstract)
  c = architectures.convert(arch, state)
  got = {".".join(map(str, p)): np.asarray(v.get_value())
         for p, v in nnx.to_flat_state(nnx.state(c.model))}
  assert all(np.array_equal(got[k], v) for k, v in want.items())
  # depth - 1 convolutions with their BatchNorms (5 arrays), two projections, the head.
  assert len(c.mapped) == len(state) == (int(arch_name[12:]) - 1) * 5 + 2 * 5 + 2


def test_a_missing_an_extra_or_a_misshapen_key_is_an_error():
  arch = architectures.architecture("cifar_resnet20", "cifar10")
  state = state_of("cohen_cifar_resnet20.pth.tar")
  missing = OrderedDict(state)
  del missing["1.layer2.1.bn2.running_var"]
  with pytest.raises(InputError, match=r"lacks 1 keys .*1\.layer2\.1\.bn2\.running_var"):
    architectures.convert(arch, missing)
  extra = OrderedDict(state)
  extra["1.layer4.0.conv1.weight"] = np.zeros((3, 3, 1, 1), np.float32)
  with pytest.raises(InputError, match=r"1 keys of the file are not part of cifar_resnet20"):
    architectures.convert(arch, extra)
  wrong = OrderedDict(state)
  wrong["1.fc.weight"] = np.zeros((100, 64), np.float32)  # CIFAR-100's head
  with pytest.raises(InputError, match=r"1\.fc\.weight has shape \(100, 64\)"):
    architectures.convert(arch, wrong)
  # A ResNet-20's file is not a ResNet-110.
  with pytest.raises(InputError, match="lacks .* keys"):
    architectures.convert(architectures.architecture("cifar_resnet110", "cifar10"), state)
  madry = state_of(CASES["madry_cifar_resnet50"][0])
  with pytest.raises(InputError, match="drop --normalization"):
    architectures.convert(architectures.architecture("resnet50", "cifar10"), madry,
                          normalization="cohen")
  with pytest.raises(InputError, match="exists for mnist, not 'cifar10'"):
    architectures.architecture("lenet", "cifar10")
  with pytest.raises(InputError, match="unknown architecture 'vgg16'"):
    architectures.architecture("vgg16", "cifar10")


def test_convert_job_writes_a_workdir_that_restores_the_model(tmp_path):
  path = fixture("cohen_cifar_resnet20.pth.tar")
  workdir = tmp_path / "cohen"
  result = convert_job.run(convert_job.Options(
    torch=path, dataset="cifar10", noise_sd=0.25, workdir=str(workdir)
  ))
  assert result.model_name == "resnet20"
  record = json.loads((workdir / "conversion.json").read_text())
  with open(path, "rb") as f:
    assert record["sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert record["arch"] == "cifar_resnet20" and record["format"] == "legacy"
  assert record["entries"] == {"epoch": 90, "arch": "cifar_resnet20"}
  assert len(record["mapped"]) == 107 and len(record["not_needed"]) == 21
  model, config, info, meta = checkpoints.restore_model(str(workdir))
  assert (config.model, config.dataset, config.noise_sd, config.clip_inputs) == (
    "resnet20", "cifar10", 0.25, False)
  assert info.mean == pytest.approx(architectures.CIFAR_MEAN)
  assert info.std == pytest.approx(architectures.CIFAR_STD)
  assert (meta["epoch"], meta["step"]) == (0, 0)
  images, want = expected(path, "logits")
  assert close(model(images), want) < RTOL
  assert sorted(os.listdir(tmp_path)) == ["cohen"]  # no temporary folder left

  # MadryLab's clamp is recorded in the config and survives the restore.
  madry = tmp_path / "madry"
  convert_job.run(convert_job.Options(
    torch=fixture("madry_cifar_resnet50_tiny.pt"), arch="resnet50", dataset="cifar10",
    noise_sd=0.0, workdir=str(madry),
  ))
  model, config, _, _ = checkpoints.restore_model(str(madry))
  assert config.clip_inputs and model.normalize.clip
  images, want = expected(fixture("madry_cifar_resnet50_tiny.pt"), "logits")
  assert close(model(images), want) < RTOL
  record = json.loads((madry / "conversion.json").read_text())
  assert "argparse.Namespace" in record["placeholders"]


def test_converted_models_give_the_same_logits_on_8_devices():
  out = run_with_devices(
    """
    import json, re
    import numpy as np, jax
    from smoothjax.devices import parallel
    from smoothjax.models import transforms
    from smoothjax.published import architectures, pickles
    assert jax.device_count() == 8
    errors = {}
    for file, arch, dataset in [
        ("cohen_cifar_resnet20_zip.pth.tar", "cifar_resnet20", "cifar10"),
        ("madry_cifar_resnet50_tiny.pt", "resnet50", "cifar10")]:
      path = "tests/fixtures/torch/models/" + file
      state, _ = architectures.find_state_dict(pickles.read(path).obj)
      c = architectures.convert(architectures.architecture(arch, dataset), state)
      stored = np.load(re.sub(r"(_zip)?\\.(pth\\.tar|pt)$", ".npz", path))
      images = np.concatenate([stored["images"]] * 8)  # 24 or 32 rows over 8 devices
      mesh = parallel.make_mesh()
      for fold in (False, True):
        model = transforms.for_inference(c.model, fold=fold, dtype="float32")
        x = parallel.shard_batch(images, mesh)
        assert len(x.sharding.device_set) == 8
        logits = np.asarray(jax.jit(lambda x: model(x))(x))
        want = np.concatenate([stored["logits"]] * 8)
        errors[f"{file}:{fold}"] = float(np.abs(logits - want).max() / np.abs(want).max())
    print(json.dumps(errors))
    """
  )
  errors = json.loads(out.strip().splitlines()[-1])
  assert len(errors) == 4 and max(errors.values()) < RTOL, errors


def test_convert_program_and_its_bad_input(tmp_path):
  """convert.py as a user runs it, then each bad input: one line, exit 2, nothing written."""
  good = fixture("consistency_lenet.pth.tar")
  proc = run("convert.py", "--torch", good, "--dataset", "mnist", "--noise_sd", "0.25",
             "--workdir", tmp_path / "lenet")
  assert proc.returncode == 0 and "as smoothjax's lenet" in proc.stderr, proc.stderr
  assert os.path.isfile(tmp_path / "lenet" / "conversion.json")

  truncated = tmp_path / "truncated.pth.tar"
  truncated.write_bytes(open(good, "rb").read()[:50000])
  text = tmp_path / "notes.txt"
  text.write_text("not a checkpoint\n")
  full = tmp_path / "full"
  full.mkdir()
  (full / "x").write_text("x")
  out = tmp_path / "out"
  base = ["--dataset", "mnist", "--noise_sd", "0.25", "--workdir", out]
  cases = [
    (["--dataset", "mnist", "--noise_sd", "0.25", "--workdir", out], "--torch is required"),
    (["--torch", tmp_path / "nope.pt", *base], "not found"),
    (["--torch", truncated, *base], "truncated"),
    (["--torch", text, *base], "not a PyTorch checkpoint"),
    (["--torch", good, "--dataset", "cifar10", "--noise_sd", "0.25", "--workdir", out],
     "exists for mnist"),
    (["--torch", good, "--arch", "cifar_resnet20", *base], "exists for cifar10"),
    (["--torch", good, "--dataset", "svhn", "--noise_sd", "0.25", "--workdir", out],
     "unknown dataset 'svhn'"),
    (["--torch", good, "--dataset", "mnist", "--workdir", out], "--noise_sd is required"),
    (["--torch", good, "--dataset", "mnist", "--noise_sd", "-1", "--workdir", out],
     "--noise_sd must be a number >= 0"),
    (["--torch", good, "--dataset", "mnist", "--noise_sd", "0.25", "--workdir", full],
     "exists and is not empty"),
    (["--torch", good, "--normalization", "zca", *base], "unknown --normalization 'zca'"),
    (["--torch", good, "--noise", "cauchy", *base], "--noise cauchy"),
    (["--torch", fixture("cohen_cifar_resnet20.pth.tar"), "--arch", "cifar_resnet110",
      "--dataset", "cifar10", "--noise_sd", "0.25", "--workdir", out],
     "says it holds 'cifar_resnet20'"),
  ]
  outcomes = run_program_cases("convert", [c for c, _ in cases], tmp_path)
  for (_, pattern), outcome in zip(cases, outcomes, strict=True):
    assert_one_line_outcome(outcome, pattern)
  assert not out.exists()
  assert sorted(os.listdir(tmp_path)) == sorted(
    ["lenet", "truncated.pth.tar", "notes.txt", "full", "cases.json", "outcomes.json"]
  )


# certify.py on mocked CIFAR-10 records (TFDS's mock_data: the same images in every
# process), since the tests cannot download the dataset.
MOCK_CERTIFY = """
import sys
import tensorflow_datasets as tfds
from smoothjax.cli import certify
sys.argv = ["certify.py", *sys.argv[1:]]
with tfds.testing.mock_data(num_examples=24):
  certify.run()
"""


def rows_without_time(path):
  with open(path) as f:
    lines = [ln.rstrip("\n").split("\t") for ln in f]
  drop = lines[0].index("time")
  return [[c for i, c in enumerate(ln) if i != drop] for ln in lines]


@pytest.fixture(scope="module")
def cohen_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("converted") / "cohen_resnet20"
  convert_job.run(convert_job.Options(
    torch=fixture("cohen_cifar_resnet20_zip.pth.tar"), dataset="cifar10", noise_sd=0.25,
    workdir=str(workdir),
  ))
  return str(workdir)


def test_certify_a_converted_model_resume_and_analyze_beside_cohens_file(cohen_workdir, tmp_path):
  import tensorflow_datasets as tfds
  from conftest import run_python

  from smoothjax import jobs, results

  full, part = tmp_path / "full.tsv", tmp_path / "part.tsv"
  args = ["--workdir", cohen_workdir, "--n0", "16", "--n", "200", "--alpha", "0.01",
          "--batch", "100", "--skip", "5"]
  run_python(["-c", MOCK_CERTIFY, *args, "--outfile", full, "--count", "4"], what="certify.py")
  options = dict(workdir=cohen_workdir, outfile=str(part), n0=16, n=200, alpha=0.01, batch=100,
                 skip=5)
  with tfds.testing.mock_data(num_examples=24):
    assert jobs.certify.run(jobs.certify.Options(**options, count=2)).idx.tolist() == [0, 5]
    jobs.certify.run(jobs.certify.Options(**options, count=4))  # resumes
  assert rows_without_time(part) == rows_without_time(full)
  settings = results.read_settings(full)
  assert settings["noise"] == "gaussian:0.25" and settings["dataset"] == "cifar10"
  proc = run("certify.py", "analyze", full, COHEN_TSV)
  table = proc.stdout
  assert "full.tsv" in table and "cifar10_resnet110_noise_0.25_sigma_0.25.tsv" in table
  # Cohen et al.'s row: 74.8% certified at radius 0 (their ResNet-110, sigma 0.25).
  cohen_row = next(ln for ln in table.splitlines() if "sigma_0.25.tsv" in ln)
  assert "| 74.8 |" in cohen_row


def test_fine_tune_a_converted_model_with_the_fixed_point_objective(cohen_workdir, tmp_path):
  import tensorflow_datasets as tfds

  from smoothjax import training
  from smoothjax.configs import embedded_fixedpoint

  config = embedded_fixedpoint.get_config()
  config.update(
    model="resnet20", dataset="cifar10", init_from=cohen_workdir, batch_size=8,
    eval_batch_size=8, learning_rate=1e-4, progress=False,
  )
  config.fixedpoint.steps = 1
  with tfds.testing.mock_data(num_examples=8):
    last = training.train_and_evaluate(config, str(tmp_path / "tuned"))
  assert last["epoch"] == 1 and np.isfinite(last["train_loss"])
  start, _, _, _ = checkpoints.restore_model(cohen_workdir)
  tuned, _, _, _ = checkpoints.restore_model(str(tmp_path / "tuned"))
  a = nnx.to_flat_state(nnx.state(start, nnx.Param))
  b = dict(nnx.to_flat_state(nnx.state(tuned, nnx.Param)))
  changes = [float(np.abs(np.asarray(v.get_value()) - np.asarray(b[p].get_value())).max())
             for p, v in a]
  # Started from the converted weights (a few small steps away), and trained them.
  assert 0 < max(changes) < 0.05
  # The normalisation constants are the checkpoint's (Cohen's), not the mock dataset's.
  assert np.asarray(tuned.normalize.std.get_value()) == pytest.approx(architectures.CIFAR_STD)


def test_denoised_smoothing_of_a_converted_model(cohen_workdir, tmp_path):
  """A DnCNN trained with stability against a converted classifier, then f(D(x)) certified."""
  import tensorflow_datasets as tfds

  from smoothjax import jobs, training
  from smoothjax.configs import embedded_denoiser

  config = embedded_denoiser.get_config()
  config.update(
    model="dncnn_tiny", dataset="cifar10", batch_size=8, eval_batch_size=8, num_epochs=1,
    progress=False,
  )
  config.denoiser.loss = "mse+stability"
  config.denoiser.classifier = cohen_workdir
  denoiser = str(tmp_path / "denoiser")
  with tfds.testing.mock_data(num_examples=8):
    last = training.train_and_evaluate(config, denoiser)
    assert np.isfinite(last["train_loss"]) and 0 <= last["test_accuracy_noisy"] <= 1
    res = jobs.certify.run(
      jobs.certify.Options(
        workdir=cohen_workdir, denoiser=denoiser, outfile=str(tmp_path / "c.tsv"), n0=8, n=32,
        batch=40, count=2,
      )
    )
  assert len(res.idx) == 2
  settings = json.loads((tmp_path / "c.tsv.settings.json").read_text())
  assert settings["dataset"] == "cifar10" and settings["denoiser"] == os.path.abspath(denoiser)
