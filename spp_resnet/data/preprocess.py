"""The paper's image preprocessing (host, numpy) and the per-weights input normalization
(device, JAX).

Host side, once per image (`preprocess_image`), in the paper's order:
  1. linear intensity normalization to [0, 1] (min-max over the image);
  2. contrast stretching: the `contrast_percentiles` (lo, hi) of the image map to 0 and 1,
     values outside are clipped ((0, 100) = no stretching, i.e. step 1 alone);
  3. resize to S x S (PIL, float mode, antialiased bilinear filter);
  4. quantization to uint8.
Steps 1 and 2 are both affine maps followed by a clip, so they are applied as one. Three
options, not in the paper, come between 2 and 3, in this order: removing the outer band
of the head (`strip_rim`, a crude skull strip), cropping to the square around the head
(`foreground_square`) and equalizing the head's histogram (`equalize_foreground`).
Quantizing to uint8 makes the in-memory cache and the host->device transfer 4x smaller
than float32; the error it adds is at most 0.5/255 (< 1/255) of the [0, 1] range, below
the JPEG quantization noise already in the sources and far below what the network
resolves (the weights were trained on 8-bit photographs).

Device side, inside jit (`to_model_input`): uint8 [B,S,S,1] -> float32 [B,S,S,3] in the
value convention the pretrained weights expect (`weights.sources.NORMALIZATIONS`, the one
table of them). The host thus ships uint8 only.
"""

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

from spp_resnet.weights import sources

NORMALIZATIONS = tuple(sources.NORMALIZATIONS)  # ('none', 'imagenet', 'caffe')


def resolve_normalization(normalization: str, pretrained_source: str = '') -> str:
  """'auto' -> the normalization the pretrained weights were trained with."""
  if normalization == 'auto':
    if pretrained_source == 'ssl':
      # Self-supervised backbones are pretrained from scratch on this project's input
      # ('auto' there is 'none'); training.ssl.load_ssl_backbone checks it.
      return 'none'
    try:
      return sources.normalization_for_source('' if pretrained_source == 'none'
                                              else pretrained_source)
    except ValueError as e:
      raise ValueError(f'normalization="auto": {e}. Or set data.normalization '
                       'explicitly.') from None
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'Unknown normalization {normalization!r}; expected "auto" or one '
                     f'of {NORMALIZATIONS}.')
  return normalization


