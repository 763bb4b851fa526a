"""Data augmentation on the device: random crops and horizontal flips.

These are the augmentations of Cohen et al.'s (2019) training code, written as
pure jitted functions of a key and an NHWC batch so that they run inside the
train step on sharded batches:

* ``crop_flip``: CIFAR's ``RandomCrop(32, padding=4)`` (zero padding) followed by
  ``RandomHorizontalFlip()``;
* ``flip``: ``RandomHorizontalFlip()`` alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("none", "flip", "crop_flip")


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Zero-pads each image by ``padding`` pixels and crops it back at a uniform offset."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def apply(name: str, key: jax.Array, images: jax.Array, *, padding: int = 4) -> jax.Array:
  """Applies the augmentation ``name`` (one of :data:`AUGMENTATIONS`)."""
  if name == "none":
    return images
  crop_key, flip_key = jax.random.split(key)
  if name == "crop_flip":
    images = random_crop(crop_key, images, padding)
  elif name != "flip":
    raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTATIONS}")
  return random_flip(flip_key, images)
