"""Device-side data augmentation (JAX, inside the jitted train step).

Two families of per-example random transforms of a batch [B,H,W,C]:

D4 (the paper's, on by default). The paper augments by rotation and flipping; for axial
MRI slices the lossless choices are the 8 symmetries of the square (the dihedral group
D4): rotation by a random multiple of 90 degrees and random horizontal / vertical flips.
No interpolation, no new pixels. Every element of D4 is "transpose or not, then flip rows
or not, then flip columns or not", so each example needs at most one transpose and two
reversals, chosen per example with `jnp.where` (XLA fuses these into one elementwise
pass; no 8 materialised copies, no Python loop over the batch). Sampling rotation k in
{0..3} and the two flips independently and uniformly gives the uniform distribution over
the group they generate (each group element is hit by the same number of (k, h, v)
combinations).

Stronger, lossy ops (all off by default; for generalization across scanners/sites):
  geometric  random resized crop (area fraction uniform in `crop_scale`, aspect ratio
             log-uniform in `aspect_ratio`, each side capped at the full image, position
             uniform inside the image), rotation uniform in +-`rotate_degrees` and
             translation uniform in +-`translate` of W and H, about the image centre.
  intensity  on the [0, 1] range, in this order: a 3x3 binomial blur mixed in with a
             weight uniform in [0, `blur`]; a random tissue-contrast curve mixed in
             with a weight uniform in [0, `remap`] (below); contrast (scale by
             U[1-c, 1+c] around the mean m of the source image); brightness (add
             U[-b, b]); clip; gamma (x ** g, g log-uniform in `gamma`; g > 1 darkens
             mid-tones); gaussian noise with a per-example std uniform in [0,
             `noise_std`]; clip to [0, 1]. Before the clips, an image's mean moves from
             m to m + b and its spread scales by c.
The tissue-contrast curve (`remap`) is for generalizing from one MRI source to another:
the same anatomy has a different intensity order in T1, T1-contrast, T2 and FLAIR, and
across scanners. Per example, a piecewise-linear curve through (0, 0) and `_REMAP_KNOTS`
knots at x = 1/K, ..., 1 with heights uniform in [0, 1] (not sorted: it may swap which
tissue is brighter), mixed with the identity, x + w (curve(x) - x). Black stays black (the
background, the zero padding); a model can then no longer rely on absolute or relative
tissue brightness and must use shape and texture. It is the random-intensity-transform
family of single-source domain generalization for medical images (Bezier-curve remapping
in Models Genesis, Zhou et al. 2019; GIN, Ouyang et al. 2021), here as one cheap
pointwise op. Its draws come from their own key, so turning it on leaves every other
op's draws unchanged. Measured once (docs/results.md, CPU, 64 px, remap=1.0): it cut the
recipe's ROC AUC on an unseen source from 0.86 to 0.52, so it is off everywhere.
The geometric ops and the D4 symmetry of an example are composed into ONE 2x2 matrix and
offset that map output pixel centres to source positions, so each image is resampled
exactly once: bilinear, zero outside the image (MRI background is black). The resampler
is a hand-written 4-neighbour gather (gathers the input dtype, vmapped over the batch);
on CPU it measured as fast as or slightly faster than `jax.scipy.ndimage.
map_coordinates(order=1, mode='constant')`, which gives the same values. The D4 part is
a signed permutation of centred pixel coordinates, so composing it changes nothing but
float rounding of the sample positions: the result equals resampling, then applying D4.
With intensity ops but no geometric op, D4 still goes through the warp (then a bit-exact
pixel permutation): XLA on CPU fuses float ops that follow the `jnp.where` transposes
into scalar code, measured 5-15x slower than after the gather. Blur and the contrast
pivot are computed on the source image, before the warp, where they are cheap (after
it, XLA fuses the warp into the stencil / reduction and recomputes it); a symmetric blur
commutes with D4 and a zoom simply enlarges it. The pointwise intensity ops come after
the warp, so the zero padding gets the same contrast, brightness and noise as the
image's own black background.

Output contract. With only D4 on (the default config) the output has the input's dtype
and is bit-for-bit what D4 alone always gave (uint8 in, uint8 out: 4x fewer bytes than
float32). With any geometric or intensity op on the output is float32 in [0, 1]: integer
inputs are divided by 255, float inputs are taken as [0, 1] -- the same convention as
`preprocess.to_model_input`, which accepts both. Random draws: the D4 part uses `rng`
exactly as before (so it is unchanged by the new options); every other op draws from its
own key derived from `rng`, independent of which other ops are on. Deterministic given
`rng`; static shapes, so one compilation per batch shape and spec.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Folded into `rng` for the non-D4 ops; far from the small counters that `split` uses.
_AUX_SALT = 0x61756721
_REMAP_SALT = 0x72656d70  # the tissue-contrast curve's own draws
_REMAP_KNOTS = 4  # knots of the curve besides (0, 0), evenly spaced in (0, 1]
# All per-example parameters come from one uniform draw [B, _NUM_PARAMS] (one threefry
# call: much less to compile than one call each), one column per parameter by fixed
# index, so switching one op on or off leaves the draws of the others unchanged.
(_P_SCALE, _P_ASPECT, _P_POS_X, _P_POS_Y, _P_SHIFT_X, _P_SHIFT_Y, _P_ANGLE, _P_BLUR,
 _P_BRIGHT, _P_CONTRAST, _P_GAMMA, _P_NOISE_STD, _NUM_PARAMS) = range(13)


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


def _pair(value, name: str) -> tuple[float, float]:
  lo, hi = (float(v) for v in value)
  if not lo <= hi:
    raise ValueError(f'augment.{name} must be (low, high) with low <= high, got {value}.')
  return lo, hi


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """All augmentation options; hashable, so usable as a static jit argument.

  The defaults are the paper's D4 augmentation with every new op off. Ranges are
  (low, high) pairs; a degenerate pair such as (1.0, 1.0) means off.
  """
  rot90: bool = True   # rotation by a random multiple of 90 degrees (square images)
  hflip: bool = True
  vflip: bool = True
  crop_scale: tuple[float, float] = (1.0, 1.0)    # crop area fraction, e.g. (0.6, 1.0)
  aspect_ratio: tuple[float, float] = (1.0, 1.0)  # crop width/height, e.g. (3/4, 4/3)
  rotate_degrees: float = 0.0  # uniform in [-deg, deg], e.g. 15
  translate: float = 0.0       # fraction of H and W, uniform in [-t, t], e.g. 0.1
  brightness: float = 0.0      # added, uniform in [-b, b] (fraction of [0, 1]), e.g. 0.1
  contrast: float = 0.0        # factor uniform in [1-c, 1+c] around the mean, e.g. 0.2
  gamma: tuple[float, float] = (1.0, 1.0)  # log-uniform exponent, e.g. (0.7, 1.4)
  noise_std: float = 0.0       # per-example std uniform in [0, s] (of [0, 1]), e.g. 0.03
  blur: float = 0.0            # max weight of a 3x3 binomial blur, in [0, 1], e.g. 0.5
  remap: float = 0.0           # max weight of a random tissue-contrast curve, in [0, 1]

  def __post_init__(self):
    for name in ('rot90', 'hflip', 'vflip'):
      object.__setattr__(self, name, bool(getattr(self, name)))
    for name in ('crop_scale', 'aspect_ratio', 'gamma'):
      object.__setattr__(self, name, _pair(getattr(self, name), name))
    for name in ('rotate_degrees', 'translate', 'brightness', 'contrast', 'noise_std',
                 'blur', 'remap'):
      value = float(getattr(self, name))
      if not value >= 0:
        raise ValueError(f'augment.{name} must be >= 0, got {value}.')
      object.__setattr__(self, name, value)
    if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
      raise ValueError(f'augment.crop_scale must satisfy 0 < low <= high <= 1, got '
                       f'{self.crop_scale}.')
    if not self.aspect_ratio[0] > 0:
      raise ValueError(f'augment.aspect_ratio must be > 0, got {self.aspect_ratio}.')
    if not self.gamma[0] > 0:
      raise ValueError(f'augment.gamma must be > 0, got {self.gamma}.')
    if self.contrast >= 1:
      raise ValueError(f'augment.contrast must be < 1 (factor 1 +- c), got {self.contrast}.')
    if self.blur > 1:
      raise ValueError(f'augment.blur is a mixing weight in [0, 1], got {self.blur}.')
    if self.remap > 1:
      raise ValueError(f'augment.remap is a mixing weight in [0, 1], got {self.remap}.')

  @classmethod
  def from_config(cls, cfg: Any) -> 'AugmentSpec':
    """From `config.data.augment` (a ConfigDict or dict); missing fields get defaults."""
    cfg = {} if cfg is None else cfg
    return cls(**{f.name: cfg.get(f.name, f.default) for f in dataclasses.fields(cls)})

  @property
  def geometric(self) -> bool:
    return (self.crop_scale != (1.0, 1.0) or self.aspect_ratio != (1.0, 1.0)
            or self.rotate_degrees > 0 or self.translate > 0)

  @property
  def intensity(self) -> bool:
    return (self.brightness > 0 or self.contrast > 0 or self.gamma != (1.0, 1.0)
            or self.noise_std > 0 or self.blur > 0 or self.remap > 0)

  @property
  def dihedral(self) -> bool:
    return self.rot90 or self.hflip or self.vflip

  def __call__(self, images: jax.Array, rng: jax.Array) -> jax.Array:
    return _augment(images, rng, self)


def augment_batch(images: jax.Array, rng: jax.Array, *, rot90: bool = True,
                  hflip: bool = True, vflip: bool = True,
                  crop_scale: tuple[float, float] = (1.0, 1.0),
                  aspect_ratio: tuple[float, float] = (1.0, 1.0),
                  rotate_degrees: float = 0.0, translate: float = 0.0,
                  brightness: float = 0.0, contrast: float = 0.0,
                  gamma: tuple[float, float] = (1.0, 1.0), noise_std: float = 0.0,
                  blur: float = 0.0, remap: float = 0.0) -> jax.Array:
  """Random per-example augmentation of images [B,H,W,C]; see the module docstring.

  Only D4 on (the default): same shape and dtype out (works on uint8 before
  `to_model_input`, 4x less memory traffic than float32), identical to the paper's D4
  augmentation; all switches off is the identity. Any geometric or intensity op on:
  float32 in [0, 1] out (uint8 in is divided by 255; float in is taken as [0, 1]).
  Deterministic given `rng`. rot90 needs square images (H == W).
  """
  spec = AugmentSpec(rot90=rot90, hflip=hflip, vflip=vflip, crop_scale=crop_scale,
                     aspect_ratio=aspect_ratio, rotate_degrees=rotate_degrees,
                     translate=translate, brightness=brightness, contrast=contrast,
                     gamma=gamma, noise_std=noise_std, blur=blur, remap=remap)
  return _augment(images, rng, spec)


def _augment(images: jax.Array, rng: jax.Array, spec: AugmentSpec) -> jax.Array:
  if images.ndim != 4:
    raise ValueError(f'augment_batch expects [B,H,W,C] images, got shape {images.shape}.')
  batch, height, width, _ = images.shape
  if spec.rot90 and height != width:
    raise ValueError(
        f'augment rot90=True needs square images, got H={height}, W={width}; '
        'disable data.augment.rot90 or resize to a square.')
  ops = _dihedral_ops(rng, batch, spec) if spec.dihedral else None
  if not (spec.geometric or spec.intensity):
    return images if ops is None else _apply_dihedral(images, ops, spec)
  param_key, noise_key = jax.random.split(jax.random.fold_in(rng, _AUX_SALT))
  params = _Params(jax.random.uniform(param_key, (batch, _NUM_PARAMS), jnp.float32))
  scale = 1.0 / 255.0 if jnp.issubdtype(images.dtype, jnp.integer) else 1.0
  x = images
  # Source-side ops, before the warp: cheap on the materialised input, whereas after it
  # XLA would fuse the warp into the reduction / stencil and recompute it.
  mean = None
  if spec.contrast > 0:  # pivot: the mean of the source image
    mean = _image_mean(x) * scale
  if spec.blur > 0:  # a symmetric kernel commutes with D4; a zoom enlarges it
    x = x.astype(jnp.float32)
    x = x + params.between(_P_BLUR, 0.0, spec.blur)[:, None, None, None] * (
        _binomial_blur(x) - x)
  if spec.geometric or ops is not None:
    # D4 as part of the warp even without geometric ops: on CPU, XLA fuses the float ops
    # that follow into the D4 transposes as scalar code (measured 5-15x slower), while
    # the gather stays vectorised. A signed permutation of pixel centres: exact.
    if spec.geometric:
      matrix, offset = _sample_affine(params, height, width, spec)
    else:
      matrix = jnp.broadcast_to(jnp.eye(2, dtype=jnp.float32), (batch, 2, 2))
      offset = jnp.broadcast_to(jnp.asarray([(width - 1) / 2, (height - 1) / 2],
                                            jnp.float32), (batch, 2))
    if ops is not None:  # D4 on the output coordinates: no extra pass
      # matrix @ D, spelled out: a dot may run at reduced precision on accelerators.
      matrix = jnp.sum(matrix[:, :, :, None] * _dihedral_matrices(ops)[:, None], axis=2)
    x = resample(x, matrix, offset)
  x = x.astype(jnp.float32) * scale
  if spec.intensity:
    x = _intensity(x, mean, params, noise_key, spec,
                   jax.random.fold_in(rng, _REMAP_SALT) if spec.remap > 0 else None)
  return x


def _image_mean(images: jax.Array) -> jax.Array:
  """[B,1,1,1] float32 mean of each image (integer sums are exact and vectorise well)."""
  count = np.prod(images.shape[1:])
  if jnp.issubdtype(images.dtype, jnp.integer):
    return jnp.sum(images, axis=(1, 2, 3), keepdims=True, dtype=jnp.int32) / count
  return jnp.mean(images, axis=(1, 2, 3), keepdims=True, dtype=jnp.float32)


# ---- D4 ------------------------------------------------------------------------------

def _dihedral_ops(rng: jax.Array, batch: int, spec: AugmentSpec) -> jax.Array:
  """[B, 3] bool (transpose, flip_rows, flip_cols); the paper path's exact RNG use."""
  k_rng, h_rng, v_rng = jax.random.split(rng, 3)
  zeros = jnp.zeros((batch,), jnp.int32)
  k = jax.random.randint(k_rng, (batch,), 0, 4) if spec.rot90 else zeros
  h = jax.random.bernoulli(h_rng, 0.5, (batch,)).astype(jnp.int32) if spec.hflip else zeros
  v = jax.random.bernoulli(v_rng, 0.5, (batch,)).astype(jnp.int32) if spec.vflip else zeros
  return jnp.asarray(_lookup_table())[k * 4 + h * 2 + v]


