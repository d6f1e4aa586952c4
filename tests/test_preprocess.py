"""Host preprocessing (paper), device input normalization and augmentation."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from spp_resnet.data import augment
from spp_resnet.data import preprocess


# ---- preprocess_image ---------------------------------------------------------------------

def _float_reference(image, size, percentiles):
  """The paper's steps in float64/float32, without quantization."""
  x = image[..., 0].astype(np.float64)
  x = (x - x.min()) / (x.max() - x.min())                # linear normalization
  lo, hi = np.percentile(x, percentiles)
  x = np.clip((x - lo) / (hi - lo), 0, 1)                # contrast stretching
  return np.asarray(Image.fromarray(x.astype(np.float32), mode='F').resize(
      (size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize('dtype,percentiles', [(np.uint8, (0, 100)), (np.uint8, (1, 99)),
                                               (np.uint16, (2, 98))])
def test_preprocess_matches_float_reference(dtype, percentiles):
  rng = np.random.default_rng(0)
  high = 255 if dtype == np.uint8 else 4095
  image = rng.integers(0, high, (50, 70, 1)).astype(dtype)
  image[10:20, 10:30] = high  # a bright structure, so the percentiles matter
  out = preprocess.preprocess_image(image, 24, percentiles)
  assert out.shape == (24, 24, 1) and out.dtype == np.uint8
  ref = _float_reference(image, 24, percentiles)
  # Quantization error <= 0.5/255 (plus float32 rounding).
  np.testing.assert_array_less(np.abs(out[..., 0] / 255.0 - ref), 0.5 / 255 + 1e-5)


def test_contrast_stretching_clips_and_fills_range():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (64, 64, 1)).astype(np.uint8)
  out = preprocess.preprocess_image(image, 64, (5, 95))  # same size: no resize
  lo, hi = np.percentile(image, (5, 95))
  assert np.all(out[image < lo] == 0) and np.all(out[image > hi] == 255)
  plain = preprocess.preprocess_image(image, 64, (0, 100))
  np.testing.assert_array_equal(
      plain[..., 0], np.rint((image[..., 0] - image.min()) * 255.0 /
                             (int(image.max()) - int(image.min()))).astype(np.uint8))


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_histogram_percentiles_equal_numpy(dtype):
  rng = np.random.default_rng(2)
  gray = rng.integers(0, 300 if dtype == np.uint16 else 256, (37, 41)).astype(dtype)
  q = (0.0, 1.0, 12.5, 50.0, 99.0, 100.0)
  np.testing.assert_allclose(preprocess._percentiles(gray, q), np.percentile(gray, q))


def test_degenerate_images():
  const = np.full((30, 30, 1), 7, np.uint8)
  assert not preprocess.preprocess_image(const, 8, (1, 99)).any()
  # Mostly background: the 1st and 99th percentiles coincide -> plain min-max.
  sparse = np.zeros((100, 100, 1), np.uint8)
  sparse[0, :5] = 200
  out = preprocess.preprocess_image(sparse, 100, (1, 99))
  assert out.max() == 255 and out.min() == 0
  # HxW and RGB inputs are accepted.
  assert preprocess.preprocess_image(np.zeros((9, 9), np.uint8), 4).shape == (4, 4, 1)
  assert preprocess.preprocess_image(np.zeros((9, 9, 3), np.uint8), 4).shape == (4, 4, 1)
  with pytest.raises(ValueError):
    preprocess.preprocess_image(const, 8, (50, 50))


def test_downsampling_is_antialiased():
  # A one-pixel checkerboard must average out, not alias.
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None]
  board[0, 0] = 0
  out = preprocess.preprocess_image(board, 16, (0, 100)).astype(int)
  assert abs(out.mean() - 127.5) < 3 and out.std() < 4


# ---- to_model_input -----------------------------------------------------------------------

def test_resolve_normalization():
  assert preprocess.resolve_normalization('auto', 'imagenet_keras') == 'caffe'
  assert preprocess.resolve_normalization('auto', 'imagenet_torchvision') == 'imagenet'
  assert preprocess.resolve_normalization('auto', '') == 'none'
  assert preprocess.resolve_normalization('imagenet', 'imagenet_keras') == 'imagenet'
  with pytest.raises(ValueError):
    preprocess.resolve_normalization('auto', 'mystery')
  with pytest.raises(ValueError):
    preprocess.resolve_normalization('zscore')


def test_to_model_input_none_and_gray_replication():
  images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1) * 10
  out = jax.jit(preprocess.to_model_input, static_argnums=1)(images, 'none')
  assert out.shape == (2, 3, 3, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, np.repeat(images / 255.0, 3, axis=-1), rtol=1e-6)


