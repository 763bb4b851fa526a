"""Denoised smoothing: denoisers, their training modes, and classifier(denoiser(x)) in the jobs.

Closed form: on Gaussian data (every pixel N(mu, s^2)) the MMSE denoiser is
``mu + s^2 / (s^2 + sigma^2) (y - mu)``; a DnCNN trained with ``mse`` approaches it. The
jobs' certificates of ``f(D(x))`` equal those of the hand-composed logits function under
the same keys; both fingerprints guard resumes; bad pairings are refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
  STANDARD,
  assert_one_line_outcome,
  run_program_cases,
  run_with_devices,
  tiny_run,
)
from flax import nnx

from smoothjax import data, jobs, models, noise, smoothing, training
from smoothjax.configs import default
from smoothjax.data import sources
from smoothjax.errors import InputError
from smoothjax.models import diffusion
from smoothjax.training import modes
from smoothjax.workdir import checkpoints

# A tiny denoiser and diffusion model for the embedded digits, trained by train.py.
DENOISER = (
  "--config=embedded_denoiser",
  "--config.model=dncnn_tiny",
  "--config.num_epochs=1",
  "--config.progress=False",
)
DIFFUSION = (
  "--config=embedded_diffusion",
  "--config.model=unet_tiny",
  "--config.num_epochs=1",
  "--config.progress=False",
)


def denoiser_config(mode="denoiser", model="dncnn_tiny", **overrides):
  config = default.get_config()
  config.mode = mode
  config.model = model
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.weight_decay = 0.0
  config.warmup_epochs = 0
  config.batch_size = 32
  config.progress = False
  for k, v in overrides.items():
    if isinstance(v, dict):
      for kk, vv in v.items():
        config[k][kk] = vv
    else:
      config[k] = v
  return config


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  return str(tiny_run(tmp_path_factory, *STANDARD))


def _train(workdir, *flags):
  """A denoiser or diffusion run of train.py (tiny models, one epoch)."""
  from conftest import run

  run("train.py", f"--workdir={workdir}", *flags)
  return str(workdir)


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
  return _train(tmp_path_factory.mktemp("dn") / "dn", *DENOISER)


@pytest.fixture(scope="module")
def diffusion_model(tmp_path_factory):
  return _train(tmp_path_factory.mktemp("diff") / "diff", *DIFFUSION)


def flat(state):
  return jax.tree.leaves(jax.tree.map(np.asarray, nnx.to_pure_dict(state)))


# --------------------------------------------------------------------------
# The models.


def test_dncnn_predicts_the_noise_and_folds():
  model = models.create_denoiser("dncnn_small", input_shape=(28, 28, 1), rngs=nnx.Rngs(params=0))
  y = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  out = model(y)
  assert out.shape == y.shape and out.dtype == jnp.float32
  # D(y) = y - residual(y): the last convolution's output is what is subtracted.
  np.testing.assert_allclose(out, y - model.layers(y), rtol=1e-6, atol=1e-6)
  assert models.param_count(model) == 9 * 32 + 32 + 6 * (9 * 32 * 32 + 2 * 32) + 9 * 32
  folded = models.for_inference(model)
  assert models.count_batchnorms(folded) == 0 and models.count_batchnorms(model) == 6
  np.testing.assert_allclose(folded(y), out, rtol=1e-5, atol=1e-5)
  big = models.create_denoiser("dncnn", input_shape=(32, 32, 3), rngs=nnx.Rngs(params=0))
  assert models.param_count(big) == 9 * 3 * 64 + 64 + 15 * (9 * 64 * 64 + 2 * 64) + 9 * 64 * 3
  with pytest.raises(InputError, match="takes no sigma"):
    model(y, 0.25)
  with pytest.raises(InputError, match="3 channels"):
    big(y)


def test_conditioned_dncnn_is_told_the_noise_level():
  model = models.create_denoiser(
    "dncnn_small_conditioned", input_shape=(28, 28, 1), rngs=nnx.Rngs(params=0)
  )
  y = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  with pytest.raises(InputError, match="conditioned on the noise level"):
    model(y)
  low, high = model(y, 0.12), model(y, 1.0)
  assert float(jnp.max(jnp.abs(low - high))) > 1e-4
  per_example = model(y, jnp.array([0.12, 1.0, 0.12]))
  np.testing.assert_allclose(per_example[1], high[1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(models.AtNoise(model, 0.12)(y), low, rtol=1e-6, atol=1e-6)
  assert models.is_conditioned("dncnn_conditioned") and not models.is_conditioned("dncnn")


def test_composition_of_modules_and_of_functions():
  info = data.load("embedded_mnist").info
  rngs = nnx.Rngs(params=0)
  clf = models.create("cnn_tiny", num_classes=10, mean=info.mean, std=info.std, rngs=rngs)
  den = models.create_denoiser("dncnn_tiny", input_shape=(28, 28, 1), rngs=rngs)
  x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
  both = models.denoised(clf, den)
  assert isinstance(both, models.Denoised)
  np.testing.assert_allclose(both(x), clf(den(x)), rtol=1e-6)
  # The composition is a pytree: jit takes its weights as arguments.
  graphdef, state = nnx.split(both)
  logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
  np.testing.assert_allclose(logits, clf(den(x)), rtol=1e-5, atol=1e-6)
  fn = models.denoised(lambda z: clf(z) * 2.0, lambda y: jnp.clip(y, 0, 1))
  np.testing.assert_allclose(fn(x + 1.0), 2.0 * clf(jnp.ones_like(x)), rtol=1e-6)
  with pytest.raises(InputError, match="must be callable"):
    models.denoised(clf, "dncnn")


# --------------------------------------------------------------------------
# Closed form: the MSE denoiser of Gaussian data.


def test_mse_denoiser_approaches_the_mmse_denoiser_on_gaussian_data():
  """A DnCNN trained with ``mse`` on N(mu, s^2) pixels comes within 8% of the MMSE risk.

  The MMSE risk is ``s^2 sigma^2 / (s^2 + sigma^2)`` (0.0086 here, against 0.0625 for the
  noisy image). After 800 Adam steps the tiny DnCNN's risk is within 8% of that minimum
  (it reaches 1.04 times it) and its outputs lie within 0.02 (mean absolute difference,
  0.013 reached) of the MMSE denoiser's.
  """
  mu, s, sigma = 0.5, 0.1, 0.25
  steps = 800
  loss_fn = modes.build(denoiser_config(noise_sd=sigma))
  model = models.create_denoiser("dncnn_tiny", input_shape=(8, 8, 1), rngs=nnx.Rngs(params=0))
  tx = optax.adam(optax.cosine_decay_schedule(1e-2, steps))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, key):
    data_key, noise_key = jax.random.split(key)
    images = mu + s * jax.random.normal(data_key, (256, 8, 8, 1))
    labels = jnp.zeros((256,), jnp.int32)
    (loss, _), grads = nnx.value_and_grad(
      lambda m: loss_fn(m, noise_key, images, labels, 0), has_aux=True
    )(model)
    optimizer.update(model, grads)
    return loss

  model.train()
  for i in range(steps):
    step(model, optimizer, jax.random.fold_in(jax.random.key(0), i))
  model.eval()
  key_x, key_d = jax.random.split(jax.random.key(99))
  x = mu + s * jax.random.normal(key_x, (4096, 8, 8, 1))
  y = x + sigma * jax.random.normal(key_d, x.shape)
  out = model(y)
  mmse = diffusion.gaussian_mmse_denoiser(y, mu, s, sigma)
  risk = float(jnp.mean((out - x) ** 2))
  best = s**2 * sigma**2 / (s**2 + sigma**2)
  assert float(jnp.mean((mmse - x) ** 2)) == pytest.approx(best, rel=0.02)
  assert 0.98 * best <= risk < 1.08 * best, (risk, best)
  assert float(jnp.mean(jnp.abs(out - mmse))) < 0.02


# --------------------------------------------------------------------------
# The training modes.


@pytest.mark.parametrize(
  "mode,model,section",
  [
    ("denoiser", "dncnn_tiny", {"loss": "mse"}),
    ("denoiser", "dncnn_tiny", {"loss": "mse+stability"}),
    ("denoiser", "dncnn_tiny", {"loss": "classification"}),
    ("denoiser", "dncnn_small_conditioned", {"loss": "mse", "sigmas": [0.12, 0.5]}),
    ("diffusion", "unet_tiny", None),
  ],
)
def test_loss_falls_on_the_embedded_digits(classifier, mode, model, section):
  ds = data.load("embedded_mnist")
  split = ds.split("train")
  overrides = {}
  if section is not None:
    if "stability" in section["loss"] or "classification" in section["loss"]:
      section = {**section, "classifier": classifier}
    overrides["denoiser"] = section
  config = denoiser_config(mode, model, **overrides)
  trainer = training.make_trainer(config, ds.info, steps_per_epoch=40)
  state = trainer.state()
  losses = []
  order = np.random.default_rng(0).permutation(len(split))
  for step in range(40):
    images, labels = split.get(np.sort(order[32 * step : 32 * (step + 1)]))
    key = jax.random.fold_in(jax.random.key(1), step)
    state, m = trainer.train_step(state, images, labels.astype(np.int32), key, 0)
    assert bool(m["finite"])
    losses.append(float(m["loss"]))
  assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
  if section and "classifier" in section:
    assert "cross_entropy" in m and "accuracy" in m
    # The frozen classifier is not trained: its state is the workdir's.
    restored, _, _, _ = checkpoints.restore_model(classifier)
    for a, b in zip(flat(trainer.frozen), flat(nnx.state(restored)), strict=True):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", ["laplace", "uniform"])
def test_denoiser_mode_trains_under_the_configured_family(family):
  """The denoiser sees ``x + delta`` with ``delta`` of the run's family at ``noise_sd``."""
  import scipy.stats

  seen = []

  def model(y):
    seen.append(np.asarray(y))
    return y

  images = np.full((64, 28, 28, 1), 0.5, np.float32)
  config = denoiser_config(noise=family, noise_sd=0.3)
  loss, aux = modes.build(config)(model, jax.random.key(2), images, np.zeros(64, np.int32), 0)
  delta = (seen[0] - 0.5).ravel().astype(np.float64)
  assert abs(delta.std() / 0.3 - 1) < 0.02
  expected = {"laplace": 3.0, "uniform": -1.2}[family]  # excess kurtosis, Gaussian's is 0
  assert abs(scipy.stats.kurtosis(delta) - expected) < 0.15
  assert float(loss) == pytest.approx(float(np.mean(delta**2)), rel=1e-5)  # D = identity