def _apply_dihedral(images: jax.Array, ops: jax.Array, spec: AugmentSpec) -> jax.Array:
  def select(flag, transformed, x):
    return jnp.where(flag[:, None, None, None], transformed, x)

  x = images
  if spec.rot90:  # transposes only occur in the odd rotations
    x = select(ops[:, 0], jnp.swapaxes(x, 1, 2), x)
  if spec.rot90 or spec.vflip:
    x = select(ops[:, 1], x[:, ::-1], x)
  if spec.rot90 or spec.hflip:
    x = select(ops[:, 2], x[:, :, ::-1], x)
  return x


def _dihedral_matrices(ops: jax.Array) -> jax.Array:
  """[B, 2, 2]: centred output (col, row) -> the (col, row) that `_apply_dihedral` reads.

  Output pixel (i, j) after transpose t, flip_rows r, flip_cols c reads the input at
  (r ? -i : i, c ? -j : j) in centred coordinates, swapped if t.
  """
  t = ops[:, 0][:, None, None]
  sr = jnp.where(ops[:, 1], -1.0, 1.0)
  sc = jnp.where(ops[:, 2], -1.0, 1.0)
  zero = jnp.zeros_like(sr)
  plain = jnp.stack([jnp.stack([sc, zero], -1), jnp.stack([zero, sr], -1)], -2)
  swapped = jnp.stack([jnp.stack([zero, sr], -1), jnp.stack([sc, zero], -1)], -2)
  return jnp.where(t, swapped, plain)