def test_imagenet_matches_torchvision_numbers():
  # torchvision.transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224,
  # 0.225]) on ToTensor() ([0, 1]) images: white -> ((1 - m) / s), black -> -m / s.
  white_black = np.array([255, 0], np.uint8).reshape(2, 1, 1, 1)
  out = np.asarray(preprocess.to_model_input(white_black, 'imagenet'))[:, 0, 0]
  np.testing.assert_allclose(out[0], [2.2489083, 2.4285715, 2.64], rtol=1e-5)
  np.testing.assert_allclose(out[1], [-2.117904, -2.0357141, -1.8044444], rtol=1e-5)
  torch = pytest.importorskip('torch')
  rgb = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
  t = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  expected = ((t - mean) / std).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(preprocess.to_model_input(rgb, 'imagenet'), expected,
                             rtol=1e-5, atol=1e-5)


def test_caffe_matches_keras_formula():
  rgb = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
  out = np.asarray(preprocess.to_model_input(rgb, 'caffe'))
  x = rgb.astype(np.float64)
  expected = np.stack([x[..., 2] - 103.939, x[..., 1] - 116.779, x[..., 0] - 123.68], -1)
  np.testing.assert_allclose(out, expected, atol=1e-3)
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  try:
    from keras.applications import resnet50  # pylint: disable=g-import-not-at-top
  except Exception:  # pylint: disable=broad-except  # keras absent or unusable backend
    return
  np.testing.assert_allclose(
      out, np.asarray(resnet50.preprocess_input(rgb.astype(np.float32))), atol=1e-3)


# ---- augment_batch ------------------------------------------------------------------------

def _dihedral_transforms(image):
  """The 8 distinct D4 transforms of an HxW[xC] square image."""
  return [np.rot90(im, k) for im in (image, image[:, ::-1]) for k in range(4)]


def _which(out, image):
  variants = _dihedral_transforms(image)
  matches = [k for k, v in enumerate(variants) if np.array_equal(out, v)]
  assert matches, 'output is not a dihedral transform of the input'
  return matches[0]


@pytest.mark.parametrize('rot90,hflip,vflip,allowed', [
    (True, True, True, 8), (True, False, False, 4), (False, True, False, 2),
    (False, True, True, 4), (True, True, False, 8)])
def test_augment_dihedral_uniform(rot90, hflip, vflip, allowed):
  image = np.arange(5 * 5 * 2, dtype=np.uint8).reshape(5, 5, 2)
  batch = np.broadcast_to(image, (512, 5, 5, 2))
  fn = jax.jit(lambda x, k: augment.augment_batch(x, k, rot90=rot90, hflip=hflip,
                                                  vflip=vflip))
  out = np.asarray(fn(batch, jax.random.key(3)))
  assert out.shape == batch.shape and out.dtype == batch.dtype
  counts = np.bincount([_which(o, image) for o in out], minlength=8)
  seen = counts[counts > 0]
  assert len(seen) == allowed
  expected = len(batch) / allowed  # chi-square-ish bound: 5 sigma
  assert np.all(np.abs(seen - expected) < 5 * np.sqrt(expected))
  # Deterministic for a given key, different for another.
  np.testing.assert_array_equal(out, fn(batch, jax.random.key(3)))
  assert not np.array_equal(out, fn(batch, jax.random.key(4)))


def test_augment_identity_and_errors():
  x = np.random.default_rng(0).random((3, 4, 6, 1)).astype(np.float32)
  out = augment.augment_batch(x, jax.random.key(0), rot90=False, hflip=False, vflip=False)
  np.testing.assert_array_equal(out, x)
  flipped = augment.augment_batch(x, jax.random.key(0), rot90=False, hflip=True, vflip=True)
  assert flipped.shape == x.shape  # flips are fine on non-square images
  with pytest.raises(ValueError, match='square'):
    augment.augment_batch(x, jax.random.key(0), rot90=True)


