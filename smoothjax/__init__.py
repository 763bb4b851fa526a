"""smoothjax: randomized smoothing in JAX and Flax."""
