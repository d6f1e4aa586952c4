"""SYNTHETIC brain-MRI phantom: the embedded default dataset (no download, no real data).

*** Every image here is SYNTHETIC, generated from random numbers. It is NOT medical data
and says nothing about real tumours; it exists so that the pipeline, the models and the
training loop can be run and tested anywhere, deterministically, in seconds. ***

Each example is a T1-like axial slice: scalp (bright, varying thickness), skull (dark
ring), a thin CSF layer, an elliptical brain with a folded gray-matter rim around white
matter, smooth tissue texture, two lateral ventricles (dark) holding a bright choroid
plexus, small bright "vessels", a multiplicative bias field and Rician noise; head
size, pose, ventricle size and contrast vary. About half the examples ('tumor', label
1) carry one or two lesions of varying size, position, irregular outline and type:
solid hyperintense, ring-enhancing (bright rim, dark necrotic core) or hypointense,
with a faint edema halo.

Measured (400 train / 100 test, preprocessed to 64 px, D4 augmentation, 2 busy CPU
cores): a 6-conv-layer CNN (Adam 1e-3) reaches ~90% test accuracy in 60 s; logistic
regression on the pixels or on the 32-bin intensity histogram gets 70%; a threshold
on mean or max intensity < 75% (tested). With easy=1 (below) a from-scratch ResNet-18
at 32 px gets ~0.87 after 75 SGD steps of 16.

Examples are a pure function of (seed, index): random access, no state, same bytes on
every call (on a given platform / numpy version). The train split holds indices
[0, train) and the test split [train, train + test), so file names 'phantom/00042' are
unique over the pooled splits.

Registry names: 'phantom' (train 400, test 100, native size 128, seed 0), or with
overrides 'phantom/size=64,train=200,test=50,seed=1'; 'easy=1' makes the lesions
large and strong (smoke tests that must learn within a few dozen steps).
"""

import dataclasses

import numpy as np

from spp_resnet.data import hashing

CLASS_NAMES = ('no_tumor', 'tumor')
DEFAULTS = {'size': 128, 'train': 400, 'test': 100, 'seed': 0, 'easy': 0}
# Lesion radius (fraction of the head's half-width) and contrast to the surrounding
# tissue (intensities in [0, 1]): the difficulty knobs. 'easy' (option easy=1): large,
# strong lesions, for smoke tests that must learn in a few dozen steps (then a linear
# model on the histogram does well too).
LESION_RADIUS = {0: (0.1, 0.25), 1: (0.3, 0.4)}
LESION_CONTRAST = {0: (0.25, 0.45), 1: (0.55, 0.7)}


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
  size: int = DEFAULTS['size']
  train: int = DEFAULTS['train']
  test: int = DEFAULTS['test']
  seed: int = DEFAULTS['seed']
  easy: int = DEFAULTS['easy']


def parse_name(name: str) -> PhantomConfig:
  """'phantom' or 'phantom/size=64,train=200,test=50,seed=1' -> PhantomConfig."""
  base, _, spec = name.partition('/')
  if base != 'phantom':
    raise ValueError(f'Not a phantom dataset name: {name!r}')
  kwargs = {}
  for item in filter(None, (s.strip() for s in spec.split(','))):
    key, sep, value = item.partition('=')
    if not sep or key not in DEFAULTS:
      raise ValueError(f'Bad phantom option {item!r} in {name!r}; expected key=value '
                       f'with key in {sorted(DEFAULTS)}.')
    kwargs[key] = int(value)
  config = PhantomConfig(**kwargs)
  if config.size < 16 or config.train < 0 or config.test < 0 or config.easy not in (0, 1):
    raise ValueError(f'Bad phantom config {config}.')
  return config


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
  """Unit-std Gaussian random field with correlation length `scale` (fraction of image)."""
  white = rng.standard_normal((size, size))
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  sigma = scale * size
  kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
  field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(size, size))
  return field / (field.std() + 1e-8)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ellipse_radius(x, y, cx, cy, ax, ay, angle):
  c, s = np.cos(angle), np.sin(angle)
  u = (x - cx) * c + (y - cy) * s
  v = -(x - cx) * s + (y - cy) * c
  return np.sqrt((u / ax) ** 2 + (v / ay) ** 2)


def generate(seed: int, index: int, size: int = DEFAULTS['size'],
             easy: int = 0) -> tuple[np.ndarray, int]:
  """SYNTHETIC slice number `index`: (uint8 [size, size, 1], label 0/1)."""
  image, label, _ = generate_with_mask(seed, index, size, easy)
  return image, label


