"""Published PyTorch models: conversion cost, and CERTIFY against the authors' PyTorch loop.

1. Conversion of a ResNet-50-sized checkpoint (torchvision's ResNet-50 in Cohen et al.'s
   ImageNet layout, ``Sequential(NormalizeLayer, DataParallel(resnet50))``, random
   weights, about 100 MB): wall time and peak resident memory of ``convert.py`` (a
   child process, so its peak is its own), and of reading the file alone.
2. Certification throughput of a converted CIFAR-10 ResNet-110 (Cohen et al.'s
   architecture, random weights) under smoothjax's CERTIFY against the same model under
   the authors' CERTIFY in PyTorch (``Smooth.certify`` and ``_sample_noise`` of
   ``code/core.py`` in locuslab/smoothing: noise drawn with ``torch.randn_like`` per
   batch, ``model(batch + noise).argmax(1)`` counted), on the same machine in one run,
   the same ``n0``, ``n``, batch and inputs.

Needs a second Python with PyTorch for the checkpoints and the PyTorch side::

  python benchmarks/published.py --torch_python /path/to/python-with-torch \
      --json published.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ----------------------------------------------------------------------------- torch side
def _torch_make(out: str, which: str) -> None:
  import torch
  from torch import nn

  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import torch_fixtures as tf

  torch.manual_seed(0)
  if which == "resnet50":
    model = nn.Sequential(
      tf.NormalizeLayer(tf.IMAGENET_MEAN, tf.IMAGENET_STD), nn.DataParallel(tf.TvResNet50())
    )
    arch = "resnet50"
  else:
    model = nn.Sequential(tf.NormalizeLayer(tf.CIFAR_MEAN, tf.CIFAR_STD), tf.CifarResNet(110))
    arch = "cifar_resnet110"
  tf.randomize_batchnorm(model, torch.Generator().manual_seed(0))
  torch.save({"epoch": 90, "arch": arch, "state_dict": model.state_dict()}, out)


def _torch_certify(path: str, images: str, n0: int, n: int, batch: int, sigma: float) -> None:
  """Cohen et al.'s CERTIFY (code/core.py) on the ResNet-110 checkpoint, timed per input."""
  import numpy as np
  import torch
  from torch import nn

  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import torch_fixtures as tf

  model = nn.Sequential(tf.NormalizeLayer(tf.CIFAR_MEAN, tf.CIFAR_STD), tf.CifarResNet(110))
  model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
  model.eval()

  def sample_noise(x, num):
    counts = np.zeros(10, dtype=int)
    with torch.no_grad():
      remaining = num
      while remaining:
        this = min(batch, remaining)
        remaining -= this
        b = x.repeat((this, 1, 1, 1))
        noise = torch.randn_like(b) * sigma
        predictions = model(b + noise).argmax(1)
        counts += np.bincount(predictions.numpy(), minlength=10)
    return counts

  xs = torch.from_numpy(np.load(images)).permute(0, 3, 1, 2).contiguous()
  times = []
  for x in xs:
    start = time.perf_counter()
    c0 = sample_noise(x, n0)
    sample_noise(x, n)[c0.argmax()]
    times.append(time.perf_counter() - start)
  print(json.dumps({"times": times, "threads": torch.get_num_threads(),
                    "torch": torch.__version__}))