def _to_gray(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3:
    if image.shape[-1] == 1:
      return image[..., 0]
    if image.shape[-1] in (3, 4):  # tolerate RGB(A) input: luminance-free mean of RGB
      return image[..., :3].astype(np.float32).mean(axis=-1)
  if image.ndim != 2:
    raise ValueError(f'Expected an HxW or HxWx1 image, got shape {image.shape}.')
  return image


def _percentiles(gray: np.ndarray, q: Sequence[float]) -> np.ndarray:
  """np.percentile(gray, q) (linear interpolation), via a histogram for 8/16-bit ints."""
  if gray.dtype in (np.uint8, np.uint16):
    counts = np.bincount(gray.ravel(), minlength=1)
    cdf = np.cumsum(counts)
    n = cdf[-1]
    out = []
    for p in q:
      pos = p / 100.0 * (n - 1)
      lo_rank = int(np.floor(pos))
      hi_rank = min(lo_rank + 1, n - 1)
      # Value of the k-th order statistic (0-based) = first v with cdf[v] > k.
      lo_val, hi_val = np.searchsorted(cdf, [lo_rank, hi_rank], side='right')
      out.append(lo_val + (pos - lo_rank) * (hi_val - lo_val))
    return np.asarray(out, np.float64)
  return np.percentile(gray, q).astype(np.float64)


def intensity_window(image: np.ndarray,
                     contrast_percentiles: Sequence[float] = (0.0, 100.0)
                    ) -> tuple[float, float]:
  """(lo, hi) raw intensities that map to 0 and 1 (normalization + contrast stretching)."""
  gray = _to_gray(image)
  p_lo, p_hi = (float(p) for p in contrast_percentiles)
  if not 0.0 <= p_lo < p_hi <= 100.0:
    raise ValueError(f'contrast_percentiles must satisfy 0 <= lo < hi <= 100, got '
                     f'{tuple(contrast_percentiles)}.')
  vmin, vmax = float(gray.min()), float(gray.max())
  if (p_lo, p_hi) == (0.0, 100.0):
    lo, hi = vmin, vmax
  else:
    lo, hi = _percentiles(gray, (p_lo, p_hi))
    if hi <= lo:  # e.g. a mostly constant image: fall back to plain min-max
      lo, hi = vmin, vmax
  return float(lo), float(hi)


def foreground_square(x: np.ndarray, threshold: float = 0.1,
                      margin: float = 0.05) -> np.ndarray:
  """The smallest square around the head in `x` ([0, 1] intensities), zero-padded.

  Foreground: pixels above `threshold`; its extent is taken between the 0.5th and
  99.5th percentiles of their coordinates, so burnt-in labels and stray bright pixels
  do not widen it. `margin`: a fraction of the side added on every edge. An image with
  almost no foreground (< 1%) is returned unchanged.
  """
  ys, xs = np.nonzero(x > threshold)
  if len(ys) < 0.01 * x.size:
    return x
  (y0, y1), (x0, x1) = (np.percentile(c, (0.5, 99.5)) for c in (ys, xs))
  side = max(y1 - y0, x1 - x0) * (1.0 + 2.0 * margin) + 1.0
  top, left = (int(round((a + b - side) / 2.0)) for a, b in ((y0, y1), (x0, x1)))
  side = int(round(side))
  pad = max(0, -top, -left, top + side - x.shape[0], left + side - x.shape[1])
  x = np.pad(x, pad) if pad else x
  return x[top + pad:top + pad + side, left + pad:left + pad + side]


def strip_rim(x: np.ndarray, fraction: float, threshold: float = 0.1) -> np.ndarray:
  """`x` ([0, 1] intensities) with the outer band of the head set to 0: a crude skull
  strip.

  Head: the pixels above `threshold`, holes filled. Kept: head pixels farther than
  `fraction` x the head's equivalent radius (sqrt(area / pi)) from the background, so
  the band follows the head's own outline. Why: some sources publish skull-stripped
  slices (Bohaju's, from BraTS), others whole heads (Bhuvaji's), and a model trained on
  one takes the other's bright scalp and skull ring for what it learned tumors look
  like. An image with almost no head (< 1%) is returned unchanged.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top  # a jax dependency
  head = ndimage.binary_fill_holes(x > threshold)
  area = int(head.sum())
  if area < 0.01 * x.size:
    return x
  depth = ndimage.distance_transform_edt(head)
  return np.where(depth > fraction * np.sqrt(area / np.pi), x, np.float32(0.0)).astype(x.dtype)


def equalize_foreground(x: np.ndarray, threshold: float = 0.1) -> np.ndarray:
  """Histogram equalization of the head in `x` ([0, 1] intensities): each pixel above
  `threshold` becomes its mid-rank among them, divided by their number (in (0, 1)); the
  background becomes 0.

  The result depends only on the order of the head's intensities, so an increasing
  change of them (a gamma, a window) that keeps the same pixels above `threshold` gives
  the same image: MRI intensities have no absolute scale, and sources differ in such
  changes. An image with almost no foreground (< 1%) is returned unchanged. Measured on
  transfer between sources it hurt (docs/results.md, "Histogram equalization").
  """
  mask = x > threshold
  values = x[mask]
  if len(values) < 0.01 * x.size:
    return x
  ordered = np.sort(values)
  # Mid-rank: ties (flat regions, 8-bit sources) share the mean of their ranks.
  below = np.searchsorted(ordered, values, side='left')
  upto = np.searchsorted(ordered, values, side='right')
  out = np.zeros_like(x)
  out[mask] = (below + upto) * np.float32(0.5 / len(values))
  return out


def preprocess_image(image: np.ndarray, image_size: int,
                     contrast_percentiles: Sequence[float] = (0.0, 100.0),
                     crop_foreground: bool = False,
                     equalize: bool = False, rim: float = 0.0) -> np.ndarray:
  """HxW[x1] uint8/uint16 (any real dtype) image -> uint8 [S, S, 1]; see module docstring.

  `rim` > 0: first remove the outer band of the head, that fraction of its radius deep
  (`strip_rim`), so whole heads look like skull-stripped slices.
  `crop_foreground`: crop to the square around the head (`foreground_square`), so
  that a brain fills the frame whatever the field of view and border of its source.
  `equalize`: then equalize the head's histogram (`equalize_foreground`), so that its
  intensities do not depend on the source's contrast and brightness.
  """
  gray = _to_gray(image)
  lo, hi = intensity_window(gray, contrast_percentiles)
  x = gray.astype(np.float32)
  if hi > lo:
    x = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(x, 0.0, 1.0, out=x)
  else:  # constant image
    x = np.zeros_like(x)
  if rim:
    x = strip_rim(x, rim)
  if crop_foreground:
    x = np.ascontiguousarray(foreground_square(x))
  if equalize:
    x = equalize_foreground(x)
  if x.shape != (image_size, image_size):
    # PIL's BILINEAR widens its kernel when downsampling (antialiasing) and never
    # overshoots, so the result stays in [0, 1].
    x = np.asarray(Image.fromarray(x, mode='F').resize(
        (image_size, image_size), Image.Resampling.BILINEAR))
  out = np.rint(x * np.float32(255.0))
  np.clip(out, 0, 255, out=out)
  return out.astype(np.uint8)[..., None]


@dataclasses.dataclass(frozen=True)
class Preprocessor:
  """record -> uint8 [S,S,1] (picklable, for grain worker processes)."""
  image_size: int
  contrast_percentiles: tuple[float, float]
  crop_foreground: bool = False
  equalize: bool = False
  strip_rim: float = 0.0

  @classmethod
  def from_config(cls, data_config) -> 'Preprocessor':
    """The preprocessing of `config.data` (runs saved before a field existed: its default)."""
    return cls(int(data_config.image_size),
               tuple(float(p) for p in data_config.contrast_percentiles),
               bool(data_config.get('crop_foreground', False)),
               bool(data_config.get('equalize', False)),
               float(data_config.get('strip_rim', 0.0)))

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return preprocess_image(image, self.image_size, self.contrast_percentiles,
                            self.crop_foreground, self.equalize, self.strip_rim)


def to_model_input(images, normalization: str):
  """uint8 (or [0,1] float) images [B,H,W,1|3] -> float32 [B,H,W,3] for the network.

  Runs under jit. Scales to [0, 1] RGB, then applies `sources.NORMALIZATIONS[
  normalization]`: 'none': unchanged; 'imagenet': torchvision's (x - mean) / std;
  'caffe': keras.applications.resnet50.preprocess_input, i.e. [0, 255], RGB -> BGR, minus
  the ImageNet BGR mean, no scaling. Grayscale inputs are replicated to three channels; a
  3-channel input is taken as RGB.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  # host workers skip JAX
  convention = sources.NORMALIZATIONS.get(normalization)
  if convention is None:
    raise ValueError(f'Unknown normalization {normalization!r} (resolve "auto" with '
                     f'resolve_normalization first); expected one of {NORMALIZATIONS}.')
  images = jnp.asarray(images)
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = images.astype(jnp.float32) * (1.0 / 255.0)
  else:
    x = images.astype(jnp.float32)
  channels = x.shape[-1]
  if channels == 1:
    x = jnp.broadcast_to(x, x.shape[:-1] + (3,))
  elif channels != 3:
    raise ValueError(f'Expected 1 or 3 channels, got shape {images.shape}.')
  return convention.apply(x)