def test_augment_table_matches_definition():
  image = np.arange(16).reshape(4, 4)
  table = augment._lookup_table()
  for k in range(4):
    for h in (0, 1):
      for v in (0, 1):
        ref = augment._apply_reference(image, k, bool(h), bool(v))
        np.testing.assert_array_equal(augment._canonical(*table[k * 4 + h * 2 + v], image),
                                      ref)


def test_foreground_square_frames_the_head_and_ignores_burnt_in_labels():
  from spp_resnet.data.preprocess import foreground_square
  yy, xx = np.mgrid[:200, :300]
  head = ((yy - 90) ** 2 + (xx - 200) ** 2 <= 40 ** 2).astype(np.float32)  # 81 px wide
  image = head.copy()
  image[2:5, 2:5] = 1.0  # a scanner label in the corner: 9 pixels
  crop = foreground_square(image, margin=0.05)
  assert crop.shape[0] == crop.shape[1] and 81 <= crop.shape[0] <= 81 * 1.1 + 2
  assert crop.sum() == head.sum()  # the whole head, and nothing of the label
  # centred: the same head mass on each side
  half = crop.shape[0] // 2
  assert abs(crop[:, :half].sum() - crop[:, -half:].sum()) <= 0.02 * head.sum()
  # A head that reaches the border is zero-padded to a square, never cut.
  edge = np.zeros((100, 100), np.float32)
  edge[:, :60] = 1.0
  crop = foreground_square(edge, margin=0.0)
  assert crop.shape[0] == crop.shape[1] and crop.sum() == edge.sum()
  # Nearly empty images are left alone.
  empty = np.zeros((50, 50), np.float32)
  empty[0, 0] = 1.0
  assert foreground_square(empty) is empty


SLICES = (Path(__file__).resolve().parents[2] / 'shared' / 'data' /
          'bohaju_brain_tumor_sample' / 'Brain Tumor' / 'Brain Tumor')


def _real_slice(name='Image1.jpg'):
  path = SLICES / name
  if not path.is_file():
    pytest.skip('../shared/data not available')
  with Image.open(path) as image:
    return np.asarray(image.convert('L')).astype(np.float32)


def test_equalize_foreground_ranks_the_head_and_ignores_its_contrast():
  window = _real_slice() / 255.0  # a BraTS slice, already in [0, 1]
  head = window > 0.1
  out = preprocess.equalize_foreground(window)
  assert np.all(out[~head] == 0) and np.all((out[head] > 0) & (out[head] < 1))
  # Equalized: the head's intensities are spread evenly over (0, 1).
  np.testing.assert_allclose(np.quantile(out[head], [0.25, 0.5, 0.75]),
                             [0.25, 0.5, 0.75], atol=0.02)
  # Order preserved: a brighter pixel never ends up darker.
  order = np.argsort(window[head], kind='stable')
  assert np.all(np.diff(out[head][order]) >= 0)
  # Any increasing change of the head's intensities that keeps its outline (here a
  # gamma of 2 and of 1/2 above the threshold) gives the same image.
  for gamma in (2.0, 0.5):
    changed = np.where(head, 0.1 + 0.9 * ((window - 0.1) / 0.9) ** gamma, window)
    np.testing.assert_allclose(preprocess.equalize_foreground(changed), out, atol=1e-6)
  # Nearly empty images are left alone.
  empty = np.zeros((50, 50), np.float32)
  empty[0, 0] = 1.0
  assert preprocess.equalize_foreground(empty) is empty


