"""Where ImageNet weights come from: official files, digests, input conventions, cache.

One source of truth for
- the weight sources of `config.pretrained.source` (`WEIGHT_SOURCES`): the framework, the
  backbones and ResNet variant the weights fit (`source_fits_backbone`), and the input
  normalization they expect
  (`WEIGHT_SOURCES[source].normalization`, the value `config.data.normalization='auto'`
  resolves to; `NORMALIZATIONS[name].apply(images)` implements it);
- the official files (`OFFICIAL_FILES`): address, digest, release;
- finding a file (a given path, a cached copy, Keras' or torch.hub's cache, or a download
  into the cache) and checking its digest.

Shared by the Keras and torchvision converters: the errors and `ConvertedWeights`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from typing import Any, Literal

import numpy as np

# ---------------------------------------------------------------------------------------
# Errors and warnings.


class WeightsError(ValueError):
  """A weights file cannot be used (the message names the file and the tensor)."""


class CorruptWeightsFileError(WeightsError):
  """The file is truncated, corrupt, or not in a format we read."""


class MissingTensorError(WeightsError):
  """A tensor the model needs is not in the file."""


class ArchitectureMismatchError(WeightsError):
  """The file holds another architecture (depth, variant, shapes, extra tensors)."""


class DigestMismatchError(WeightsError):
  """The file's digest is not the official one (strict mode or a corrupt download)."""


class UnsafePickleError(CorruptWeightsFileError):
  """A .pth file asks the unpickler for something other than tensors."""


class WeightsUnavailableError(WeightsError, FileNotFoundError):
  """The weights file is neither given, nor cached, nor downloadable (offline)."""


class DigestWarning(UserWarning):
  """The file's digest does not match the official one, or it cannot be verified."""


# ---------------------------------------------------------------------------------------
# Input conventions.


@dataclasses.dataclass(frozen=True)
class InputConvention:
  """How images must be normalized for a set of weights.

  `apply` takes RGB images with values in [0, 1] (channels last) and returns the model
  input: `(x * scale)[..., channel order] - mean) / std`, mean/std in the output channel
  order and in units of the scaled image. Works on NumPy and JAX arrays.
  """
  name: str
  channel_order: Literal['RGB', 'BGR']
  scale: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  description: str

  def apply(self, images):
    if self.name == 'none':
      return images
    x = images[..., ::-1] if self.channel_order == 'BGR' else images
    if self.scale != 1.0:
      x = x * self.scale
    dtype = getattr(x, 'dtype', np.float32)
    x = x - np.asarray(self.mean, dtype)
    if self.std != (1.0, 1.0, 1.0):
      x = x / np.asarray(self.std, dtype)
    return x


NORMALIZATIONS: dict[str, InputConvention] = {  # data.preprocess.to_model_input applies it
    'none': InputConvention('none', 'RGB', 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                            'RGB, 0-1, unchanged'),
    # torchvision: ToTensor() (RGB, 0..1) then Normalize(mean, std).
    'imagenet': InputConvention(
        'imagenet', 'RGB', 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        'RGB, 0-1, (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)'),
    # keras.applications.imagenet_utils.preprocess_input(mode='caffe'): RGB -> BGR on
    # 0..255, minus the BGR ImageNet mean, no scaling (the weights come from Caffe).
    'caffe': InputConvention(
        'caffe', 'BGR', 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0),
        'BGR, 0-255, minus the ImageNet mean (103.939, 116.779, 123.68)'),
}


@dataclasses.dataclass(frozen=True)
class WeightSource:
  """A value of `config.pretrained.source`."""
  name: str
  framework: Literal['keras', 'torchvision']
  normalization: str  # key of NORMALIZATIONS
  variant: Literal['v1', 'v1.5']  # of its ResNets (config.model.variant)
  backbones: tuple[str, ...]  # the values of config.model.backbone it has weights for
  digest_algorithm: Literal['md5', 'sha256']

  @property
  def convention(self) -> InputConvention:
    return NORMALIZATIONS[self.normalization]


WEIGHT_SOURCES: dict[str, WeightSource] = {
    'imagenet_keras': WeightSource('imagenet_keras', 'keras', 'caffe', 'v1',
                                   ('resnet50', 'vgg16'), 'md5'),
    'imagenet_torchvision': WeightSource(
        'imagenet_torchvision', 'torchvision', 'imagenet', 'v1.5',
        ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'vgg16', 'vgg16_bn',
         'googlenet', 'alexnet'), 'sha256'),
}


