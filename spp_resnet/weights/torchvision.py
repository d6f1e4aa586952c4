"""torchvision ResNet state dicts (.pth, .safetensors) -> our v1.5 ResNet.

Reading is safe: `torch.load(..., weights_only=True)` when torch is installed, else (or on
request) a reader of torch's zip and legacy formats whose unpickler only admits tensors,
OrderedDicts and storage types, with the storages read from the file. No code in the file
is ever executed. `.safetensors` files are read by a small pure reader.

Names: `conv1`/`bn1` -> stem, `layer{s}.{b}.conv{k}`/`bn{k}` -> stages[s-1][b].conv{k}/bn{k},
`layer{s}.{b}.downsample.0/1` -> proj_conv/proj_bn, `fc` -> ImageNet head. Conv weights
OIHW -> HWIO; BN weight/bias/running_mean/running_var -> scale/bias/mean/var;
`num_batches_tracked` (absent from files older than torch 0.4) is ignored.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any

import numpy as np

from spp_resnet.models.resnet import RESNET_SPECS
from spp_resnet.weights.sources import (ArchitectureMismatchError, ConvertedWeights,
                                        CorruptWeightsFileError, MissingTensorError,
                                        UnsafePickleError, WeightsError)

# ---------------------------------------------------------------------------------------
# Safe .pth reader.


def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (a dependency of jax)
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
  import torch  # pylint: disable=g-import-not-at-top
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


def detect_architecture(state_dict: dict[str, Any], path: str = '') -> int:
  """The ResNet depth of a torchvision state dict, from its block counts and block type."""
  blocks: dict[int, set[int]] = collections.defaultdict(set)
  for key in state_dict:
    if m := _LAYER_KEY.match(key):
      blocks[int(m.group(1))].add(int(m.group(2)))
  if 'conv1.weight' not in state_dict or sorted(blocks) != [1, 2, 3, 4]:
    some = ', '.join(list(state_dict)[:5])
    raise ArchitectureMismatchError(
        f'{path}: not a torchvision ResNet state dict (expected conv1.weight and '
        f'layer1..layer4; found {some}, ...)')
  sizes = tuple(max(blocks[s]) + 1 for s in (1, 2, 3, 4))
  block = 'bottleneck' if 'layer1.0.conv3.weight' in state_dict else 'basic'
  for depth, spec in RESNET_SPECS.items():
    if spec.block == block and spec.stage_sizes == sizes:
      return depth
  raise ArchitectureMismatchError(
      f'{path}: a ResNet with {block} blocks {sizes} per stage is none of ResNet-'
      f'{"/".join(map(str, RESNET_SPECS))}')


def _torchvision_layout(depth: int):
  """(our module path, torchvision prefix, kind) for every conv and BN of ResNet-`depth`."""
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
  return out


_BN_NAMES = (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'),
             ('running_var', 'var'))


def convert_state_dict(state_dict: dict[str, Any], *, depth: int | None = None,
                       path: str = '', file_format: str = 'state dict') -> ConvertedWeights:
  """torchvision ResNet tensors -> ConvertedWeights for ResNet(depth, 'v1.5')."""
  sd = dict(state_dict)
  if sd and all(k.startswith('module.') for k in sd):  # saved from nn.DataParallel
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  found = detect_architecture(sd, path)
  if depth is not None and found != depth:
    raise ArchitectureMismatchError(
        f'{path}: holds torchvision ResNet-{found} weights, but the model is ResNet-{depth} '
        f'(config.model.backbone={f"resnet{depth}"!r}; set it to {f"resnet{found}"!r})')
  depth = found
  used: set[str] = set()

  def take(name: str) -> np.ndarray:
    if name not in sd:
      raise MissingTensorError(f'{path}: tensor {name!r} is missing (torchvision '
                               f'ResNet-{depth} needs it)')
    used.add(name)
    value = sd[name]
    if not isinstance(value, np.ndarray):
      raise CorruptWeightsFileError(f'{path}: {name!r} is a {type(value).__name__}, '
                                    'not a tensor')
    return value.astype(np.float32)

  params, names = {}, {}
  for ours, tv, kind in _torchvision_layout(depth):
    if kind == 'conv':
      w = take(f'{tv}.weight')
      if w.ndim != 4:
        raise ArchitectureMismatchError(f'{path}: {tv}.weight has shape {w.shape}, '
                                        'expected a 4-d OIHW conv kernel')
      params[ours + ('kernel',)] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
      names[ours + ('kernel',)] = f'{tv}.weight'
    else:
      for tv_name, our_name in _BN_NAMES:
        params[ours + (our_name,)] = take(f'{tv}.{tv_name}')
        names[ours + (our_name,)] = f'{tv}.{tv_name}'
      used.add(f'{tv}.num_batches_tracked')
  head = None
  if 'fc.weight' in sd or 'fc.bias' in sd:
    head = {'kernel': np.ascontiguousarray(take('fc.weight').T), 'bias': take('fc.bias')}
  unexpected = [k for k in sd if k not in used]
  if unexpected:
    raise ArchitectureMismatchError(
        f'{path}: unexpected tensors for a torchvision ResNet-{depth}: '
        f'{", ".join(unexpected[:8])}{" ..." if len(unexpected) > 8 else ""} '
        '(another architecture, e.g. ResNeXt or a modified model?)')
  return ConvertedWeights(params, names, head, 'imagenet_torchvision', depth, 'v1.5',
                          'torchvision', file_format, len(sd), path)


def convert_file(path: str | os.PathLike, *, depth: int | None = None,
                 reader: str = 'auto') -> ConvertedWeights:
  """Reads a torchvision .pth/.safetensors ResNet file and converts it."""
  sd, fmt = read_state_dict(path, reader=reader)
  return convert_state_dict(sd, depth=depth, path=str(path), file_format=fmt)