def test_the_new_modes_step_the_same_on_8_devices_as_on_1(classifier):
  out = run_with_devices(
    f"""
      import sys
      sys.path.insert(0, "tests")
      from test_denoising import denoiser_config
      from test_modes import print_one_and_eight_devices
      print_one_and_eight_devices({{
        "mse": denoiser_config(batch_size=16),
        "stability": denoiser_config(
          batch_size=16, denoiser={{"loss": "mse+stability", "classifier": {classifier!r}}}
        ),
        "diffusion": denoiser_config("diffusion", "unet_tiny", batch_size=16),
      }})
      """
  )
  lines = [ln.split() for ln in out.splitlines() if ln.startswith("MODE")]
  assert [ln[1] for ln in lines] == ["mse", "stability", "diffusion"]
  for _, name, worst, dloss in lines:
    assert float(worst) < 1e-4 and float(dloss) < 1e-4, (name, worst, dloss)


@pytest.mark.parametrize(
  "mode,model,section",
  [
    ("denoiser", "dncnn_tiny", {"loss": "mse+classification"}),
    ("diffusion", "unet_tiny", None),
  ],
)
def test_killed_and_resumed_run_ends_with_the_same_parameters(
  classifier, tmp_path, monkeypatch, mode, model, section
):
  from test_training import Killed, assert_same_params, kill_once_at

  overrides = dict(
    num_epochs=2, batch_size=200, eval_batch_size=1000, schedule="step", deterministic=True
  )
  if section is not None:
    overrides["denoiser"] = {**section, "classifier": classifier}
  else:  # a small dataset of small images: 10 steps an epoch
    overrides.update(dataset=_idx_folder(tmp_path / "d", 14, train=160), batch_size=16)
  config = denoiser_config(mode, model, **overrides)
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  training.train_and_evaluate(config, whole)
  starts = kill_once_at(monkeypatch, at_epoch=1, at_batch=5)
  with pytest.raises(Killed):
    training.train_and_evaluate(config, killed)
  training.train_and_evaluate(config, killed)
  assert starts == [(0, 0), (1, 0), (1, 0)]
  assert_same_params(whole, killed)
  with open(os.path.join(killed, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["epoch"] for r in rows] == [1, 2]
  assert np.isfinite(rows[-1]["test_mse"]) and rows[-1]["test_mse_noisy"] > 0
  if section is not None:
    assert 0 <= rows[-1]["test_accuracy_noisy"] <= 1


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(denoiser={"loss": "l1"}), "denoiser.loss must be one of"),
    (dict(denoiser={"loss": "stability"}), "needs the frozen classifier"),
    (dict(denoiser={"sigmas": [0.25, -1.0]}), "denoiser.sigmas must be a list"),
    (dict(denoiser={"sigmas": [0.25, 0.5]}), "only a conditioned denoiser"),
    (dict(noise_sd=0.0), "set --config.noise_sd > 0"),
    (dict(model="cnn"), "trains a denoiser, but model 'cnn' is a classifier"),
    (dict(mode="noise"), "trains a classifier, but model 'dncnn_tiny' is a denoiser"),
    (dict(mode="diffusion"), "trains a diffusion, but model 'dncnn_tiny' is a denoiser"),
    (dict(mode="diffusion", model="unet_tiny", noise="laplace"), "undoes Gaussian noise"),
    (dict(mode="diffusion", model="unet_tiny", diffusion={"max_sigma": -1.0}), "max_sigma"),
  ],
)
def test_bad_denoiser_settings_are_refused_before_writing(tmp_path, overrides, message):
  config = denoiser_config(**overrides)
  workdir = tmp_path / "w"
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
    training.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_a_denoiser_workdir_as_the_frozen_classifier_is_refused(denoiser, tmp_path):
  config = denoiser_config(denoiser={"loss": "stability", "classifier": denoiser})
  with pytest.raises(InputError, match="holds a denoiser .* not a classifier"):
    training.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------
