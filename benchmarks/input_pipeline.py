"""Training input throughput: JPEG decoding + RandomResizedCrop(224) + flip, per grain worker count.

The ImageNet training input of smoothjax (:class:`smoothjax.data.pipeline.TrainInput` over a
:class:`smoothjax.data.TfdsSplit`, the code path of ``imagenet2012``) on synthetic
ImageNet-sized JPEGs (500x375, quality 90, held in memory, so that the disk does not count):
each example is decoded with PIL, cropped and resized to 224x224 with Cohen et al.'s
RandomResizedCrop and flipped at random, and batched. With ``data_workers`` = 0 the batches are
read in a background thread of this process (the split decodes in its thread pool); with
``data_workers`` = k > 0 in k grain worker processes. The rate is images per second over
``--batches`` batches after the first (which includes starting the workers), best of
``--repeats``; ``eval`` is the evaluation transform (resize to 256 + center crop 224) read the
same way with 0 workers, for comparison.

Usage::

  python benchmarks/input_pipeline.py                       # workers 0, 1, 2
  python benchmarks/input_pipeline.py --workers 0,4,8 --batch 256 --batches 20 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from smoothjax import data  # noqa: E402
from smoothjax.data import pipeline  # noqa: E402


class JpegSource:
  """An in-memory random-access source of JPEG examples, decoded on access (as TFDS's are)."""

  def __init__(self, jpegs: list[bytes], labels: np.ndarray):
    self.jpegs, self.labels = jpegs, labels

  def __len__(self) -> int:
    return len(self.jpegs)

  def __getitem__(self, index: int) -> dict:
    from PIL import Image

    with Image.open(io.BytesIO(self.jpegs[index])) as image:
      pixels = np.asarray(image.convert("RGB"))
    return {"image": pixels, "label": int(self.labels[index])}


def make_jpegs(num: int, width: int, height: int, seed: int = 0) -> list[bytes]:
  """Photo-like synthetic JPEGs: smooth colour fields plus noise (typical JPEG sizes)."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    coarse = rng.uniform(0, 255, (height // 25 + 1, width // 25 + 1, 3)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(field).astype(np.int16) + rng.integers(-20, 21, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def measure(split, *, workers: int, batch: int, batches: int, transform) -> float:
  """Images per second of the pipeline over `batches` batches after the first."""
  n = len(split)
  steps_per_epoch = n // batch
  train_input = pipeline.TrainInput(
    split,
    batch_size=batch,
    steps_per_epoch=steps_per_epoch,
    num_epochs=-(-(batches + 1) // steps_per_epoch),
    seed=0,
    rows=(0, batch),
    workers=workers,
    transform=transform,
  )
  stream = (b for e in range(10**9) for b in train_input.epoch(e))
  try:
    images, _ = next(stream)
    assert images.shape == (batch, 224, 224, 3), images.shape
    start = time.perf_counter()
    for _ in range(batches):
      next(stream)
    return batches * batch / (time.perf_counter() - start)
  finally:
    train_input.close()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", default="0,1,2", help="grain worker counts, comma-separated")
  parser.add_argument("--num_images", type=int, default=512)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", default="", help="also write the results here")
  args = parser.parse_args(argv)
  workers = [int(w) for w in args.workers.split(",")]

  t = time.perf_counter()
  jpegs = make_jpegs(args.num_images, 500, 375)
  labels = np.arange(args.num_images) % 1000
  kib = np.mean([len(j) for j in jpegs]) / 1024
  made = time.perf_counter() - t
  print(f"{args.num_images} JPEGs of 500x375 ({kib:.0f} KiB each) made in {made:.1f} s")
  source = JpegSource(jpegs, labels)
  train = data.TfdsSplit(source, None)  # the stored images: the crop replaces the resize
  crop = pipeline.RandomResizedCrop(224, seed=0)
  evaluation = data.TfdsSplit(source, 224)
  rows = []
  cases = [("eval (resize 256 + center crop 224)", evaluation, 0, None)]
  cases += [("train (RandomResizedCrop 224 + flip)", train, w, crop) for w in workers]
  for name, split, w, transform in cases:
    rates = [
      measure(split, workers=w, batch=args.batch, batches=args.batches, transform=transform)
      for _ in range(args.repeats)
    ]
    rows.append({"input": name, "data_workers": w, "images_per_s": max(rates), "all": rates})
    print(
      f"{name:40s} data_workers={w}  {max(rates):7.1f} images/s  (runs: "
      + ", ".join(f"{r:.1f}" for r in rates)
      + ")",
      flush=True,
    )
  meta = {
    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    "batch": args.batch,
    "timed_batches": args.batches,
  }
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
