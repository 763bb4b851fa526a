"""The training input pipeline: batches as data.batches, process rows, state, the ImageNet crop."""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
import pytest
import scipy.stats

from smoothjax import data
from smoothjax.data import pipeline
from smoothjax.devices import parallel
from smoothjax.errors import InputError
from smoothjax.workdir import checkpoints as checkpointing


def small_split(n=40, h=6, w=5, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, h, w, 1), dtype=np.uint8)
  return data.ArraySplit(images, rng.integers(0, 10, n).astype(np.uint8))


def make_input(split, **kwargs):
  args = dict(batch_size=8, steps_per_epoch=len(split) // 8, num_epochs=2, seed=3, rows=(0, 8))
  return pipeline.TrainInput(split, **{**args, **kwargs})


def collect(train_input, epochs=(0, 1)):
  out = []
  for epoch in epochs:
    out += [(x.copy(), y.copy()) for x, y in train_input.epoch(epoch)]
  train_input.close()
  return out


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for (x, y), (u, v) in zip(got, want, strict=True):
    np.testing.assert_array_equal(x, u)
    np.testing.assert_array_equal(y, v)


def test_batches_are_the_global_batches_rows_of_each_process():
  split = small_split()
  want = [b for e in (0, 1) for b in data.batches(split, 8, seed=3, epoch=e)]
  assert_batches_equal(collect(make_input(split)), want)
  # Two processes' rows of each global batch put together give the global batch.
  halves = [collect(make_input(split, rows=rows)) for rows in ((0, 4), (4, 8))]
  assert_batches_equal(
    [
      (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
      for a, b in zip(*halves, strict=True)
    ],
    want,
  )
  # A run started at step 7 (epoch 1, batch 2) reads the same batches from there on.
  late = make_input(split, start=7)
  assert_batches_equal([(x.copy(), y.copy()) for x, y in late.epoch(1, 2)], want[7:])
  late.close()
  with pytest.raises(RuntimeError, match="at step 7, not at step 5"):
    next(make_input(split, start=7).epoch(1, 0))


def test_bad_settings_are_one_line_errors():
  split = small_split()
  for kwargs, match in (
    (dict(workers=-1), "data_workers must be an integer >= 0"),
    (dict(prefetch=0), "data_prefetch must be an integer >= 1"),
    (dict(rows=(4, 12)), "rows"),
  ):
    with pytest.raises(InputError, match=match):
      make_input(split, **kwargs)


def test_worker_processes_give_the_same_batches_and_a_state_that_resumes(tmp_path):
  """One grain worker reads what the training process reads; its state, checkpointed, resumes."""
  split = small_split()
  want = collect(make_input(split))
  workdir = str(tmp_path)
  ckpt = checkpointing.Checkpointer(workdir)
  model = {"w": np.zeros(3, np.float32)}
  first = make_input(split, workers=1)
  epoch0 = first.epoch(0)
  got = [next(epoch0) for _ in range(3)]
  ckpt.save(3, model, model, {"step": 3}, data_iterator=first.iterator)
  ckpt.save(4, model, model, {"step": 4})  # no input state
  ckpt.close()
  first.close()
  ckpt = checkpointing.Checkpointer(workdir)
  resumed = make_input(split, workers=1)
  assert ckpt.restore_data(3, resumed.iterator)
  assert not ckpt.restore_data(4, make_input(split).iterator)
  ckpt.close()
  resumed.restored(3)
  got += list(resumed.epoch(0, 3)) + list(resumed.epoch(1))
  resumed.close()
  assert_batches_equal(got, want)


def test_process_rows_and_put_process_batch_on_one_process():
  mesh = parallel.make_mesh()
  n = mesh.devices.size
  assert parallel.process_rows(mesh, 4 * n) == (0, 4 * n)
  x = np.arange(4 * n * 2, dtype=np.float32).reshape(4 * n, 2)
  np.testing.assert_array_equal(np.asarray(parallel.put_process_batch(x, mesh, 4 * n)), x)
  if n > 1:
    with pytest.raises(InputError, match="not a multiple"):
      parallel.process_rows(mesh, 4 * n + 1)


# --------------------------------------------------------------------------
# RandomResizedCrop (torchvision's, as Cohen et al. train on ImageNet).


def test_crop_scale_and_ratio_follow_torchvision():
  rng = np.random.default_rng(0)
  height = width = 1000
  boxes = np.array([pipeline.crop_box(rng, height, width) for _ in range(4000)])
  top, left, h, w = boxes.T
  assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
  scale, ratio = h * w / (height * width), w / h
  assert scale.min() >= 0.08 * 0.99 and scale.max() <= 1
  assert ratio.min() >= 0.75 * 0.99 and ratio.max() <= 4 / 3 * 1.01
  # Crops of at most half the area always fit, so there scale is uniform and ratio log-uniform.
  small = scale < 0.5
  u = (scale[small] - 0.08) / (0.5 - 0.08)
  assert scipy.stats.kstest(u, scipy.stats.uniform().cdf).pvalue > 1e-3
  v = (np.log(ratio[small]) - math.log(0.75)) / (math.log(4 / 3) - math.log(0.75))
  assert scipy.stats.kstest(v, scipy.stats.uniform().cdf).pvalue > 1e-3
  # A ratio uniform (not log-uniform) in [3/4, 4/3] would be caught.
  wrong = rng.uniform(0.75, 4 / 3, small.sum())
  wrong = (np.log(wrong) - math.log(0.75)) / (math.log(4 / 3) - math.log(0.75))
  assert scipy.stats.kstest(wrong, scipy.stats.uniform().cdf).pvalue < 1e-3
  # Positions are uniform over the room left.
  room = (left / np.maximum(width - w, 1))[(width - w) > 100]
  assert scipy.stats.kstest(room, scipy.stats.uniform().cdf).pvalue > 1e-3


def test_crop_falls_back_to_a_center_crop():
  rng = np.random.default_rng(0)
  # No crop of 8% or more of a 1-pixel-high strip fits: the center crop of ratio 4/3.
  assert pipeline.crop_box(rng, 1, 100) == (0, 49, 1, 1)
  assert pipeline.crop_box(rng, 3, 300) == (0, 148, 3, 4)
  assert pipeline.crop_box(rng, 300, 3) == (148, 0, 4, 3)
  # Always failing draws (scale beyond the image) give the whole image when its ratio fits.
  assert pipeline.crop_box(rng, 30, 36, scale=(2.0, 3.0)) == (0, 0, 30, 36)


def test_random_resized_crop_shapes_determinism_content_and_flips():
  height, width, size = 60, 80, 16
  # A horizontal ramp: the crop keeps it increasing left to right unless it was flipped.
  ramp = np.broadcast_to((np.arange(width) * 3).astype(np.uint8)[None, :, None], (height, width, 3))
  crop = pipeline.RandomResizedCrop(size, seed=5)
  outs = [crop(np.ascontiguousarray(ramp), index, epoch=0) for index in range(1000)]
  assert all(o.shape == (size, size, 3) and o.dtype == np.uint8 for o in outs)
  np.testing.assert_array_equal(crop(np.ascontiguousarray(ramp), 7, epoch=0), outs[7])
  assert not np.array_equal(crop(np.ascontiguousarray(ramp), 7, epoch=1), outs[7])
  assert not np.array_equal(pipeline.RandomResizedCrop(size, seed=6)(ramp.copy(), 7, 0), outs[7])
  flipped = np.array([int(o[0, 0, 0]) > int(o[0, -1, 0]) for o in outs])
  assert abs(flipped.mean() - 0.5) < 4 * math.sqrt(0.25 / len(outs))
  for index in range(20):  # the left edge of the output is the crop box's left edge
    _, left, _, w = pipeline.crop_box(crop.rng(index, 0), height, width)
    out = outs[index][:, ::-1] if flipped[index] else outs[index]
    assert abs(int(out[0, 0, 0]) - 3 * left) <= 3 * w / size + 3
    assert abs(int(out[0, -1, 0]) - 3 * (left + w - 1)) <= 3 * w / size + 3
  gray = crop(np.ascontiguousarray(ramp[..., :1]), 3, epoch=0)
  assert gray.shape == (size, size, 1)


def test_host_transform_setting():
  def info(name, shape=(224, 224, 3)):
    return data.DatasetInfo(name, 10, shape, (0.5,) * 3, (0.5,) * 3, {})

  config = ml_collections.ConfigDict({"host_transform": "auto"})
  assert pipeline.host_transform(config, info("imagenet2012"), 1) == (
    pipeline.RandomResizedCrop(224, 1)
  )
  assert pipeline.host_transform(config, info("cifar10", (32, 32, 3)), 1) is None
  config.host_transform = "random_resized_crop"
  assert pipeline.host_transform(config, info("cifar10", (32, 32, 3)), 1).size == 32
  with pytest.raises(InputError, match="square"):
    pipeline.host_transform(config, info("x", (20, 30, 3)), 1)
  config.host_transform = "none"
  assert pipeline.host_transform(config, info("imagenet2012"), 1) is None
  config.host_transform = "crop"
  with pytest.raises(InputError, match="unknown host_transform 'crop'"):
    pipeline.host_transform(config, info("imagenet2012"), 1)


def test_training_images_are_transformed_per_epoch_and_example():
  split = small_split(n=16, h=12, w=12)
  crop = pipeline.RandomResizedCrop(12, seed=3)
  train_input = make_input(split, batch_size=4, steps_per_epoch=4, rows=(0, 4), transform=crop)
  batches = collect(train_input)
  read = train_input.read
  for step in (0, 5):
    idx = read.indices(step)
    stored = split._images[idx]
    want = np.stack([crop(im, int(i), step // 4) for im, i in zip(stored, idx, strict=True)])
    np.testing.assert_array_equal(batches[step][0], want / np.float32(255))


def test_tfds_split_pickles_for_worker_processes(tmp_path):
  """grain sends the split to its workers: a TFDS split whose thread pool started pickles."""
  import pickle

  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    split = data.load("cifar10", data_dir=str(tmp_path)).split("train")
    images, labels = split.get([4, 1])
    copy = pickle.loads(pickle.dumps(split))
    again, labels_again = copy.get([4, 1])
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(labels, labels_again)


def test_resume_uses_the_saved_input_state_only_when_it_fits(tmp_path):
  """A checkpoint's input state is restored when saved by a job of the same shape; a checkpoint
  without one, or from another worker count or batch size, resumes from its step."""
  from smoothjax.configs import default
  from smoothjax.training import loop

  config = default.get_config()
  config.batch_size, config.num_epochs, config.seed = 8, 2, 3
  dataset = data.Dataset(data.DatasetInfo("x", 10, (6, 5, 1), (0.5,), (0.5,), {}), {})
  dataset.splits["train"] = small_split()
  mesh = parallel.make_mesh(jax.devices()[:1])
  want = collect(make_input(dataset.splits["train"]))
  # A run started at step 2 (a resume without input state) saves its state at step 4.
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  first = loop._train_input(config, ckpt, dataset, 5, mesh, 2, {})
  assert first.start == 2
  epoch0 = first.epoch(0, 2)
  got = [next(epoch0), next(epoch0)]  # steps 2 and 3
  model = {"w": np.zeros(2, np.float32)}
  ckpt.save(4, model, model, {"input": first.description}, data_iterator=first.iterator)
  ckpt.save(6, model, model, {})
  first.close()
  saved = ckpt.meta(4)["input"]
  assert saved == {"start": 2, "workers": 0, "batch_size": 8}
  resumed = loop._train_input(config, ckpt, dataset, 5, mesh, 4, {"input": saved})
  assert resumed.start == 2  # built as the run that saved the state, and restored
  got += list(resumed.epoch(0, 4)) + list(resumed.epoch(1))
  assert_batches_equal([(x.copy(), y.copy()) for x, y in got], want[2:])
  for meta in ({}, {"input": dict(saved, workers=1)}, {"input": dict(saved, batch_size=4)}):
    fresh = loop._train_input(config, ckpt, dataset, 5, mesh, 4, meta)
    assert fresh.start == 4
    assert_batches_equal([(x.copy(), y.copy()) for x, y in fresh.epoch(0, 4)], want[4:5])
    fresh.close()
  ckpt.close()