# The certified object: classifier(denoiser(x)) in the jobs.


def _hand_certify(logits_fn, split, idx, *, sigma, n0, n, alpha, seed, batch):
  images, _ = split.get(idx)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), idx.astype(np.uint32))
  return smoothing.certify_batch(
    logits_fn,
    images,
    keys,
    n0=n0,
    n=n,
    noise=noise.Gaussian(sigma=sigma),
    alpha=alpha,
    batch_size=batch,
  )


@pytest.mark.parametrize("kind", ["denoiser", "diffusion"])
def test_certificates_equal_those_of_the_hand_composed_logits_function(
  classifier, denoiser, diffusion_model, tmp_path, kind
):
  path = denoiser if kind == "denoiser" else diffusion_model
  options = jobs.certify.Options(
    workdir=classifier,
    outfile=str(tmp_path / "c.tsv"),
    denoiser=path,
    n0=32,
    n=200,
    count=4,
    skip=50,
    batch=100,
    sigma=0.25,
    fold_batchnorm=False,
  )
  res = jobs.certify.run(options)
  clf, _, _, _ = checkpoints.restore_model(classifier)
  front, _, _, _ = checkpoints.restore_model(path)
  if kind == "diffusion":
    step = diffusion.timestep_for_sigma(0.25, "cosine")

    def logits_fn(x):
      return clf(diffusion.one_shot_denoise(front, x, step))
  else:

    def logits_fn(x):
      return clf(front(x))

  split = data.load("embedded_mnist").split("test")
  certs = _hand_certify(
    logits_fn, split, res.idx, sigma=0.25, n0=32, n=200, alpha=0.001, seed=0, batch=100
  )
  assert [c.prediction for c in certs] == list(res.predict)
  # The file keeps radii to 4 decimals.
  np.testing.assert_allclose([c.radius for c in certs], res.radius, atol=6e-5)
  settings = json.load(open(str(tmp_path / "c.tsv") + ".settings.json"))
  assert settings["denoiser"] == os.path.abspath(path)
  assert settings["denoiser_fingerprint"].startswith("sha256:")
  assert settings["denoiser_noise"] == "gaussian:0.25"