def generate_with_mask(seed: int, index: int, size: int = DEFAULTS['size'],
                       easy: int = 0) -> tuple[np.ndarray, int, np.ndarray]:
  """`generate`, plus where the lesions are: bool [size, size] (all False for label 0),
  the ground truth for localization checks such as Grad-CAM's."""
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x5EED]))
  label = int(rng.random() < 0.5)
  n = size
  edge = 2.0 / n  # one pixel, in [-1, 1] coordinates: width of soft tissue boundaries
  y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing='ij')

  # Head pose and shape.
  angle = rng.uniform(-0.3, 0.3)
  cx, cy = rng.uniform(-0.06, 0.06, size=2)
  ax, ay = rng.uniform(0.68, 0.82), rng.uniform(0.80, 0.93)
  r = _ellipse_radius(x, y, cx, cy, ax, ay, angle)
  theta = np.arctan2(y - cy, x - cx)

  def band(r_in, r_out):
    return _sigmoid((r - r_in) / edge * 0.9) * _sigmoid((r_out - r) / edge * 0.9)

  img = np.zeros((n, n))
  scalp = rng.uniform(0.93, 0.97)  # inner radius of the scalp: its thickness varies
  img += rng.uniform(0.75, 0.9) * band(scalp, 1.0)  # scalp fat
  img += 0.08 * band(0.90, scalp)  # skull (cortical bone: dark)
  img += 0.22 * band(0.88, 0.90)   # CSF

  # Brain: gray-matter rim with a folded (sulcal) boundary to the white matter.
  folds = (0.035 * np.sin(rng.integers(9, 16) * theta + rng.uniform(0, 2 * np.pi))
           + 0.02 * _smooth_noise(rng, n, 0.03))
  brain = _sigmoid((0.88 - r) / edge * 0.9)
  white = _sigmoid((0.74 + folds - r) / edge * 0.9)
  gm, wm = rng.uniform(0.42, 0.50), rng.uniform(0.62, 0.72)
  tissue = gm + (wm - gm) * white
  tissue = tissue + 0.035 * _smooth_noise(rng, n, 0.02) + 0.02 * _smooth_noise(rng, n, 0.08)
  img = img * (1 - brain) + tissue * brain

  # Lateral ventricles: two tilted ellipses either side of the midline (CSF: dark).
  # Each holds a bright choroid plexus of random size (normal anatomy: a distractor
  # for bright lesions, and it makes the count of bright pixels vary in every class).
  v_scale = rng.uniform(0.6, 1.5)
  ventricles = np.zeros((n, n))
  plexus = np.zeros((n, n))
  c, s = np.cos(angle), np.sin(angle)
  for side in (-1, 1):
    dx, dy = side * 0.11 * ax / 0.75, -0.05
    vx, vy = cx + dx * c - dy * s, cy + dx * s + dy * c
    rv = _ellipse_radius(x, y, vx, vy, 0.055 * v_scale, 0.21 * v_scale,
                         angle - side * rng.uniform(0.1, 0.35))
    ventricles = np.maximum(ventricles, _sigmoid((1.0 - rv) / (edge / 0.06)))
    pr = rng.uniform(0.01, 0.05) * v_scale
    dp = np.hypot(x - vx - side * 0.01, y - vy - 0.1 * v_scale)
    plexus = np.maximum(plexus, _sigmoid((pr - dp) / edge))
  img = img * (1 - ventricles) + 0.16 * ventricles
  img = img * (1 - plexus) + (wm + rng.uniform(0.15, 0.4)) * plexus

  # Small bright dots ("vessels", normal anatomy) in every image: distractors.
  for _ in range(rng.integers(2, 9)):
    rad, phi = 0.6 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
    px, py = cx + rad * ax * np.cos(phi), cy + rad * ay * np.sin(phi)
    d = np.hypot(x - px, y - py)
    img += rng.uniform(0.1, 0.3) * np.exp(-0.5 * (d / rng.uniform(0.008, 0.02)) ** 2)

  lesions = np.zeros((n, n))
  if label:
    for _ in range(1 if rng.random() < 0.75 else 2):
      rad, phi = 0.62 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
      px, py = cx + rad * ax * np.cos(phi), cy + rad * ay * np.sin(phi)
      rho = rng.uniform(*LESION_RADIUS[easy])
      d = np.hypot(x - px, y - py)
      ang = np.arctan2(y - py, x - px)
      outline = rho * (1.0 + sum(
          rng.uniform(0, 0.12) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
          for k in (2, 3, 5)))
      inside = _sigmoid((outline - d) / edge * 0.8)
      contrast = rng.uniform(*LESION_CONTRAST[easy])
      kind = rng.choice(3, p=(0.4, 0.35, 0.25))
      edema = np.exp(-0.5 * (np.maximum(d - outline, 0) / (0.6 * rho)) ** 2) * (1 - inside)
      img -= rng.uniform(0.0, 0.1) * edema * brain
      if kind == 0:    # solid, hyperintense
        lesion = (wm + contrast) * (0.92 + 0.08 * _smooth_noise(rng, n, 0.02))
      elif kind == 1:  # ring-enhancing: bright rim around a dark necrotic core
        core = _sigmoid((0.5 * outline - d) / edge * 0.8)
        lesion = (wm + contrast) * (1 - core) + rng.uniform(0.15, 0.35) * core
      else:            # hypointense
        lesion = np.full((n, n), max(gm - contrast, 0.1))
      img = img * (1 - inside * brain) + lesion * inside * brain
      lesions = np.maximum(lesions, inside * brain)

  # Acquisition: smooth multiplicative bias field, global gain, Rician noise.
  img *= np.exp(rng.uniform(0.05, 0.2) * _smooth_noise(rng, n, 0.25))
  img *= rng.uniform(0.8, 1.0)
  sigma = rng.uniform(0.015, 0.05)
  img = np.hypot(img + sigma * rng.standard_normal((n, n)), sigma * rng.standard_normal((n, n)))
  pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
  return pixels[..., None], label, lesions > 0.5


