"""torchvision state dicts (.pth, .safetensors) -> our v1.5 ResNet, VGG-16, GoogLeNet, AlexNet.

Reading is safe: `torch.load(..., weights_only=True)` when torch is installed, else (or on
request) a reader of torch's zip and legacy formats whose unpickler only admits tensors,
OrderedDicts and storage types, with the storages read from the file. No code in the file
is ever executed. `.safetensors` files are read by a small pure reader.

Names (`Layout`): ResNet `conv1`/`bn1` -> stem, `layer{s}.{b}.conv{k}`/`bn{k}` ->
stages[s-1][b].conv{k}/bn{k}, `layer{s}.{b}.downsample.0/1` -> proj_conv/proj_bn, `fc` ->
ImageNet head; VGG/AlexNet `features.<i>` -> the i-th layer of the stem and stages,
`classifier.*` -> head; GoogLeNet `conv1..3`, `inception*` by the same names, `fc` ->
head, `aux1/aux2` (auxiliary classifiers) ignored. Conv weights OIHW -> HWIO; BN
weight/bias/running_mean/running_var -> scale/bias/mean/var; `num_batches_tracked`
(absent from files older than torch 0.4) is ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any

import ml_dtypes  # a dependency of jax
import numpy as np

from spp_resnet.models import backbone_label as label
from spp_resnet.models import googlenet, vgg
from spp_resnet.models.resnet import RESNET_SPECS
from spp_resnet.weights.sources import (ArchitectureMismatchError, ConvertedWeights,
                                        CorruptWeightsFileError, MissingTensorError, Path,
                                        UnsafePickleError, WeightsError, head_key)

# ---------------------------------------------------------------------------------------
# Safe .pth reader.


def _bfloat16():
  return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class _StorageType:
  __slots__ = ('name', 'dtype')

  def __init__(self, name: str):
    self.name = name
    dtype = _STORAGE_DTYPES[name]
    self.dtype = _bfloat16() if dtype == 'bfloat16' else np.dtype(dtype)


class _Storage:
  """A storage whose bytes are filled in once read (zip: at once; legacy: after the pickle)."""

  __slots__ = ('dtype', 'numel', 'data')

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel = dtype, numel
    self.data: np.ndarray | None = None


class _LazyTensor:
  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

  def materialize(self, name: str) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise CorruptWeightsFileError(f'tensor {name!r}: its storage was not found in the file')
    if self.size:
      last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
      if any(n == 0 for n in self.size):
        return np.zeros(self.size, data.dtype)
      if last >= data.size or self.offset < 0 or min(self.stride) < 0:
        raise CorruptWeightsFileError(
            f'tensor {name!r}: shape {self.size} / strides {self.stride} exceed its storage '
            f'of {data.size} elements (truncated file?)')
    elif self.offset >= data.size:
      raise CorruptWeightsFileError(f'tensor {name!r}: offset beyond its storage')
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
    return np.array(view)  # a contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  # torch._utils._rebuild_tensor and _rebuild_tensor_v2 (requires_grad, backward_hooks,
  # metadata are irrelevant to the values).
  if not isinstance(storage, _Storage):
    raise UnsafePickleError('a tensor was built from something that is not a storage')
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_args):
  return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Admits only tensors, OrderedDicts and storage types; storages come from `storages`."""

  def __init__(self, file, storage_source, path: str):
    super().__init__(file)
    self._storage_source = storage_source
    self._path = path

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafePickleError(
        f'{self._path}: refusing to unpickle {module}.{name}: a weights file should only '
        'hold tensors (this reader, like torch.load(weights_only=True), runs no code)')

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
      raise UnsafePickleError(f'{self._path}: unsupported persistent id {pid!r:.80}')
    return self._storage_source(pid)


def _storage_type(obj) -> _StorageType:
  if isinstance(obj, _StorageType):
    return obj
  raise UnsafePickleError(f'unsupported storage type {obj!r:.80}')