def test_fingerprints_of_both_parts_guard_resume(classifier, denoiser, tmp_path, tmp_path_factory):
  outfile = str(tmp_path / "c.tsv")

  def certify(**changes):
    values = dict(workdir=classifier, outfile=outfile, denoiser=denoiser, n0=16, n=64, count=2)
    return jobs.certify.run(jobs.certify.Options(**{**values, **changes}))

  certify()
  with open(outfile) as f:
    rows = f.read()
  # The same denoiser's workdir retrained (another seed): other parameters, refused.
  retrained = str(tmp_path / "retrained")
  shutil.copytree(denoiser, retrained)
  _train(tmp_path / "other", *DENOISER, "--config.seed=7")
  shutil.rmtree(os.path.join(retrained, "checkpoints"))
  shutil.copytree(os.path.join(tmp_path / "other", "checkpoints"), f"{retrained}/checkpoints")
  with pytest.raises(InputError, match="denoiser"):
    certify(denoiser=retrained)
  with pytest.raises(InputError, match="denoiser"):
    certify(denoiser=None, sigma=0.25)
  other_classifier = str(tiny_run(tmp_path_factory))  # the tiny CNN trained under noise
  with pytest.raises(InputError, match="model_fingerprint"):
    certify(workdir=other_classifier)
  with open(outfile) as f:
    assert f.read() == rows  # nothing written by the refused runs
  certify(count=3)  # the same pair resumes
  with open(outfile) as f:
    assert len(f.read().splitlines()) == len(rows.splitlines()) + 1