# ---- Geometry ------------------------------------------------------------------------

class _Params:
  """Per-example uniform [0, 1) draws [B, _NUM_PARAMS], mapped to ranges on demand."""

  def __init__(self, draws: jax.Array):
    self._draws = draws

  def between(self, index: int, lo: float, hi: float) -> jax.Array:
    """[B] uniform in [lo, hi) (exactly lo when lo == hi)."""
    return lo + (hi - lo) * self._draws[:, index]


def _sample_affine(params: _Params, height: int, width: int,
                   spec: AugmentSpec) -> tuple[jax.Array, jax.Array]:
  """Per-example [B,2,2] matrix and [B,2] offset, in (col, row) pixel units."""
  area = params.between(_P_SCALE, *spec.crop_scale)
  ratio = jnp.exp(params.between(_P_ASPECT, *map(math.log, spec.aspect_ratio)))
  # Crop side fractions; capped at the full image (zoom in or stretch, never pad here).
  crop = jnp.stack([jnp.minimum(1.0, jnp.sqrt(area * ratio)),
                    jnp.minimum(1.0, jnp.sqrt(area / ratio))], -1)  # [B, 2] (w, h)
  size = jnp.asarray([width, height], jnp.float32)
  centre = (size - 1) / 2
  # The crop anywhere inside the image, then a translation that may leave it.
  position = jnp.stack([params.between(i, -1.0, 1.0) for i in (_P_POS_X, _P_POS_Y)], -1)
  position = position * (1 - crop) / 2 * size
  shift = jnp.stack([params.between(i, -spec.translate, spec.translate)
                     for i in (_P_SHIFT_X, _P_SHIFT_Y)], -1) * size
  max_angle = math.radians(spec.rotate_degrees)
  angle = params.between(_P_ANGLE, -max_angle, max_angle)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  matrix = rotation * crop[:, None, :]  # rotation @ diag(crop)
  return matrix, centre + position + shift