def _read_zip_pth(path: str, zf: zipfile.ZipFile) -> Any:
  names = zf.namelist()
  pkl = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
  if not pkl:
    raise CorruptWeightsFileError(f'{path}: a zip file without <archive>/data.pkl is not a '
                                  'torch checkpoint')
  prefix = pkl[0][:-len('data.pkl')]
  byteorder = zf.read(prefix + 'byteorder').strip() if prefix + 'byteorder' in names else b''
  if byteorder not in (b'', b'little'):
    raise CorruptWeightsFileError(f'{path}: big-endian checkpoints are not supported')
  storages: dict[str, _Storage] = {}

  def load(pid):
    _, stype, key, _location, numel = pid[:5]
    stype = _storage_type(stype)
    if key not in storages:
      storage = _Storage(stype.dtype, int(numel))
      raw = zf.read(f'{prefix}data/{key}')
      if len(raw) < storage.numel * stype.dtype.itemsize:
        raise CorruptWeightsFileError(f'{path}: storage {key} is truncated')
      storage.data = np.frombuffer(raw, stype.dtype, count=storage.numel)
      storages[key] = storage
    return storages[key]

  return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), load, path).load()


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _read_legacy_pth(path: str, f) -> Any:
  """torch's format before 1.6 (and `_use_new_zipfile_serialization=False`)."""

  def safe_load():
    return _RestrictedUnpickler(f, _no_storage, path).load()

  def _no_storage(pid):
    raise UnsafePickleError(f'{path}: unexpected storage in the header')

  if safe_load() != _LEGACY_MAGIC:
    raise CorruptWeightsFileError(f'{path}: not a torch checkpoint (bad magic number)')
  if safe_load() != 1001:
    raise CorruptWeightsFileError(f'{path}: unsupported torch legacy protocol version')
  sys_info = safe_load()
  if isinstance(sys_info, dict) and not sys_info.get('little_endian', True):
    raise CorruptWeightsFileError(f'{path}: big-endian checkpoints are not supported')
  storages: dict[str, _Storage] = {}
  views: list[tuple[_Storage, str, int]] = []

  def load(pid):
    _, stype, key, _location, numel, view_metadata = pid[:6]
    stype = _storage_type(stype)
    if key not in storages:
      storages[key] = _Storage(stype.dtype, int(numel))
    if view_metadata is not None:  # a view of another storage (very old files)
      view_key, offset, view_size = view_metadata
      view = _Storage(stype.dtype, int(view_size))
      views.append((view, key, int(offset)))
      return view
    return storages[key]

  result = _RestrictedUnpickler(f, load, path).load()
  keys = _RestrictedUnpickler(f, _no_storage, path).load()
  for key in keys:
    storage = storages.get(key)
    header = f.read(8)
    if len(header) < 8:
      raise CorruptWeightsFileError(f'{path}: truncated (storage {key})')
    (numel,) = struct.unpack('<q', header)
    dtype = storage.dtype if storage else np.dtype(np.uint8)
    raw = f.read(numel * dtype.itemsize)
    if len(raw) < numel * dtype.itemsize:
      raise CorruptWeightsFileError(f'{path}: truncated (storage {key})')
    if storage is not None:
      storage.data = np.frombuffer(raw, dtype, count=numel)
  for view, key, offset in views:
    base = storages[key].data
    if base is not None:
      view.data = base[offset:offset + view.numel]
  return result


def _materialize(obj, name: str = ''):
  if isinstance(obj, _LazyTensor):
    return obj.materialize(name)
  if isinstance(obj, dict):
    return collections.OrderedDict(
        (k, _materialize(v, f'{name}.{k}' if name else str(k))) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, f'{name}[{i}]') for i, v in enumerate(obj))
  return obj