# -------------------------------------------------------------------------- smoothjax side
def _peak_child(args) -> tuple[float, float, str]:
  """Wall seconds and peak RSS (MiB) of a child process, and its stderr."""
  script = (
    "import resource, subprocess, sys, json, time\n"
    "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "t = time.perf_counter() - t\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
    "print(json.dumps([t, peak, p.returncode, p.stderr]))\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", script, sys.executable, *args], capture_output=True, text=True
  )
  t, peak, code, err = json.loads(out.stdout)
  if code:
    raise SystemExit(f"{args} failed:\n{err}")
  return t, peak, err


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch_python", required=True, help="a Python with torch")
  parser.add_argument("--n0", type=int, default=100)
  parser.add_argument("--n", type=int, default=2000)
  parser.add_argument("--batch", type=int, default=400)
  parser.add_argument("--inputs", type=int, default=4)
  parser.add_argument("--json", default=None)
  parser.add_argument("--_torch", nargs="*", help=argparse.SUPPRESS)
  a = parser.parse_args()

  tmp = tempfile.mkdtemp(prefix="published_bench_")
  big = os.path.join(tmp, "resnet50.pth.tar")
  small = os.path.join(tmp, "resnet110.pth.tar")
  for path, which in ((big, "resnet50"), (small, "resnet110")):
    subprocess.run([a.torch_python, __file__, "--torch_python", "-", "--_torch", "make", path,
                    which], check=True)
  size = os.path.getsize(big)
  convert = [os.path.join(ROOT, "convert.py"), "--torch", big, "--dataset", "imagenet",
             "--noise_sd", "0.25"]
  read_code = (
    "import sys; from smoothjax.published import pickles; pickles.read(sys.argv[1])"
  )
  runs = []
  for i in range(3):
    t_read, peak_read, _ = _peak_child(["-c", read_code, big])
    t_conv, peak_conv, _ = _peak_child([*convert, "--workdir", os.path.join(tmp, f"w{i}")])
    runs.append((t_read, peak_read, t_conv, peak_conv))
  runs.sort(key=lambda r: r[2])
  t_read, peak_read, t_conv, peak_conv = runs[1]  # the median by conversion time

  import jax
  import numpy as np

  import smoothjax
  from smoothjax import noise
  from smoothjax.jobs import convert as convert_job
  from smoothjax.models import transforms
  from smoothjax.workdir import checkpoints

  work110 = os.path.join(tmp, "resnet110")
  convert_job.run(convert_job.Options(torch=small, dataset="cifar10", noise_sd=0.25,
                                      workdir=work110))
  model, _, _, _ = checkpoints.restore_model(work110)
  model = transforms.for_inference(model, fold=True, dtype="float32")
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(a.inputs + 1, 32, 32, 3)).astype(np.float32)
  images_file = os.path.join(tmp, "images.npy")
  np.save(images_file, images)
  gauss = noise.Gaussian(sigma=0.25)
  ours = []
  for i, x in enumerate(images):
    start = time.perf_counter()
    cert = smoothjax.certify(model, x, jax.random.key(i), noise=gauss, n0=a.n0, n=a.n,
                             alpha=0.001, batch_size=a.batch)
    jax.block_until_ready(cert.p_lower if hasattr(cert, "p_lower") else cert)
    ours.append(time.perf_counter() - start)
  out = subprocess.run(
    [a.torch_python, __file__, "--torch_python", "-", "--_torch", "certify", small, images_file,
     str(a.n0), str(a.n), str(a.batch), "0.25"],
    check=True, capture_output=True, text=True,
  )
  theirs = json.loads(out.stdout.strip().splitlines()[-1])
  samples = a.n0 + a.n
  ours_rate = samples / float(np.median(ours[1:]))  # the first call compiles
  theirs_rate = samples / float(np.median(theirs["times"][1:]))
  result = {
    "date": time.strftime("%Y-%m-%d"),
    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}",
    "jax": jax.__version__,
    "torch": theirs["torch"],
    "torch_threads": theirs["threads"],
    "checkpoint_mib": size / 2**20,
    "read_s": t_read,
    "read_peak_mib": peak_read,
    "convert_s": t_conv,
    "convert_peak_mib": peak_conv,
    "certify": {"n0": a.n0, "n": a.n, "batch": a.batch, "inputs": a.inputs},
    "smoothjax_s_per_input": ours[1:],
    "pytorch_s_per_input": theirs["times"][1:],
    "smoothjax_samples_per_s": ours_rate,
    "pytorch_samples_per_s": theirs_rate,
    "speedup": ours_rate / theirs_rate,
  }
  print(json.dumps(result, indent=2))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  if "--_torch" in sys.argv:
    rest = sys.argv[sys.argv.index("--_torch") + 1 :]
    if rest[0] == "make":
      _torch_make(rest[1], rest[2])
    else:
      _torch_certify(rest[1], rest[2], int(rest[3]), int(rest[4]), int(rest[5]), float(rest[6]))
  else:
    main()
