"""Device augmentation: the geometric / intensity ops, and the unchanged D4 path.

The D4 distribution itself is tested in test_preprocess.py. Compilations dominate the
run time here, so tests share specs and shapes through `_run` (one jit cache).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.scipy import ndimage

from spp_resnet.data import augment

ALL_ON = dict(crop_scale=(0.6, 1.0), aspect_ratio=(0.75, 4 / 3), rotate_degrees=15.0,
              translate=0.1, brightness=0.1, contrast=0.2, gamma=(0.7, 1.4),
              noise_std=0.03, blur=0.5)
STRONG = dict(ALL_ON, brightness=0.5, contrast=0.5, gamma=(0.5, 2.0), noise_std=0.2,
              blur=1.0)
NO_D4 = dict(rot90=False, hflip=False, vflip=False)


@functools.partial(jax.jit, static_argnums=2)
def _jitted(images, key, spec):
  return spec(images, key)


def _run(images, seed=0, **options):
  return np.asarray(_jitted(images, jax.random.key(seed), augment.AugmentSpec(**options)))


def _old_d4(images, rng, *, rot90=True, hflip=True, vflip=True):
  """augment_batch as it was before the new ops (verbatim): the bit-exact reference."""
  if not (rot90 or hflip or vflip):
    return images
  batch = images.shape[0]
  k_rng, h_rng, v_rng = jax.random.split(rng, 3)
  zeros = jnp.zeros((batch,), jnp.int32)
  k = jax.random.randint(k_rng, (batch,), 0, 4) if rot90 else zeros
  h = jax.random.bernoulli(h_rng, 0.5, (batch,)).astype(jnp.int32) if hflip else zeros
  v = jax.random.bernoulli(v_rng, 0.5, (batch,)).astype(jnp.int32) if vflip else zeros
  ops = jnp.asarray(augment._lookup_table())[k * 4 + h * 2 + v]

  def select(flag, transformed, x):
    return jnp.where(flag[:, None, None, None], transformed, x)

  x = images
  if rot90:
    x = select(ops[:, 0], jnp.swapaxes(x, 1, 2), x)
  if rot90 or vflip:
    x = select(ops[:, 1], x[:, ::-1], x)
  if rot90 or hflip:
    x = select(ops[:, 2], x[:, :, ::-1], x)
  return x


def _images(batch=8, size=32, channels=1, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, channels),
                                              dtype=np.uint8)


# ---- The default (paper) path is unchanged ----------------------------------------------

def test_identity_when_everything_off():
  for x in (_images(), np.random.default_rng(1).random((3, 5, 7, 2)).astype(np.float32)):
    out = augment.augment_batch(x, jax.random.key(0), **NO_D4)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize('d4', [dict(rot90=True, hflip=True, vflip=True),
                                dict(rot90=False, hflip=True, vflip=False)])
def test_new_ops_off_equals_old_d4(d4):
  x = _images(batch=16, size=8, channels=2)
  key = jax.random.key(7)
  out = augment.augment_batch(x, key, **d4)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, _old_d4(x, key, **d4))
  # The default config section, through the spec, takes the same path.
  spec = augment.AugmentSpec.from_config(ml_collections.ConfigDict(d4))
  assert not (spec.geometric or spec.intensity)
  np.testing.assert_array_equal(spec(x, key), out)


@pytest.mark.slow
def test_d4_is_composed_exactly_into_the_warp():
  """All ops but noise, with D4 == the same with D4 off, then the old D4 (same key)."""
  x = _images()
  mix = {k: v for k, v in ALL_ON.items() if k != 'noise_std'}  # noise is per output pixel
  with_d4 = _run(x, 3, **mix)
  without = _run(x, 3, **mix, **NO_D4)
  np.testing.assert_allclose(with_d4, _old_d4(without, jax.random.key(3)), atol=1e-5)
  assert not np.allclose(with_d4, without, atol=1e-3)  # D4 did something


def test_intensity_only_keeps_d4_exact_contrast_and_brightness_per_example():
  x = np.random.default_rng(0).uniform(0.3, 0.7, (8, 8, 8, 1)).astype(np.float32)
  options = dict(contrast=0.5, brightness=0.2)  # these never clip on [0.3, 0.7]
  with_d4 = _run(x, 4, **options)
  without = _run(x, 4, **options, **NO_D4)
  np.testing.assert_array_equal(with_d4, _old_d4(without, jax.random.key(4)))
  # Per example: out = m + c (x - m) + b, m the mean of x; independent draws.
  shift = without.mean(axis=(1, 2, 3)) - x.mean(axis=(1, 2, 3))
  factor = without.std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
  np.testing.assert_allclose(without, x.mean(axis=(1, 2, 3), keepdims=True) * (1 - factor)
                             [:, None, None, None] + factor[:, None, None, None] * x
                             + shift[:, None, None, None], atol=1e-5)
  assert np.all(np.abs(shift) <= 0.2) and np.all((factor >= 0.5) & (factor <= 1.5))
  assert np.ptp(shift) > 0.05 and np.ptp(factor) > 0.1


# ---- Geometry ---------------------------------------------------------------------------

_resample = jax.jit(augment.resample)


def test_rotation_by_90_degrees_matches_rot90():
  x = _images(batch=2, size=16, channels=2)
  centre = jnp.full((2, 2), 7.5)
  exact = jnp.asarray([[0.0, -1.0], [1.0, 0.0]])[None].repeat(2, 0)  # +90 degrees
  np.testing.assert_array_equal(_resample(x, exact, centre), np.rot90(x, 1, axes=(1, 2)))
  # From the float angle (cos(pi/2) != 0 in float32): equal up to interpolation.
  angle = np.float32(np.pi / 2)
  rotation = jnp.asarray([[np.cos(angle), -np.sin(angle)],
                          [np.sin(angle), np.cos(angle)]])[None].repeat(2, 0)
  out = np.asarray(_resample(x, rotation, centre))
  np.testing.assert_allclose(out[:, 1:-1, 1:-1], np.rot90(x, 1, axes=(1, 2))[:, 1:-1, 1:-1],
                             atol=1e-3)


def test_translation_brings_in_black():
  x = _images(batch=2, size=16, channels=2)
  offset = jnp.asarray([[7.5 + 3, 7.5]] * 2)  # sample 3 columns to the right
  out = np.asarray(_resample(x, jnp.eye(2)[None].repeat(2, 0), offset))
  np.testing.assert_array_equal(out[:, :, :-3], x[:, :, 3:])
  np.testing.assert_array_equal(out[:, :, -3:], 0)


def test_bilinear_matches_map_coordinates():
  x = _images(batch=2, size=16, channels=2)
  rng = np.random.default_rng(0)
  matrix = jnp.asarray(rng.normal(0, 0.7, (2, 2, 2)), jnp.float32)
  offset = jnp.asarray(rng.uniform(-3, 18, (2, 2)), jnp.float32)
  out = np.asarray(_resample(x, matrix, offset))
  cols = np.arange(16, dtype=np.float32) - 7.5
  xs = matrix[:, 0, 0, None, None] * cols + matrix[:, 0, 1, None, None] * cols[:, None]
  ys = matrix[:, 1, 0, None, None] * cols + matrix[:, 1, 1, None, None] * cols[:, None]
  coords = jnp.stack([ys + offset[:, 1, None, None], xs + offset[:, 0, None, None]], 1)
  reference = jax.jit(jax.vmap(jax.vmap(
      lambda image, c: ndimage.map_coordinates(image, list(c), order=1, mode='constant'),
      in_axes=(-1, None), out_axes=-1)))(jnp.asarray(x, jnp.float32), coords)
  assert 0 < (out == 0).mean() < 0.9  # the test samples outside the image too
  np.testing.assert_allclose(out, reference, atol=1e-3)


def test_crop_scale_zooms_in_and_aspect_ratio_stretches():
  x = np.zeros((8, 32, 32, 1), np.uint8)
  x[:, 13:19, 13:19] = 255  # a centred 6x6 bright square
  # Area 0.72, aspect 2: the crop is the full width and 0.6 of the height, placed so that
  # it always holds the square. The square grows to about 6 x 10.
  out = _run(x, 0, crop_scale=(0.72, 0.72), aspect_ratio=(2.0, 2.0))
  bright = out > 0.5
  area = bright.sum(axis=(1, 2, 3))
  assert np.all((area >= 48) & (area <= 72)), area
  rows = bright.any(axis=2).sum(axis=(1, 2))
  cols = bright.any(axis=1).sum(axis=(1, 2))
  sides = np.sort(np.stack([rows, cols], 1), axis=1)  # D4 may swap the two
  assert np.all(np.abs(sides - [6, 10]) <= 1), sides


# ---- Intensity ---------------------------------------------------------------------------

def test_gamma_above_one_darkens_midtones():
  x = np.full((4, 8, 8, 1), 0.5, np.float32)  # float input: taken as [0, 1]
  x[:, 0, 0], x[:, 0, 1] = 0.0, 1.0
  out = _run(x, 0, gamma=(1.2, 1.4), **NO_D4)
  mid = out[:, 1:]
  assert np.all(mid < 0.5 ** 1.2 + 1e-6) and np.all(mid > 0.5 ** 1.4 - 1e-6)
  assert len(np.unique(mid[:, 0, 0, 0])) == 4  # per-example exponent
  np.testing.assert_array_equal(out[:, 0, :2, 0], [[0.0, 1.0]] * 4)  # fixed points


# ---- Randomness, jit, shapes --------------------------------------------------------------

def test_all_ops_range_independence_determinism_and_one_compilation():
  x = _images()
  x[:, 10:22, 8:20] = 200
  fn = jax.jit(lambda images, key: augment.augment_batch(images, key, **STRONG))
  out = np.asarray(fn(x, jax.random.key(5)))
  assert out.dtype == np.float32 and out.shape == x.shape
  assert out.min() == 0 and out.max() == 1  # these strengths do clip, and only clip
  flat = out.reshape(8, -1)
  for i in range(8):
    for j in range(i):
      assert not np.allclose(flat[i], flat[j], atol=1e-2), (i, j)
  np.testing.assert_array_equal(out, fn(x, jax.random.key(5)))
  assert not np.allclose(out, fn(x, jax.random.key(6)), atol=1e-2)
  assert fn._cache_size() == 1  # one compilation per batch shape, whatever the key


def test_remap_curve_is_piecewise_linear_through_the_drawn_knots():
  rng = np.random.default_rng(1)
  draws = rng.random((4, 5)).astype(np.float32)  # 4 knot heights, then the weight
  x = rng.random((4, 8, 8, 1)).astype(np.float32)
  x[:, 0, 0] = 0.0
  out = np.asarray(augment.remap_curve(x, draws))
  for i in range(4):
    curve = np.interp(x[i], [0, 0.25, 0.5, 0.75, 1], [0, *draws[i, :4]])
    np.testing.assert_allclose(out[i], x[i] + draws[i, 4] * (curve - x[i]), atol=1e-6)
  np.testing.assert_array_equal(out[:, 0, 0], 0.0)  # black stays black
  # Weight 0 is the identity; weight 1 may reverse the order of two intensities.
  np.testing.assert_allclose(augment.remap_curve(x, draws * [1, 1, 1, 1, 0]), x)
  reversing = np.asarray([[0.9, 0.1, 0.5, 0.5, 1.0]], np.float32)
  low, high = np.asarray(augment.remap_curve(np.asarray([0.25, 0.5], np.float32)
                                             .reshape(1, 1, 2, 1), reversing)).ravel()
  assert low == pytest.approx(0.9) and high == pytest.approx(0.1)


@pytest.mark.slow
def test_remap_keeps_the_other_ops_draws_and_the_range():
  x = _images(batch=6, size=16)
  x[:, :4] = 0
  base = dict(NO_D4, crop_scale=(0.7, 1.0), contrast=0.3, noise_std=0.05)
  # Weight ~0: the same output as with the op off (its draws come from their own key).
  np.testing.assert_allclose(_run(x, 2, **base, remap=1e-9), _run(x, 2, **base), atol=1e-6)
  out = _run(x, 2, rot90=False, hflip=False, vflip=False, remap=1.0)
  assert out.min() >= 0 and out.max() <= 1
  np.testing.assert_array_equal(out[:, :4], 0.0)  # the black background stays black
  changed = np.abs(out - x / 255).reshape(6, -1).max(axis=1)
  assert np.all(changed > 0.01) and np.ptp(changed) > 0.01  # a different curve each


def test_channels_and_non_square_images():
  wide = np.broadcast_to(np.asarray([255, 128, 0], np.uint8), (2, 6, 10, 3))
  out = _run(wide, 0, rot90=False, crop_scale=(0.5, 0.9), gamma=(1.0, 1.01))
  assert out.shape == wide.shape and out.dtype == np.float32
  # A zoom-in never reaches the border, and the channels stay apart.
  np.testing.assert_allclose(out, np.broadcast_to(wide / 255, out.shape), atol=0.01)
  with pytest.raises(ValueError, match='square'):
    augment.augment_batch(wide, jax.random.key(0), rotate_degrees=10.0)


def test_spec_from_config_and_validation():
  assert augment.AugmentSpec.from_config(ml_collections.ConfigDict()) == augment.AugmentSpec()
  spec = augment.AugmentSpec.from_config(
      {'rot90': False, 'crop_scale': [0.6, 1], 'gamma': (0.7, 1.4), 'noise_std': 0.01})
  assert spec.crop_scale == (0.6, 1.0) and not spec.rot90 and spec.hflip
  assert spec.geometric and spec.intensity
  assert hash(spec) == hash(augment.AugmentSpec.from_config(dict(
      rot90=False, crop_scale=(0.6, 1.0), gamma=(0.7, 1.4), noise_std=0.01)))
  for bad in (dict(crop_scale=(0.0, 1.0)), dict(crop_scale=(0.8, 1.2)),
              dict(crop_scale=(0.9, 0.6)), dict(gamma=(0.0, 1.0)), dict(contrast=1.0),
              dict(rotate_degrees=-1.0), dict(blur=2.0), dict(aspect_ratio=(0.0, 1.0)),
              dict(remap=1.5), dict(remap=-0.1)):
    with pytest.raises(ValueError):
      augment.AugmentSpec(**bad)