def test_equalize_in_preprocessing_shrinks_a_contrast_change():
  """The whole host preprocessing of a real slice and of the same slice with its
  contrast changed (gamma 2 on the raw intensities): equalizing halves the difference.
  Not to zero: pixels near the foreground threshold change sides."""
  raw = _real_slice('Image12.jpg')
  changed = 255.0 * (raw / 255.0) ** 2
  def difference(**options):
    a, b = (preprocess.preprocess_image(x, 64, (1, 99), crop_foreground=True, **options)
            for x in (raw, changed))
    return np.abs(a.astype(np.float32) - b).mean()
  assert difference(equalize=True) < 0.6 * difference()
  # The Preprocessor a run builds from its config equalizes when data.equalize is set,
  # and not for configs saved before the field existed.
  from configs import default  # pylint: disable=g-import-not-at-top
  data = default.get_config().data
  assert not preprocess.Preprocessor.from_config(data).equalize
  data.equalize = True
  prep = preprocess.Preprocessor.from_config(data)
  assert prep.equalize
  np.testing.assert_array_equal(
      prep(raw), preprocess.preprocess_image(raw, data.image_size, data.contrast_percentiles,
                                             equalize=True))
  del data['equalize']
  assert not preprocess.Preprocessor.from_config(data).equalize


def test_crop_foreground_makes_a_small_head_fill_the_frame():
  yy, xx = np.mgrid[:240, :240]
  small = (((yy - 120) ** 2 + (xx - 120) ** 2) <= 30 ** 2) * 200
  plain = preprocess.preprocess_image(small.astype(np.uint8), 32)
  cropped = preprocess.preprocess_image(small.astype(np.uint8), 32, crop_foreground=True)
  assert (plain > 127).mean() < 0.06  # the head covers ~5% of the frame
  assert (cropped > 127).mean() > 0.6  # ~ pi / 4 / 1.1^2 of the frame


def test_strip_rim_removes_the_skull_ring_and_keeps_the_brain():
  """A synthetic head: a brain disk (0.4) inside a bright scalp ring (1.0) 6 px thick,
  radius 60 in all. A band of 0.15 x 60 = 9 px removes the ring, keeps the brain, and
  follows the head's outline, not the frame: an off-centre head loses the same band."""
  yy, xx = np.mgrid[:200, :200]
  for cy, cx in ((100, 100), (70, 120)):
    r = np.hypot(yy - cy, xx - cx)
    head = np.where(r <= 54, 0.4, np.where(r <= 60, 1.0, 0.0)).astype(np.float32)
    head[cy, cx] = 0.0  # a dark hole (a ventricle) is not background
    out = preprocess.strip_rim(head, 0.15)
    assert out.dtype == head.dtype
    assert out.max() == pytest.approx(0.4)  # no ring pixel left
    np.testing.assert_array_equal(out[r <= 50], head[r <= 50])
    assert not out[r > 52].any()
  # Almost nothing to strip: left alone; 0 = off in the whole preprocessing.
  empty = np.zeros((50, 50), np.float32)
  empty[0, 0] = 1.0
  assert preprocess.strip_rim(empty, 0.1) is empty
  raw = _real_slice('Image12.jpg')
  np.testing.assert_array_equal(preprocess.preprocess_image(raw, 64, rim=0.0),
                                preprocess.preprocess_image(raw, 64))


def test_strip_rim_in_preprocessing_of_a_real_slice():
  """A real Bohaju slice through the run's Preprocessor: the stripped head is cropped
  again to fill the frame, and configs saved before the field existed do not strip."""
  from configs import default  # pylint: disable=g-import-not-at-top
  raw = _real_slice('Image12.jpg')
  data = default.get_config().data
  data.image_size, data.crop_foreground = 64, True
  assert preprocess.Preprocessor.from_config(data).strip_rim == 0.0
  plain = preprocess.Preprocessor.from_config(data)(raw)
  data.strip_rim = 0.2
  prep = preprocess.Preprocessor.from_config(data)
  stripped = prep(raw)
  np.testing.assert_array_equal(
      stripped, preprocess.preprocess_image(raw, 64, data.contrast_percentiles,
                                            crop_foreground=True, rim=0.2))
  assert stripped.shape == plain.shape == (64, 64, 1)
  assert not np.array_equal(stripped, plain)
  # Cropped after stripping: the smaller head still reaches the frame's edges.
  rows = np.nonzero((stripped[..., 0] > 25).any(axis=1))[0]
  assert rows[0] <= 6 and rows[-1] >= 57
  del data['strip_rim']
  assert preprocess.Preprocessor.from_config(data).strip_rim == 0.0
