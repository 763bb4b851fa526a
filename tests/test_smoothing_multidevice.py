"""Certification sharded over 8 fake CPU devices equals the single-device result.

Fixed-n and sequential CERTIFY, PREDICT and vote counts.
"""

from __future__ import annotations

from conftest import run_with_devices

CODE = r"""
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_debug_key_reuse", True)

from smoothjax import smoothing
from smoothjax.devices import parallel
from smoothjax.noise import Gaussian

assert jax.device_count() == 8, jax.devices()
SIGMA = 0.25
NOISE = Gaussian(SIGMA)
SHARDINGS = []


def logits_fn(x):
  # Records how the noisy batch is laid out over the devices at compile time.
  jax.debug.inspect_array_sharding(x, callback=SHARDINGS.append)
  flat = x.reshape(x.shape[0], -1)
  z = 0.5 * jnp.sum(flat, axis=1) - 1.0
  u = jax.scipy.special.ndtr((flat[:, 1] - 0.5) / SIGMA)
  bucket = jnp.clip(jnp.floor(3 * u), 0, 2)
  # Class 0/1 from the linear boundary, 2..4 from the noise: a spread of votes.
  near = jax.nn.one_hot((z > -0.1).astype(jnp.int32), 5)
  return jnp.where((z > 0)[:, None], jax.nn.one_hot(bucket + 2, 5), near)


xs = np.stack([np.full((2, 2, 1), (m + 1) / 2, np.float32) for m in (-0.3, 0.0, 0.05, 0.5)])
base = jax.random.key(2024)
keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(4))
settings = dict(noise=NOISE, n0=13, n=101, alpha=0.01)

ref = smoothing.certify_batch(logits_fn, xs, keys, batch_size=20, **settings)
one = smoothing.certify_batch(
    logits_fn, xs, keys, batch_size=20, mesh=parallel.make_mesh(jax.devices()[:1]), **settings
)
SHARDINGS.clear()
mesh = parallel.make_mesh()
eight = smoothing.certify_batch(logits_fn, xs, keys, batch_size=20, mesh=mesh, **settings)
assert SHARDINGS, "logits_fn was not traced on the mesh"
assert all(s.num_devices == 8 and not s.is_fully_replicated for s in SHARDINGS), SHARDINGS
odd = smoothing.certify_batch(logits_fn, xs, keys, batch_size=3, mesh=mesh, **settings)

for a, b, c, d in zip(ref, one, eight, odd, strict=True):
  assert a == b == c == d, (a, b, c, d)
  assert a.counts.sum() == 101 and a.counts_selection.sum() == 13
assert len({int(np.count_nonzero(c.counts)) for c in ref}) > 1

counts_ref = smoothing.sample_counts_batch(logits_fn, xs, keys, noise=NOISE, num=77, batch_size=16)
counts_mesh = smoothing.sample_counts_batch(
    logits_fn, xs, keys, noise=NOISE, num=77, batch_size=16, mesh=mesh
)
np.testing.assert_array_equal(counts_ref, counts_mesh)
pred_ref = smoothing.predict_batch(logits_fn, xs, keys, noise=NOISE, n=57, alpha=0.1, batch_size=9)
pred_mesh = smoothing.predict_batch(
    logits_fn, xs, keys, noise=NOISE, n=57, alpha=0.1, batch_size=9, mesh=mesh
)
np.testing.assert_array_equal(pred_ref, pred_mesh)

# A model returning NaN for one input is refused on the mesh too, naming that input.
from smoothjax.errors import InputError


def broken(x):
  flat = x.reshape(x.shape[0], -1)
  return jnp.where((flat[:, :1] > 5), jnp.nan, jnp.stack([flat[:, 0], -flat[:, 0]], axis=-1))


far = xs.copy()
far[2] = 10.0
try:
  smoothing.certify_batch(broken, far, keys, batch_size=20, mesh=mesh, value_range=None, **settings)
  raise AssertionError("NaN logits were voted")
except InputError as e:
  assert "input(s) 2 of this call's 4" in str(e), e

# Sequential CERTIFY: the same certificates and sample counts on 8 devices, whatever the
# batch size, and for each input alone.
adaptive = dict(noise=NOISE, n0=13, n_max=3000, alpha=0.01, radii=(0.0, 0.1, 0.3), first=20)
seq_ref = smoothing.certify_adaptive_batch(logits_fn, xs, keys, batch_size=64, **adaptive)
SHARDINGS.clear()
seq_eight = smoothing.certify_adaptive_batch(
    logits_fn, xs, keys, batch_size=24, mesh=mesh, **adaptive
)
assert SHARDINGS and all(s.num_devices == 8 and not s.is_fully_replicated for s in SHARDINGS)
for i, (a, b) in enumerate(zip(seq_ref, seq_eight, strict=True)):
  alone = smoothing.certify_adaptive(logits_fn, xs[i], keys[i], batch_size=7, **adaptive)
  assert a == b == alone, (a, b, alone)
assert len({c.samples for c in seq_ref}) > 1, [c.samples for c in seq_ref]
print("SEQUENTIAL", [(c.samples, c.stop) for c in seq_ref])

print("COUNTS", [c.counts.tolist() for c in eight])
print("MULTIDEVICE_MATCH ok")
"""


def test_certify_batch_on_eight_devices_matches_single_device():
  out = run_with_devices(CODE, num_devices=8)
  assert "MULTIDEVICE_MATCH ok" in out
  counts_line = next(line for line in out.splitlines() if line.startswith("COUNTS"))
  assert counts_line.count("[") == 5  # four inputs, one list each