def _idx_folder(root, size, train=64):
  """An MNIST-format folder of ``size``x``size`` random digits (any 10 labels)."""
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  for split, n in (("train", train), ("t10k", 16)):
    sources.write_idx(
      os.path.join(root, f"{split}-images-idx3-ubyte"),
      rng.integers(0, 256, (n, size, size), dtype=np.uint8),
    )
    sources.write_idx(
      os.path.join(root, f"{split}-labels-idx1-ubyte"), np.arange(n, dtype=np.uint8) % 10
    )
  return f"idx:{root}"


def test_bad_pairings_are_refused_in_one_line_with_nothing_written(
  classifier, denoiser, diffusion_model, tmp_path
):
  small = _train(
    tmp_path / "small",
    *DENOISER,
    f"--config.dataset={_idx_folder(tmp_path / 'd14', 14)}",
    "--config.batch_size=32",
  )
  other = _train(
    tmp_path / "other",
    *DENOISER,
    f"--config.dataset={_idx_folder(tmp_path / 'd28', 28)}",
    "--config.batch_size=32",
  )
  out = str(tmp_path / "out" / "c.tsv")
  copy = str(tmp_path / "classifier_copy")
  shutil.copytree(classifier, copy)
  base = ["--workdir", classifier, "--outfile", out, "--n", "16", "--count", "1"]
  cases = [
    (["--denoiser", copy], "holds a classifier (cnn_tiny), not a denoiser"),
    (["--denoiser", classifier], "names the classifier's own workdir"),
    (["--denoiser", small], "denoises images of shape (14, 14, 1)"),
    (["--denoiser", other], "was trained on dataset="),
    (["--denoiser", denoiser, "--sigma", "0.5"], "was trained at noise gaussian:0.25"),
    (["--denoiser", diffusion_model, "--noise", "laplace"], "undoes Gaussian noise"),
    (["--denoiser", str(tmp_path / "missing")], "no trained run"),
    (["--denoiser_epoch", "1"], "--denoiser_epoch is an epoch of --denoiser"),
  ]
  args = [base + c for c, _ in cases]
  args.append(["--workdir", denoiser, "--outfile", out, "--denoiser", classifier])  # swapped
  patterns = [p for _, p in cases] + ["not a classifier; certify a classifier with"]
  outcomes = run_program_cases("certify", args, tmp_path)
  for outcome, pattern in zip(outcomes, patterns, strict=True):
    assert_one_line_outcome(outcome, pattern)
  assert not os.path.exists(os.path.dirname(out))


def test_attack_generate_and_compare_take_the_denoiser(classifier, denoiser, tmp_path):
  res = jobs.attack.run(
    jobs.attack.Options(
      workdir=classifier,
      outfile=str(tmp_path / "a.tsv"),
      denoiser=denoiser,
      eps=(0.5,),
      steps=3,
      count=4,
      batch=4,
    )
  )
  assert res is not None
  settings = json.load(open(str(tmp_path / "a.tsv") + ".settings.json"))
  assert settings["denoiser_noise"] == "gaussian:0.25"
  summary = jobs.generate.run(
    jobs.generate.Options(
      workdir=classifier,
      outdir=str(tmp_path / "gen"),
      denoiser=denoiser,
      classes=(3,),
      per_class=2,
      m=0,
      steps=3,
    )
  )
  assert summary["overall"]["images"] == 2
  gen_settings = json.load(open(tmp_path / "gen" / "settings.json"))
  assert gen_settings["denoiser_fingerprint"] == settings["denoiser_fingerprint"]
  table = jobs.compare.run(
    jobs.compare.Options(
      workdirs=[classifier, classifier],
      denoisers=["", denoiser],
      outdir=str(tmp_path / "cmp"),
      n0=16,
      n=64,
      count=4,
      attacks=("fgsm",),
      eps_l2=(0.5,),
      eps_linf=(0.1,),
      sigma=0.25,
    )
  )
  names = [row[0] for row in table["rows"]]
  assert names[1] == os.path.basename(classifier) + "+dn"
  assert "mse denoiser" in table["rows"][1][1]