def source_fits_backbone(source: str, backbone: str) -> bool:
  """Whether `source` has official weights for `config.model.backbone=backbone`.

  '' (no weights) fits every backbone; an unknown source fits none. (The ResNet variant
  is checked apart: `WEIGHT_SOURCES[source].variant`.)
  """
  return not source or (source in WEIGHT_SOURCES and
                        backbone in WEIGHT_SOURCES[source].backbones)


def sources_for_backbone(backbone: str) -> list[str]:
  """The sources with official weights for `backbone` (none for LeNet)."""
  return [name for name, spec in WEIGHT_SOURCES.items() if backbone in spec.backbones]


def normalization_for_source(source: str) -> str:
  """The input normalization that `config.data.normalization='auto'` means.

  '' (no pretrained weights) gives 'none'.
  """
  if not source:
    return 'none'
  return get_source(source).normalization


def get_source(source: str) -> WeightSource:
  if source not in WEIGHT_SOURCES:
    raise ValueError(f'config.pretrained.source: unknown {source!r}; choose from '
                     f"'', {', '.join(repr(s) for s in WEIGHT_SOURCES)}")
  return WEIGHT_SOURCES[source]


# ---------------------------------------------------------------------------------------
# Official files.


@dataclasses.dataclass(frozen=True)
class OfficialFile:
  filename: str
  url: str
  source: str  # key of WEIGHT_SOURCES
  backbone: str  # the config.model.backbone it fits
  include_top: bool
  algorithm: Literal['md5', 'sha256']
  digest: str  # full md5, or the sha256 prefix in torchvision's file name
  release: str
  default: bool = False  # the file fetched when config.pretrained.path is ''

  def matches(self, digests: dict[str, str]) -> bool:
    return digests[self.algorithm].startswith(self.digest)


_KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/'
_KERAS_OLD_URL = 'https://github.com/fchollet/deep-learning-models/releases/download/v0.2/'
_TV_URL = 'https://download.pytorch.org/models/'
_LEGACY_TV = 'legacy (torchvision < 0.13)'


def _keras(backbone: str, include_top: bool, md5: str, url_dir: str,
           release: str = 'keras.applications') -> OfficialFile:
  name = f'{backbone}_weights_tf_dim_ordering_tf_kernels{"" if include_top else "_notop"}.h5'
  default = release == 'keras.applications' and not include_top
  return OfficialFile(name, url_dir + name, 'imagenet_keras', backbone, include_top, 'md5',
                      md5, release, default)


def _tv(backbone: str, digest: str, release: str, default: bool = False,
        stem: str = '') -> OfficialFile:
  name = f'{stem or backbone}-{digest}.pth'
  return OfficialFile(name, _TV_URL + name, 'imagenet_torchvision', backbone, True, 'sha256',
                      digest, release, default)