def resample(images: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
  """Bilinear warp of images [B,H,W,C] -> float32 [B,H,W,C], zero outside the image.

  Output pixel (row i, col j) samples the input at (col, row) = matrix[b] @ (j - cx,
  i - cy) + offset[b], with (cx, cy) = ((W-1)/2, (H-1)/2) the centre; identity is
  matrix = I, offset = centre, and [[cos a, -sin a], [sin a, cos a]] rotates the image
  by a counterclockwise as displayed (a = 90 degrees is np.rot90). Values are not
  rescaled (uint8 in gives [0, 255]).
  """
  _, height, width, _ = images.shape
  cols = jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2
  rows = jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2
  m = matrix[:, :, :, None, None]
  x = m[:, 0, 0] * cols + m[:, 0, 1] * rows[:, None] + offset[:, 0, None, None]
  y = m[:, 1, 0] * cols + m[:, 1, 1] * rows[:, None] + offset[:, 1, None, None]
  return jax.vmap(_bilinear)(images, x, y)


def _bilinear(image: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """One image [H,W,C] sampled at float (x, y) [H,W]; neighbours outside count as 0."""
  height, width, _ = image.shape
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

  def tap(yy, xx):  # gather in the input dtype (uint8: 4x fewer bytes), then widen
    inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    value = image[jnp.clip(yy, 0, height - 1), jnp.clip(xx, 0, width - 1)]
    return jnp.where(inside[..., None], value, 0).astype(jnp.float32)

  top = tap(y0, x0)
  top = top + fx * (tap(y0, x0 + 1) - top)
  bottom = tap(y0 + 1, x0)
  bottom = bottom + fx * (tap(y0 + 1, x0 + 1) - bottom)
  return top + fy * (bottom - top)


# ---- Intensity -----------------------------------------------------------------------

def _intensity(x: jax.Array, mean: jax.Array | None, params: _Params,
               noise_key: jax.Array, spec: AugmentSpec,
               remap_key: jax.Array | None) -> jax.Array:
  """The pointwise intensity ops on float32 [B,H,W,C] in [0, 1]; output in [0, 1]."""
  def uniform(index, lo, hi):
    return params.between(index, lo, hi)[:, None, None, None]

  if remap_key is not None:  # first: a change of tissue contrast, then the scanner's
    draws = jax.random.uniform(remap_key, (x.shape[0], _REMAP_KNOTS + 1), jnp.float32)
    x = remap_curve(x, draws.at[:, _REMAP_KNOTS].multiply(spec.remap))

  if spec.contrast > 0:
    x = mean + uniform(_P_CONTRAST, 1 - spec.contrast, 1 + spec.contrast) * (x - mean)
  if spec.brightness > 0:
    x = x + uniform(_P_BRIGHT, -spec.brightness, spec.brightness)
  x = jnp.clip(x, 0.0, 1.0)
  if spec.gamma != (1.0, 1.0):
    # exp(g log x), 0 -> 0 and 1 -> 1 exactly; ~5x faster than jnp.power on CPU.
    x = jnp.exp(jnp.log(x) * jnp.exp(uniform(_P_GAMMA, *map(math.log, spec.gamma))))
  if spec.noise_std > 0:
    std = uniform(_P_NOISE_STD, 0.0, spec.noise_std)
    x = jnp.clip(x + std * jax.random.normal(noise_key, x.shape, jnp.float32), 0, 1)
  return x


def remap_curve(x: jax.Array, draws: jax.Array) -> jax.Array:
  """x [B,H,W,C] in [0, 1] -> w (curve(x) - x) + x with draws [B, K + 1] uniform in [0, 1):
  columns 0..K-1 the heights of the curve's knots at 1/K, ..., 1 (through (0, 0)),
  column K the weight w (the caller scales it to [0, remap]).

  Piecewise linear as a sum of hat functions: K + 1 fused elementwise terms, no gather.
  """
  knots = draws.shape[1] - 1
  heights = draws[:, :knots, None, None, None]
  t = x * knots  # knot j sits at t = j + 1
  curve = sum(heights[:, j] * jnp.maximum(0.0, 1.0 - jnp.abs(t - (j + 1)))
              for j in range(knots))
  return x + draws[:, knots, None, None, None] * (curve - x)


def _binomial_blur(x: jax.Array) -> jax.Array:
  """Separable [1, 2, 1] / 4 blur over H and W of [B,H,W,C], zero outside."""
  p = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
  x = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25
  p = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
  return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) * 0.25
