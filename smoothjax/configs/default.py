"""Demo: the small MNIST CNN trained under Gaussian noise (sigma = 0.25) on the embedded digits.

Trains on the 4,000 embedded real MNIST training digits that ship with smoothjax
(no download) and evaluates on the 1,000 embedded test digits.

  python train.py --config default --workdir workdirs/demo

Expected runtime: about 1 minute on 2 CPU cores.
Expected result: about 96% clean test accuracy, and 96% under the training noise.
Any field can be overridden, e.g. --config.num_epochs=20 --config.noise_sd=0.5.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "embedded_mnist"  # or "idx:/path/to/folder", or a TFDS name
  config.data_dir = ""  # TFDS data_dir (empty: TFDS default)
  config.eval_split = "test"
  config.augment = "none"  # "none", "flip" or "crop_flip" (random crop, padding 4, + flip)
  # Training images' transform on the host (smoothjax.data.pipeline): "random_resized_crop"
  # (Cohen et al.'s ImageNet RandomResizedCrop + flip), "none", or "auto" (the crop on
  # imagenet2012, none elsewhere). Evaluation images are never transformed.
  config.host_transform = "auto"
  config.data_workers = 0  # grain worker processes reading batches (0: in the training process)
  config.data_prefetch = 2  # batches read ahead (per worker)
  # Model.
  config.model = "cnn"
  # Training mode (smoothjax.training.modes): "standard" (clean), "noise" (training under the noise
  # below, Cohen et al. 2019's Gaussian augmentation; alias "gaussian"), "fgsm" / "pgd"
  # (Madry et al. 2018, settings in `attack`), "smoothadv" (Salman et al. 2019),
  # "consistency" (Jeong & Shin 2020), "macer" (Zhai et al. 2020, Gaussian only),
  # "fixedpoint" (fine-tuning for generation, with init_from below); "denoiser" (a denoiser
  # for denoised smoothing, Salman et al. 2020: model dncnn, dncnn_small, ...) and "diffusion"
  # (an epsilon-prediction diffusion model for one-shot denoising, Carlini et al. 2023: model
  # unet_small, ...). Each mode's settings live in its section below (papers' defaults).
  config.mode = "noise"
  # Training and evaluation noise (smoothjax.noise): "gaussian", "laplace", "uniform" or
  # "expinf:k=1:j=0" (Yang et al. 2020), at the per-coordinate standard deviation noise_sd.
  config.noise = "gaussian"
  config.noise_sd = 0.25  # 0: no noise
  config.attack = ml_collections.ConfigDict(
    dict(norm="linf", eps=0.3, steps=10, step_size=0.0, random_start=True)
  )  # fgsm / pgd; step_size 0: 2.5 * eps / steps
  config.smoothadv = ml_collections.ConfigDict(
    dict(m=2, eps=0.25, steps=2, step_size=0.0, warmup_epochs=10, norm="l2")
  )  # step_size 0: 2 * eps / steps; eps grows linearly over warmup_epochs; norm "l1" for
  # Laplace / uniform noise (Yang et al. 2020), "l2" (Salman et al.) or "linf"
  config.consistency = ml_collections.ConfigDict(dict(m=2, lbd=10.0, eta=0.5))
  config.macer = ml_collections.ConfigDict(
    dict(m=16, beta=16.0, gamma=8.0, lbd=12.0, warmup_epochs=0)
  )  # warmup_epochs > 0: lbd ramps up linearly over those epochs
  config.fixedpoint = ml_collections.ConfigDict(
    dict(
      loss="ce", m=0, eps=2.0, steps=5, step_size=0.0, keep_best=False, remat=True, ce_weight=1.0
    )
  )  # generation PGD (l2) from real images; m > 0: smoothed under the noise above; step_size
  # 0: 2.5 * eps / steps; ce_weight 0: the fixed-point loss alone
  config.denoiser = ml_collections.ConfigDict(
    dict(loss="mse", classifier="", classifier_epoch=-1, sigmas=())
  )  # loss "mse", "stability", "classification", "mse+stability" or "mse+classification";
  # classifier: the workdir of the frozen classifier the last four need (its latest
  # checkpoint, or classifier_epoch); sigmas: the noise levels a conditioned denoiser
  # (dncnn_conditioned) trains at (empty: noise_sd alone)
  config.diffusion = ml_collections.ConfigDict(dict(max_sigma=0.0))
  # max_sigma > 0: train on the times whose noise is at most that pixel sigma (0: all)
  # Start from another run's trained parameters (a workdir of the same model and dataset);
  # a fresh optimiser. Used when this workdir has no checkpoint yet.
  config.init_from = ""
  # Clamp the model's inputs to [0, 1] before its normalisation, as MadryLab's
  # InputNormalize does (models converted from their checkpoints by convert.py).
  config.clip_inputs = False
  # Optimisation.
  config.num_epochs = 6
  config.batch_size = 64
  config.eval_batch_size = 500
  config.optimizer = "sgd"
  config.learning_rate = 0.02
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.schedule = "cosine"  # "constant", "step", "multistep" or "cosine"
  config.warmup_epochs = 1
  config.lr_step_epochs = 30  # for "step"
  config.lr_decay = 0.1  # for "step" and "multistep"
  config.lr_milestones = ()  # for "multistep": epochs at which lr is multiplied by lr_decay
  # Numerics (smoothjax.devices.numerics). compute_dtype "bfloat16": mixed precision (bfloat16
  # activations, float32 parameters, optimiser state and loss), about 1.5-2x faster on GPUs
  # and TPUs. precision "highest": full float32 products on GPUs (default: TF32). deterministic:
  # deterministic GPU operations, so that a resumed run is bit-identical there too (slower;
  # CPUs are deterministic anyway).
  config.compute_dtype = "float32"
  config.precision = "default"
  config.deterministic = False
  # Bookkeeping.
  config.seed = 0
  config.checkpoint_every_epochs = 1
  config.checkpoint_every_steps = 0  # > 0: also save within epochs
  config.keep_checkpoints = 3
  config.progress = True
  return config