OFFICIAL_FILES: tuple[OfficialFile, ...] = (
    # keras.applications (keras-applications >= 1.0.7, tf.keras, Keras 3): layer names
    # conv1_conv, conv2_block1_1_conv, ... and block1_conv1, ..., fc1, fc2, predictions;
    # md5 from keras/src/applications/resnet.py and vgg16.py.
    _keras('resnet50', False, '4d473c1dd8becc155b73f8504c6f6626', _KERAS_URL + 'resnet/'),
    _keras('resnet50', True, '2cb95161c43110f7111970584f804107', _KERAS_URL + 'resnet/'),
    _keras('vgg16', False, '6d6bbae143d832006294945121d1f1fc', _KERAS_URL + 'vgg16/'),
    _keras('vgg16', True, '64373286793e3c8b2b4e3219cbf3544b', _KERAS_URL + 'vgg16/'),
    # The older release used by Keras 2.0-2.2 keras.applications.resnet50, same file
    # names, Keras 1 layer names (conv1, bn_conv1, res2a_branch2a, ..., fc1000).
    _keras('resnet50', True, 'a7b3fe01876f51b976af0dea6bc144eb', _KERAS_OLD_URL,
           'deep-learning-models v0.2'),
    _keras('resnet50', False, 'a268eb855778b3df3c7506639542a6af', _KERAS_OLD_URL,
           'deep-learning-models v0.2'),
    # torchvision: torch.hub checks that the sha256 begins with the hex digits in the name.
    _tv('resnet18', 'f37072fd', 'IMAGENET1K_V1', True),
    _tv('resnet34', 'b627a593', 'IMAGENET1K_V1', True),
    _tv('resnet50', '0676ba61', 'IMAGENET1K_V1', True),
    _tv('resnet50', '11ad3fa6', 'IMAGENET1K_V2'),
    _tv('resnet101', '63fe2227', 'IMAGENET1K_V1', True),
    _tv('resnet101', 'cd907fc2', 'IMAGENET1K_V2'),
    _tv('resnet152', '394f9c45', 'IMAGENET1K_V1', True),
    _tv('resnet152', 'f82ba261', 'IMAGENET1K_V2'),
    _tv('vgg16', '397923af', 'IMAGENET1K_V1', True),
    _tv('vgg16_bn', '6c64b313', 'IMAGENET1K_V1', True),
    _tv('googlenet', '1378be20', 'IMAGENET1K_V1', True),
    _tv('alexnet', '7be5be79', 'IMAGENET1K_V1', True, stem='alexnet-owt'),
    # torchvision < 0.13 (`pretrained=True` before the weights API; same training).
    _tv('resnet18', '5c106cde', _LEGACY_TV),
    _tv('resnet34', '333f7ec4', _LEGACY_TV),
    _tv('resnet50', '19c8e357', _LEGACY_TV),
    _tv('resnet101', '5d3b4d8f', _LEGACY_TV),
    _tv('resnet152', 'b121ed2d', _LEGACY_TV),
    _tv('alexnet', '4df8aa71', 'legacy (early torchvision releases)', stem='alexnet-owt'),
)


def official_files(*, filename: str | None = None, source: str | None = None,
                   backbone: str | None = None) -> list[OfficialFile]:
  return [f for f in OFFICIAL_FILES
          if (filename is None or f.filename == filename)
          and (source is None or f.source == source)
          and (backbone is None or f.backbone == backbone)]


def default_file(source: str, backbone: str) -> OfficialFile:
  """The official file fetched for `source` and a backbone (Keras: without the top)."""
  spec = get_source(source)
  for f in official_files(source=source, backbone=backbone):
    if f.default:
      return f
  raise ValueError(f'config.model.backbone: no official {source} weights for {backbone!r}; '
                   f'{source} has {", ".join(spec.backbones)}')


# ---------------------------------------------------------------------------------------
# Digests.


@dataclasses.dataclass(frozen=True)
class DigestCheck:
  path: str
  digests: dict[str, str]  # 'md5' and 'sha256', full hex
  status: Literal['ok', 'mismatch', 'unknown']
  official: OfficialFile | None
  message: str

  @property
  def ok(self) -> bool:
    return self.status == 'ok'


def file_digests(path: str | os.PathLike) -> dict[str, str]:
  md5, sha256 = hashlib.md5(), hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      md5.update(chunk)
      sha256.update(chunk)
  return {'md5': md5.hexdigest(), 'sha256': sha256.hexdigest()}


_HUB_HASH = re.compile(r'-([0-9a-f]{8,64})\.pth?$')


