"""DnCNN sizes on 28x28 digits: test MSE after the same training, cost per step and per image.

Trains each denoiser with MSE at sigma 0.25 on the embedded MNIST digits (the
``embedded_denoiser`` config, its epochs by ``--epochs``), then times its forward pass
over a batch of 1000 noisy test digits, which is what CERTIFY pays per noise sample.

  python benchmarks/denoiser_sizes.py --models dncnn_small,dncnn --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="dncnn_tiny,dncnn_small,dncnn")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--outdir", default="benchmarks/out/denoiser_sizes")
  args = parser.parse_args()

  import jax
  import numpy as np
  from flax import nnx

  from smoothjax import data, models, training
  from smoothjax.configs import embedded_denoiser
  from smoothjax.workdir import checkpoints

  images, _ = data.load("embedded_mnist").split("test").get(np.arange(1000))
  noisy = images + 0.25 * np.asarray(jax.random.normal(jax.random.key(0), images.shape))
  rows = []
  for name in args.models.split(","):
    config = embedded_denoiser.get_config()
    config.model, config.num_epochs, config.progress = name, args.epochs, False
    workdir = os.path.join(args.outdir, name)
    training.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      history = [json.loads(line) for line in f]
    model, _, _, _ = checkpoints.restore_model(workdir)
    parameters = models.param_count(model)  # as trained (folding changes the count)
    model = models.for_inference(model)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x))
    forward(state, noisy).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(3):
      forward(state, noisy).block_until_ready()
    per_image_ms = (time.perf_counter() - t0) / 3 / len(noisy) * 1e3
    rows.append(
      {
        "model": name,
        "parameters": parameters,
        "epochs": args.epochs,
        "test_mse": history[-1]["test_mse"],
        "test_mse_noisy": history[-1]["test_mse_noisy"],
        "seconds_per_epoch": float(np.median([h["seconds"] for h in history])),
        "forward_ms_per_image": per_image_ms,
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  with open(os.path.join(args.outdir, "sizes.json"), "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