def read_pth_pure(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a torch checkpoint (zip or legacy format) without torch and without running code."""
  path = str(path)
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as zf:
        obj = _read_zip_pth(path, zf)
    else:
      with open(path, 'rb') as f:
        obj = _read_legacy_pth(path, f)
    return _materialize(obj)
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error, KeyError,
          ValueError, TypeError, IndexError, AttributeError, OSError) as e:
    if isinstance(e, WeightsError):
      raise
    raise CorruptWeightsFileError(
        f'{path}: cannot read it as a torch checkpoint (truncated or corrupt?): '
        f'{type(e).__name__}: {e}') from e


def read_pth_torch(path: str | os.PathLike) -> dict[str, Any]:
  """Reads with torch.load(weights_only=True); tensors become NumPy arrays."""
  import torch  # pylint: disable=g-import-not-at-top  # optional (tests)
  path = str(path)
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise UnsafePickleError(f'{path}: torch.load(weights_only=True) refused it: {e}') from e
  except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
    raise CorruptWeightsFileError(
        f'{path}: cannot read it as a torch checkpoint (truncated or corrupt?): {e}') from e

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      x = x.detach().cpu()
      if x.dtype == torch.bfloat16:
        return x.float().numpy().astype(_bfloat16())
      return x.contiguous().numpy().copy()
    if isinstance(x, dict):
      return collections.OrderedDict((k, to_numpy(v)) for k, v in x.items())
    return x

  return to_numpy(obj)


def _torch_available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': 'bfloat16',
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A pure reader of the safetensors format (8-byte header size, JSON header, data)."""
  path = str(path)
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise CorruptWeightsFileError(f'{path}: too short for a safetensors file')
    (n,) = struct.unpack('<Q', head)
    if n > min(size - 8, 100 << 20):
      raise CorruptWeightsFileError(f'{path}: bad safetensors header size {n} (truncated?)')
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise CorruptWeightsFileError(f'{path}: bad safetensors header: {e}') from e
    header.pop('__metadata__', None)
    out = collections.OrderedDict()
    base = 8 + n
    for name, info in header.items():
      dtype = _SAFETENSORS_DTYPES.get(info.get('dtype'))
      if dtype is None:
        raise CorruptWeightsFileError(f'{path}: tensor {name!r} has unsupported dtype '
                                      f'{info.get("dtype")}')
      dtype = _bfloat16() if dtype == 'bfloat16' else np.dtype(dtype)
      begin, end = info['data_offsets']
      shape = tuple(info['shape'])
      if base + end > size:
        raise CorruptWeightsFileError(f'{path}: tensor {name!r} lies beyond the end of the '
                                      f'file ({size} bytes): truncated')
      if end - begin != int(np.prod(shape)) * dtype.itemsize:
        raise CorruptWeightsFileError(f'{path}: tensor {name!r}: size does not match shape')
      f.seek(base + begin)
      out[name] = np.frombuffer(f.read(end - begin), dtype).reshape(shape).copy()
  return out


def read_state_dict(path: str | os.PathLike, *, reader: str = 'auto') -> tuple[dict, str]:
  """Tensors by name from a .pth (zip/legacy) or .safetensors file, and the format's name.

  reader: 'auto' (torch.load(weights_only=True) if torch is installed, else the pure
  reader), 'torch' or 'pure'.
  """
  path = str(path)
  with open(path, 'rb') as f:
    magic = f.read(8)
  if not magic:
    raise CorruptWeightsFileError(f'{path}: empty file')
  if magic[:2] == b'PK' or magic[:1] == b'\x80':
    fmt = 'torch zip' if magic[:2] == b'PK' else 'torch legacy'
    if reader == 'auto':
      reader = 'torch' if _torch_available() else 'pure'
    if reader not in ('torch', 'pure'):
      raise ValueError(f"reader must be 'auto', 'torch' or 'pure', got {reader!r}")
    obj = read_pth_torch(path) if reader == 'torch' else read_pth_pure(path)
    for key in ('state_dict', 'model'):  # a training checkpoint that wraps the state dict
      if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        obj = obj[key]
    if not isinstance(obj, dict):
      raise CorruptWeightsFileError(f'{path}: holds a {type(obj).__name__}, not a state dict')
    return obj, fmt
  if len(magic) == 8 and struct.unpack('<Q', magic)[0] < (100 << 20):
    return read_safetensors(path), 'safetensors'
  raise CorruptWeightsFileError(f'{path}: neither a torch checkpoint nor a safetensors file')


# ---------------------------------------------------------------------------------------
# Conversion.

_LAYER_KEY = re.compile(r'^layer(\d+)\.(\d+)\.')


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the tensors of a torchvision model go in ours."""
  # (our module path, torchvision prefix, kind): kind 'conv' (weight), 'conv_bias' (weight
  # and bias) or 'bn'.
  layers: list[tuple[Path, str, str]]
  head: tuple[str, ...]  # prefixes of the ImageNet classifier's Linear layers, in order
  # (channels, size): the first head layer reads a size x size map flattened in torch's
  # CHW order; its rows are reordered to our HWC flatten.
  head_input: tuple[int, int] | None = None
  ignored: tuple[str, ...] = ()  # prefixes of tensors with no place here (auxiliary heads)


def detect_architecture(state_dict: dict[str, Any], path: str = '') -> str:
  """The backbone (config.model.backbone) of a torchvision state dict, from its keys."""
  if 'inception3a.branch1.conv.weight' in state_dict:
    return 'googlenet'
  first = state_dict.get('features.0.weight')
  if np.ndim(first) == 4:
    if np.shape(first)[2:] == (11, 11):
      return 'alexnet'
    convs = [k for k, v in state_dict.items()
             if k.startswith('features.') and k.endswith('.weight') and np.ndim(v) == 4]
    if len(convs) != 13:
      raise ArchitectureMismatchError(f'{path}: a VGG with {len(convs)} conv layers; of the '
                                      'VGGs only VGG-16 (13) is supported')
    return 'vgg16_bn' if 'features.1.running_mean' in state_dict else 'vgg16'
  blocks: dict[int, set[int]] = collections.defaultdict(set)
  for key in state_dict:
    if m := _LAYER_KEY.match(key):
      blocks[int(m.group(1))].add(int(m.group(2)))
  if 'conv1.weight' not in state_dict or sorted(blocks) != [1, 2, 3, 4]:
    some = ', '.join(list(state_dict)[:5])
    raise ArchitectureMismatchError(
        f'{path}: not a torchvision ResNet, VGG-16, GoogLeNet or AlexNet state dict '
        f'(expected conv1.weight and layer1..layer4, features.*, or inception*; found '
        f'{some}, ...)')
  sizes = tuple(max(blocks[s]) + 1 for s in (1, 2, 3, 4))
  block = 'bottleneck' if 'layer1.0.conv3.weight' in state_dict else 'basic'
  for depth, spec in RESNET_SPECS.items():
    if spec.block == block and spec.stage_sizes == sizes:
      return f'resnet{depth}'
  raise ArchitectureMismatchError(
      f'{path}: a ResNet with {block} blocks {sizes} per stage is none of ResNet-'
      f'{"/".join(map(str, RESNET_SPECS))}')


def _resnet_layout(depth: int) -> Layout:
  spec = RESNET_SPECS[depth]
  convs = 3 if spec.block == 'bottleneck' else 2
  expansion = 4 if spec.block == 'bottleneck' else 1
  out = [(('stem_conv',), 'conv1', 'conv'), (('stem_bn',), 'bn1', 'bn')]
  cin = 64
  for s, (n, width) in enumerate(zip(spec.stage_sizes, (64, 128, 256, 512))):
    for b in range(n):
      tv, ours = f'layer{s + 1}.{b}', ('stages', s, b)
      for k in range(1, convs + 1):
        out.append((ours + (f'conv{k}',), f'{tv}.conv{k}', 'conv'))
        out.append((ours + (f'bn{k}',), f'{tv}.bn{k}', 'bn'))
      stride = 2 if s > 0 and b == 0 else 1
      if stride != 1 or cin != width * expansion:
        out.append((ours + ('proj_conv',), f'{tv}.downsample.0', 'conv'))
        out.append((ours + ('proj_bn',), f'{tv}.downsample.1', 'bn'))
      cin = width * expansion
  return Layout(out, ('fc',))


def _vgg16_layout(batch_norm: bool) -> Layout:
  """`features.<i>`: conv [, BN], ReLU per conv, a max pool after each block."""
  out, index = [], 0
  for b, widths in enumerate(vgg.BLOCK_WIDTHS):
    for j in range(len(widths)):
      ours = vgg.conv_path(b, j)
      out.append((ours + ('conv',), f'features.{index}', 'conv_bias'))
      if batch_norm:
        out.append((ours + ('bn',), f'features.{index + 1}', 'bn'))
      index += 3 if batch_norm else 2
    index += 1
  return Layout(out, ('classifier.0', 'classifier.3', 'classifier.6'), head_input=(512, 7))


def _alexnet_layout() -> Layout:
  convs = {('stem_layers', 0): 0, ('stages', 0, 1): 3, ('stages', 1, 1): 6,
           ('stages', 2, 0): 8, ('stages', 3, 0): 10}
  return Layout([(ours + ('conv',), f'features.{i}', 'conv_bias') for ours, i in convs.items()],
                ('classifier.1', 'classifier.4', 'classifier.6'), head_input=(256, 6))


def _googlenet_layout() -> Layout:
  def basic_conv(ours: Path, tv: str):
    return [(ours + ('conv',), f'{tv}.conv', 'conv'), (ours + ('bn',), f'{tv}.bn', 'bn')]

  out = (basic_conv(('stem_layers', 0), 'conv1') + basic_conv(('stages', 0, 1), 'conv2')
         + basic_conv(('stages', 0, 2), 'conv3'))
  for s, specs in enumerate(googlenet.INCEPTION_SPECS):
    for j, spec in enumerate(specs):
      ours, tv = ('stages', s + 1, j + 1), f'inception{spec[0]}'  # after the stage's pool
      out += basic_conv(ours + ('branch1',), f'{tv}.branch1')
      for branch in ('branch2', 'branch3'):
        for k in (0, 1):
          out += basic_conv(ours + (branch, k), f'{tv}.{branch}.{k}')
      out += basic_conv(ours + ('branch4', 1), f'{tv}.branch4.1')
  # The official file keeps the auxiliary classifiers (its model was built with them).
  return Layout(out, ('fc',), ignored=('aux1.', 'aux2.'))


def layout(backbone: str) -> Layout:
  if backbone.startswith('resnet'):
    return _resnet_layout(int(backbone.removeprefix('resnet')))
  if backbone.startswith('vgg16'):
    return _vgg16_layout(backbone == 'vgg16_bn')
  return {'alexnet': _alexnet_layout, 'googlenet': _googlenet_layout}[backbone]()


_BN_NAMES = (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'),
             ('running_var', 'var'))


def convert_state_dict(state_dict: dict[str, Any], *, backbone: str | None = None,
                       path: str = '', file_format: str = 'state dict') -> ConvertedWeights:
  """torchvision tensors -> ConvertedWeights for `backbone` (None: the file's)."""
  sd = dict(state_dict)
  if sd and all(k.startswith('module.') for k in sd):  # saved from nn.DataParallel
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  found = detect_architecture(sd, path)
  if backbone is not None and found != backbone:
    raise ArchitectureMismatchError(
        f'{path}: holds torchvision {label(found)} weights, but the model is '
        f'{label(backbone)} (config.model.backbone={backbone!r}; set it to {found!r})')
  spec = layout(found)
  used: set[str] = {k for k in sd if spec.ignored and k.startswith(spec.ignored)}

  def take(name: str) -> np.ndarray:
    if name not in sd:
      raise MissingTensorError(f'{path}: tensor {name!r} is missing (torchvision '
                               f'{label(found)} needs it)')
    used.add(name)
    value = sd[name]
    if not isinstance(value, np.ndarray):
      raise CorruptWeightsFileError(f'{path}: {name!r} is a {type(value).__name__}, '
                                    'not a tensor')
    return value.astype(np.float32)

  params, names = {}, {}

  def put(ours: Path, name: str) -> None:
    params[ours], names[ours] = take(name), name

  for ours, tv, kind in spec.layers:
    if kind.startswith('conv'):
      w = take(f'{tv}.weight')
      if w.ndim != 4:
        raise ArchitectureMismatchError(f'{path}: {tv}.weight has shape {w.shape}, '
                                        'expected a 4-d OIHW conv kernel')
      params[ours + ('kernel',)] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
      names[ours + ('kernel',)] = f'{tv}.weight'
      if kind == 'conv_bias':
        put(ours + ('bias',), f'{tv}.bias')
    else:
      for tv_name, our_name in _BN_NAMES:
        put(ours + (our_name,), f'{tv}.{tv_name}')
      used.add(f'{tv}.num_batches_tracked')
  head = None
  if any(f'{p}.weight' in sd or f'{p}.bias' in sd for p in spec.head):
    head = {}
    for i, prefix in enumerate(spec.head):
      kernel = take(f'{prefix}.weight').T
      if i == 0 and spec.head_input:
        channels, size = spec.head_input
        kernel = kernel.reshape(channels, size, size, -1).transpose(1, 2, 0, 3).reshape(
            channels * size * size, -1)
      key = head_key(i, len(spec.head))
      head[key + 'kernel'] = np.ascontiguousarray(kernel)
      head[key + 'bias'] = take(f'{prefix}.bias')
  unexpected = [k for k in sd if k not in used]
  if unexpected:
    raise ArchitectureMismatchError(
        f'{path}: unexpected tensors for a torchvision {label(found)}: '
        f'{", ".join(unexpected[:8])}{" ..." if len(unexpected) > 8 else ""} '
        '(another architecture, e.g. ResNeXt or a modified model?)')
  variant = 'v1.5' if found.startswith('resnet') else ''
  return ConvertedWeights(params, names, head, 'imagenet_torchvision', found, variant,
                          'torchvision', file_format, len(sd), path)


def convert_file(path: str | os.PathLike, *, backbone: str | None = None,
                 reader: str = 'auto') -> ConvertedWeights:
  """Reads a torchvision .pth/.safetensors file (ResNet, VGG-16, GoogLeNet, AlexNet)."""
  sd, fmt = read_state_dict(path, reader=reader)
  return convert_state_dict(sd, backbone=backbone, path=str(path), file_format=fmt)