def check_digest(path: str | os.PathLike, *, strict: bool = False,
                 digests: dict[str, str] | None = None) -> DigestCheck:
  """Checks a file against the official digests (by its name, else by its content).

  'ok': the name is official and the digest matches (or the name carries a torch.hub
  sha256 prefix that matches, or the content is a known official file under another
  name); 'mismatch': the name is official (or carries a hash) but the digest differs;
  'unknown': neither. A mismatch or unknown warns (DigestWarning), or raises
  DigestMismatchError in strict mode.
  """
  path = str(path)
  name = os.path.basename(path)
  digests = digests or file_digests(path)
  candidates = official_files(filename=name)
  hub = _HUB_HASH.search(name)
  official = None
  if candidates:
    official = next((f for f in candidates if f.matches(digests)), None)
    expected = ' or '.join(f'{f.algorithm} {f.digest} ({f.release})' for f in candidates)
    if official:
      status, msg = 'ok', (f'{name}: {official.algorithm} {digests[official.algorithm]} '
                           f'matches the official {official.release} file')
    else:
      algos = sorted({f.algorithm for f in candidates})
      got = ', '.join(f'{a} {digests[a]}' for a in algos)
      status, msg = 'mismatch', (
          f'{path}: {got} does not match the official {expected}; the file is corrupt, '
          'truncated or not the official release (delete it to download it again)')
  elif hub:
    prefix = hub.group(1)
    if digests['sha256'].startswith(prefix):
      status, msg = 'ok', (f'{name}: sha256 {digests["sha256"]} begins with {prefix} as '
                           'its name says')
    else:
      status, msg = 'mismatch', (f'{path}: sha256 {digests["sha256"]} does not begin with '
                                 f'{prefix} as its name says; the file is corrupt or truncated')
  else:
    official = next((f for f in OFFICIAL_FILES if f.matches(digests)), None)
    if official:
      algo = official.algorithm
      status, msg = 'ok', (f'{name}: content is the official {official.filename} '
                           f'({official.release}, {algo} {digests[algo]})')
    else:
      status, msg = 'unknown', (
          f'{path}: not an official file name and its digests (md5 {digests["md5"]}, '
          f'sha256 {digests["sha256"][:16]}...) match no official file; it cannot be verified')
  check = DigestCheck(path, digests, status, official, msg)
  enforce_digest(check, strict=strict)
  return check


def enforce_digest(check: DigestCheck, *, strict: bool) -> None:
  if check.ok:
    return
  if strict:
    raise DigestMismatchError(
        f'{check.message} (strict mode: config.pretrained.strict_digest=True / --strict)')
  warnings.warn(check.message, DigestWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# Finding and downloading files.

DEFAULT_CACHE_DIR = '~/.cache/spp_resnet/weights'
DOWNLOAD_TIMEOUT_S = 60.0


def other_caches(filename: str) -> list[pathlib.Path]:
  """Where Keras and torch.hub keep the same official files."""
  keras_home = os.environ.get('KERAS_HOME') or os.path.join('~', '.keras')
  torch_home = os.environ.get('TORCH_HOME') or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.join('~', '.cache')), 'torch')
  return [pathlib.Path(keras_home, 'models', filename).expanduser(),
          pathlib.Path(torch_home, 'hub', 'checkpoints', filename).expanduser()]


def resolve_weights_file(source: str, backbone: str, *, path: str = '',
                         cache_dir: str = DEFAULT_CACHE_DIR, download: bool | None = None,
                         timeout: float = DOWNLOAD_TIMEOUT_S) -> pathlib.Path:
  """The local weights file for `source`: `path`, else a cached copy, else a download.

  `path` may be an existing file, or the bare name of an official file (e.g.
  'resnet50-11ad3fa6.pth' to choose torchvision's IMAGENET1K_V2), which is looked up in the
  caches and downloaded. Downloads go into `cache_dir`; they are disabled by
  download=False or the environment variable SPP_RESNET_OFFLINE=1, in which case (or when
  the download fails) WeightsUnavailableError says where to get the file and where to put it.
  """
  get_source(source)
  if path:
    p = pathlib.Path(path).expanduser()
    if p.is_file():
      return p
    candidates = official_files(filename=p.name, source=source)
    if not candidates:
      raise WeightsUnavailableError(
          f'config.pretrained.path: {path} does not exist (and is not the name of an '
          f'official {source} file; see `python -m spp_resnet.weights.convert --list`)')
    official = candidates[0]
    # A path that does not exist yet: the file is looked for, or downloaded, there.
    dest = p if len(p.parts) > 1 else None
  else:
    official = default_file(source, backbone)
    dest = None
  cache = pathlib.Path(cache_dir).expanduser()
  dest = dest or cache / official.filename
  for candidate in [dest, cache / official.filename, *other_caches(official.filename)]:
    if candidate.is_file():
      return candidate
  if download is None:
    download = os.environ.get('SPP_RESNET_OFFLINE', '') in ('', '0')
  try:
    if not download:
      raise OSError('downloads are disabled (download=False or SPP_RESNET_OFFLINE=1)')
    download_file(official, dest, timeout=timeout)
  except (urllib.error.URLError, OSError, TimeoutError) as e:
    reason = str(e) if not download else f'{type(e).__name__}: {e}'
    msg = _offline_message(official, dest, reason)
    print(msg, file=sys.stderr)
    error = WeightsUnavailableError(msg)
    error.printed = True
    raise error from e
  return dest


