"""Device-side data augmentation (JAX, inside the jitted train step).

The paper augments by rotation and flipping; for axial MRI slices the lossless choices
are the 8 symmetries of the square (the dihedral group D4): rotation by a random multiple
of 90 degrees and random horizontal / vertical flips. No interpolation, no new pixels.

Every element of D4 is "transpose or not, then flip rows or not, then flip columns or
not", so each example needs at most one transpose and two reversals, chosen per example
with `jnp.where` (XLA fuses these into one elementwise pass; no 8 materialised copies,
no Python loop over the batch). Sampling rotation k in {0..3} and the two flips
independently and uniformly gives the uniform distribution over the group they generate
(each group element is hit by the same number of (k, h, v) combinations).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _apply_reference(x: np.ndarray, k: int, h: bool, v: bool) -> np.ndarray:
  """The definition, on one HxW[xC] image: rot90 by k (counterclockwise), then flips."""
  x = np.rot90(x, k, axes=(0, 1))
  if h:
    x = x[:, ::-1]  # horizontal flip: mirror left <-> right
  if v:
    x = x[::-1]     # vertical flip: mirror top <-> bottom
  return x


def _canonical(t: bool, flip_rows: bool, flip_cols: bool, x: np.ndarray) -> np.ndarray:
  if t:
    x = np.swapaxes(x, 0, 1)
  if flip_rows:
    x = x[::-1]
  if flip_cols:
    x = x[:, ::-1]
  return x


@functools.cache
def _lookup_table() -> np.ndarray:
  """[16, 3] bool: (k, h, v) -> (transpose, flip_rows, flip_cols), index k*4 + h*2 + v."""
  probe = np.arange(9).reshape(3, 3)
  table = np.zeros((16, 3), bool)
  canon = [(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)]
  for k in range(4):
    for h in (0, 1):
      for v in (0, 1):
        target = _apply_reference(probe, k, bool(h), bool(v))
        match = [c for c in canon if np.array_equal(_canonical(*c, probe), target)]
        table[k * 4 + h * 2 + v] = match[0]
  return table


def dihedral_transforms(image: np.ndarray) -> list[np.ndarray]:
  """The 8 distinct D4 transforms of an HxW[xC] square image (for tests)."""
  return [_canonical(t, r, c, image) for t in (False, True) for r in (False, True)
          for c in (False, True)]


def augment_batch(images: jax.Array, rng: jax.Array, *, rot90: bool = True,
                  hflip: bool = True, vflip: bool = True) -> jax.Array:
  """Random per-example rot90 / horizontal flip / vertical flip of images [B,H,W,C].

  Same shape and dtype out (works on uint8 before `to_model_input`, which is 4x less
  memory traffic than on float32). Deterministic given `rng`. With all switches off
  this is the identity. rot90 needs square images (H == W).
  """
  if images.ndim != 4:
    raise ValueError(f'augment_batch expects [B,H,W,C] images, got shape {images.shape}.')
  if not (rot90 or hflip or vflip):
    return images
  batch, height, width, _ = images.shape
  if rot90 and height != width:
    raise ValueError(
        f'augment rot90=True needs square images, got H={height}, W={width}; '
        'disable data.augment.rot90 or resize to a square.')
  k_rng, h_rng, v_rng = jax.random.split(rng, 3)
  zeros = jnp.zeros((batch,), jnp.int32)
  k = jax.random.randint(k_rng, (batch,), 0, 4) if rot90 else zeros
  h = jax.random.bernoulli(h_rng, 0.5, (batch,)).astype(jnp.int32) if hflip else zeros
  v = jax.random.bernoulli(v_rng, 0.5, (batch,)).astype(jnp.int32) if vflip else zeros
  ops = jnp.asarray(_lookup_table())[k * 4 + h * 2 + v]  # [B, 3]

  def select(flag, transformed, x):
    return jnp.where(flag[:, None, None, None], transformed, x)

  x = images
  if rot90:  # transposes only occur in the odd rotations
    x = select(ops[:, 0], jnp.swapaxes(x, 1, 2), x)
  if rot90 or vflip:
    x = select(ops[:, 1], x[:, ::-1], x)
  if rot90 or hflip:
    x = select(ops[:, 2], x[:, :, ::-1], x)
  return x