class PhantomSource:
  """Random-access source of SYNTHETIC records, indices [start, start + length)."""

  def __init__(self, length: int, *, start: int = 0, size: int = DEFAULTS['size'],
               seed: int = DEFAULTS['seed'], easy: int = 0):
    self._length, self._start, self._size, self._seed = int(length), int(start), size, seed
    self._easy = int(easy)
    self._metadata = None
    # Generated records are kept (read_metadata reads them all, the pipeline's cache
    # build reads them again) as long as they stay small.
    self._memo = {} if self._length * size * size <= 64 * 2**20 else None

  def __len__(self) -> int:
    return self._length

  def __repr__(self) -> str:
    return (f'PhantomSource(SYNTHETIC, length={self._length}, start={self._start}, '
            f'size={self._size}, seed={self._seed}, easy={self._easy})')

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self._length:
      raise IndexError(f'index {index} out of range [0, {self._length})')
    if self._memo is not None and index in self._memo:
      return dict(self._memo[index])
    global_index = self._start + index
    image, label = generate(self._seed, global_index, self._size, self._easy)
    image.flags.writeable = False  # shared by the memo
    record = {
        'image': image,
        'label': label,
        'filename': f'phantom/{global_index:05d}',
        'patient_id': '',
        'sha256': hashing.content_hash(image),
        'phash': f'{hashing.perceptual_hash(image):016x}',
    }
    if self._memo is not None:
      self._memo[index] = record
    return dict(record)

  def __getstate__(self):  # pickled to grain workers without the memo
    state = self.__dict__.copy()
    state['_memo'] = {} if self._memo is not None else None
    return state

  def read_metadata(self) -> dict:
    """The builders' metadata arrays (label, filename, patient_id, sha256, phash)."""
    if self._metadata is not None:
      return self._metadata
    records = [self[i] for i in range(self._length)]
    meta = {key: np.array([r[key] for r in records]) for key in
            ('filename', 'patient_id', 'sha256', 'phash')}
    meta['label'] = np.array([r['label'] for r in records], np.int64)
    self._metadata = meta
    return meta


@dataclasses.dataclass
class Loaded:
  """Same shape as builders.Loaded."""
  sources: dict
  class_names: list
  build_report: dict


def load(name: str = 'phantom') -> Loaded:
  """The SYNTHETIC phantom dataset for registry name `name` (see module docstring)."""
  config = parse_name(name)
  sources = {
      'train': PhantomSource(config.train, start=0, size=config.size, seed=config.seed,
                             easy=config.easy),
      'test': PhantomSource(config.test, start=config.train, size=config.size,
                            seed=config.seed, easy=config.easy),
  }
  report = {'dataset': name, 'synthetic': True, **dataclasses.asdict(config)}
  return Loaded(sources=sources, class_names=list(CLASS_NAMES), build_report=report)