def _offline_message(official: OfficialFile, dest: pathlib.Path, reason: str) -> str:
  return (f'Could not download the {official.source} weights ({reason}).\n'
          f'  Download:  {official.url}\n'
          f'  Place at:  {dest}\n'
          f'  ({official.algorithm} {official.digest}, release {official.release}); '
          'or set config.pretrained.path to the file.')


def download_file(official: OfficialFile, dest: pathlib.Path, *,
                  timeout: float = DOWNLOAD_TIMEOUT_S, progress: bool = True) -> pathlib.Path:
  """Downloads an official file atomically (temporary file, digest check, rename)."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  print(f'Downloading {official.url}\n  to {dest}', file=sys.stderr)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.', suffix='.part')
  try:
    request = urllib.request.Request(official.url, headers={'User-Agent': 'spp_resnet'})
    with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(request, timeout=timeout) as r:
      total = int(r.headers.get('Content-Length') or 0)
      done, last = 0, -1
      while chunk := r.read(1 << 20):
        out.write(chunk)
        done += len(chunk)
        if progress and total and (pct := 100 * done // total) // 10 != last:
          last = pct // 10
          print(f'  {done / 2**20:.1f} / {total / 2**20:.1f} MiB', file=sys.stderr)
    if total and done != total:
      raise OSError(f'download of {official.url} ended after {done} of {total} bytes')
    digests = file_digests(tmp)
    if not official.matches(digests):
      raise DigestMismatchError(
          f'downloaded {official.url} has {official.algorithm} {digests[official.algorithm]}, '
          f'expected {official.digest}; not kept')
    os.replace(tmp, dest)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return dest


# ---------------------------------------------------------------------------------------
# The result of a conversion, shared by the Keras and torchvision converters.

Path = tuple[Any, ...]  # an nnx state path in a backbone: ('stages', 0, 1, 'conv1', 'kernel')


def head_key(index: int, count: int) -> str:
  """The key prefix of layer `index` of an ImageNet classifier of `count` layers."""
  return '' if index == count - 1 else f'hidden{index}.'


@dataclasses.dataclass
class ConvertedWeights:
  """Backbone variables (params and batch stats) by nnx path, and the ImageNet head.

  head: the ImageNet classifier's fully connected layers, or None (a notop file):
  'kernel' [D, 1000] and 'bias' of the output layer, and for VGG and AlexNet also
  'hidden0.kernel', 'hidden0.bias', 'hidden1...' before it (ReLU between), reading
  `backbone.imagenet_features(features)`.
  """
  params: dict[Path, np.ndarray]
  names: dict[Path, str]  # the tensor's name in the file, for error messages
  head: dict[str, np.ndarray] | None
  source: str
  backbone: str  # config.model.backbone, e.g. 'resnet50', 'vgg16_bn'
  variant: str  # ResNet's 'v1' / 'v1.5'; '' for the other backbones
  layout: str  # naming scheme found in the file
  file_format: str
  num_file_tensors: int
  file: str = ''

  @property
  def normalization(self) -> str:
    return WEIGHT_SOURCES[self.source].normalization

  @property
  def depth(self) -> int | None:
    """ResNet's depth; None for the other backbones."""
    digits = self.backbone.removeprefix('resnet')
    return int(digits) if digits.isdigit() else None

  @property
  def model_name(self) -> str:
    """E.g. 'ResNet-50 v1', 'VGG-16'."""
    from spp_resnet.models import backbone_label  # pylint: disable=g-import-not-at-top  # flax
    label = backbone_label(self.backbone)
    return f'{label} {self.variant}' if self.variant else label

  def summary(self) -> str:
    n = sum(int(np.prod(a.shape)) for a in self.params.values())
    head = (f"ImageNet head {tuple(self.head['kernel'].shape)}" if self.head is not None
            else 'no head (notop)')
    return (f'{self.model_name} from {self.source} ({self.file_format}, '
            f'{self.layout} names): {len(self.params)} backbone arrays, {n:,} values, '
            f'{head}; input normalization {self.normalization!r} '
            f'({NORMALIZATIONS[self.normalization].description})')
