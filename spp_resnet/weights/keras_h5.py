"""Keras legacy HDF5 ResNet-50 and VGG-16 weights -> our v1 ResNet-50 and VGG16.

The official files (`{resnet50,vgg16}_weights_tf_dim_ordering_tf_kernels[_notop].h5`) are
in the legacy Keras HDF5 weights layout: one group per layer (at the top level, or under
`model_weights` in a whole-model file) whose `weight_names` attribute lists its datasets.
Two naming schemes exist, both read here, with or without the `:0` suffix:

- keras.applications (keras-applications >= 1.0.7, tf.keras, Keras 3): `conv1_conv`,
  `conv1_bn`, `conv{s}_block{b}_{1,2,3}_conv/_bn`, shortcut `conv{s}_block{b}_0_conv/_bn`,
  head `predictions`; datasets `<layer>/kernel`, `.../moving_variance`.
- Keras 1 / the deep-learning-models v0.2 release: `conv1`, `bn_conv1`,
  `res{s}{a,b,..}_branch2{a,b,c}`, `bn{s}{a,..}_branch2{a,b,c}`, shortcut `..._branch1`,
  head `fc1000`; datasets `<layer>_W`, `_b`, `_gamma`, `_beta`, `_running_mean`,
  `_running_std` (which holds the variance, as Keras 2 read it).
- VGG-16 (keras.applications): `block{1..5}_conv{k}`, head `fc1`, `fc2`, `predictions`
  reading the flattened block5_pool in HWC order, as our `VGG16.imagenet_features`.

Kernels are HWIO as ours ('tf_kernels'); BN gamma/beta/moving_mean/moving_variance ->
scale/bias/mean/var.
"""

from __future__ import annotations

import collections
import os
import re
import string

import h5py
import numpy as np

from spp_resnet.models import backbone_label as label
from spp_resnet.models import vgg
from spp_resnet.models.resnet import RESNET_SPECS
from spp_resnet.weights.sources import (ArchitectureMismatchError, ConvertedWeights,
                                        CorruptWeightsFileError, MissingTensorError, Path,
                                        head_key)

# Role of a dataset by its name's last part (after the layer name for Keras 1 names).
_ROLES = {
    'kernel': 'kernel', 'W': 'kernel', 'bias': 'bias', 'b': 'bias',
    'gamma': 'gamma', 'beta': 'beta', 'moving_mean': 'mean', 'running_mean': 'mean',
    'moving_variance': 'var', 'running_std': 'var', 'running_var': 'var',
}
# Keras' legacy order of a layer's weights (trainable first), used when names don't say.
_ORDER = {'conv': ('kernel', 'bias'), 'bn': ('gamma', 'beta', 'mean', 'var'),
          'dense': ('kernel', 'bias')}
_BN_NAMES = (('gamma', 'scale'), ('beta', 'bias'), ('mean', 'mean'), ('var', 'var'))


def _attr_list(group, name: str) -> list[str] | None:
  """A string-list attribute, possibly chunked as name0, name1, ... (Keras' writer)."""
  if name in group.attrs:
    values = list(group.attrs[name])
  elif f'{name}0' in group.attrs:
    values, i = [], 0
    while f'{name}{i}' in group.attrs:
      values.extend(group.attrs[f'{name}{i}'])
      i += 1
  else:
    return None
  return [v.decode('utf8') if isinstance(v, bytes) else str(v) for v in values]


def read_h5(path: str | os.PathLike) -> tuple[dict[str, list[tuple[str, np.ndarray]]], dict]:
  """Layer name -> [(weight name, array)] in file order, and the root's attributes."""
  path = str(path)
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise CorruptWeightsFileError(
        f'{path}: cannot open it as HDF5 (truncated, corrupt or not an .h5 file): {e}') from e
  layers: dict[str, list[tuple[str, np.ndarray]]] = collections.OrderedDict()
  with f:
    root = f
    if 'layer_names' not in f.attrs and 'layer_names0' not in f.attrs and 'model_weights' in f:
      root = f['model_weights']
    attrs = {k: (v.decode('utf8') if isinstance(v, bytes) else v)
             for k, v in root.attrs.items() if k in ('keras_version', 'backend')}
    layer_names = _attr_list(root, 'layer_names')
    if layer_names is None:
      layer_names = [k for k in root.keys() if isinstance(root[k], h5py.Group)]
    for layer in layer_names:
      try:
        group = root[layer]
        weight_names = _attr_list(group, 'weight_names')
        if weight_names is None:
          weight_names = []
          group.visititems(lambda n, obj: weight_names.append(n)
                           if isinstance(obj, h5py.Dataset) else None)
        missing = [w for w in weight_names if w not in group]
        if missing:
          raise MissingTensorError(f'{path}: tensor {layer + "/" + missing[0]!r} is missing '
                                   f'(listed in the weight_names of layer {layer!r})')
        layers[layer] = [(w, np.asarray(group[w][()])) for w in weight_names]
      except (OSError, RuntimeError) as e:
        raise CorruptWeightsFileError(
            f'{path}: cannot read layer {layer!r} (truncated or corrupt file?): {e}') from e
  return layers, attrs


def _roles(layer: str, weights: list[tuple[str, np.ndarray]], kind: str,
           path: str) -> dict[str, tuple[str, np.ndarray]]:
  """{'kernel': (name, array), ...} by dataset names, else by Keras' order."""
  out: dict[str, tuple[str, np.ndarray]] | None = {}
  for name, value in weights:
    leaf = re.sub(r':\d+$', '', name.rsplit('/', 1)[-1])
    if leaf.startswith(layer + '_'):
      leaf = leaf[len(layer) + 1:]
    role = _ROLES.get(leaf)
    if role is None or role in out or role not in _ORDER[kind]:
      out = None
      break
    out[role] = (name, value)
  if out is not None:
    missing = [r for r in _ORDER[kind] if r not in out]
    if missing:
      names = {'kernel': 'kernel', 'bias': 'bias', 'gamma': 'gamma', 'beta': 'beta',
               'mean': 'moving_mean', 'var': 'moving_variance'}
      raise MissingTensorError(
          f'{path}: tensor {layer + "/" + names[missing[0]]!r} is missing (layer {layer!r} '
          f'has only {", ".join(n for n, _ in weights)})')
    return out
  if len(weights) == len(_ORDER[kind]):
    return dict(zip(_ORDER[kind], weights))
  names = ', '.join(n for n, _ in weights) or 'none'
  raise ArchitectureMismatchError(
      f'{path}: layer {layer!r} has weights [{names}], expected a {kind} layer with '
      f'{", ".join(_ORDER[kind])}')


def _layer_names(naming: str, stage: int, block: int, conv: int | str):
  """(conv layer, bn layer) for stage 0..3, block, conv 1..3 or 'proj'."""
  if naming == 'keras.applications':
    k = 0 if conv == 'proj' else conv
    base = f'conv{stage + 2}_block{block + 1}_{k}'
    return f'{base}_conv', f'{base}_bn'
  letter = string.ascii_lowercase[block]
  branch = '1' if conv == 'proj' else f'2{"abc"[conv - 1]}'
  return (f'res{stage + 2}{letter}_branch{branch}', f'bn{stage + 2}{letter}_branch{branch}')


_APP_BLOCK = re.compile(r'^conv(\d)_block(\d+)_1_conv$')
_K1_BLOCK = re.compile(r'^res(\d)([a-z])_branch2a$')


_VGG_CONV = re.compile(r'^block(\d)_conv(\d)$')


def detect(layers: dict, path: str = '') -> tuple[str, str]:
  """(naming scheme, backbone) of a Keras ResNet or VGG-16 weights file."""
  if 'block1_conv1' in layers:
    counts = collections.Counter(int(m.group(1)) for name in layers
                                 if (m := _VGG_CONV.match(name)))
    sizes = tuple(counts[b] for b in range(1, 6))
    if sizes != tuple(len(w) for w in vgg.BLOCK_WIDTHS):
      raise ArchitectureMismatchError(
          f'{path}: a Keras VGG with {sizes} convs per block is not VGG-16 (2, 2, 3, 3, 3)')
    return 'keras.applications', 'vgg16'
  counts: dict[int, int] = collections.defaultdict(int)
  if 'conv1_conv' in layers:
    naming = 'keras.applications'
    for name in layers:
      if m := _APP_BLOCK.match(name):
        counts[int(m.group(1))] = max(counts[int(m.group(1))], int(m.group(2)))
    bottleneck = 'conv2_block1_3_conv' in layers
  elif 'res2a_branch2a' in layers or 'bn_conv1' in layers:
    naming = 'keras 1 (res2a_branch2a)'
    for name in layers:
      if m := _K1_BLOCK.match(name):
        counts[int(m.group(1))] = max(counts[int(m.group(1))],
                                      string.ascii_lowercase.index(m.group(2)) + 1)
    bottleneck = 'res2a_branch2c' in layers
  else:
    some = ', '.join(n for n in layers if layers[n])
    raise ArchitectureMismatchError(
        f'{path}: not a Keras ResNet or VGG-16 weights file (no conv1_conv, res2a_branch2a '
        f'or block1_conv1 layer; layers with weights: {some[:300]})')
  sizes = tuple(counts.get(s, 0) for s in (2, 3, 4, 5))
  block = 'bottleneck' if bottleneck else 'basic'
  for depth, spec in RESNET_SPECS.items():
    if spec.block == block and spec.stage_sizes == sizes:
      return naming, f'resnet{depth}'
  raise ArchitectureMismatchError(
      f'{path}: a Keras ResNet with {block} blocks {sizes} per stage is none of ResNet-'
      f'{"/".join(map(str, RESNET_SPECS))}')


def _resnet_layers(naming: str, depth: int, path: str) -> list[tuple[Path, str, str]]:
  """(our module path, Keras layer, kind) of every conv and BN of ResNet-`depth` v1."""
  spec = RESNET_SPECS[depth]
  if spec.block != 'bottleneck':
    raise ArchitectureMismatchError(f'{path}: Keras ResNets have bottleneck blocks')
  stem = ('conv1_conv', 'conv1_bn') if naming == 'keras.applications' else ('conv1', 'bn_conv1')
  out = [(('stem_conv',), stem[0], 'conv'), (('stem_bn',), stem[1], 'bn')]
  for s, n in enumerate(spec.stage_sizes):
    for b in range(n):
      # Every first bottleneck block has a projection shortcut.
      for k in (1, 2, 3, 'proj') if b == 0 else (1, 2, 3):
        conv, bn = _layer_names(naming, s, b, k)
        ours = ('proj_conv', 'proj_bn') if k == 'proj' else (f'conv{k}', f'bn{k}')
        out += [(('stages', s, b, ours[0]), conv, 'conv'), (('stages', s, b, ours[1]), bn, 'bn')]
  return out


def _vgg16_layers() -> list[tuple[Path, str, str]]:
  return [(vgg.conv_path(b, j) + ('conv',), f'block{b + 1}_conv{j + 1}', 'conv')
          for b, widths in enumerate(vgg.BLOCK_WIDTHS) for j in range(len(widths))]


def convert_layers(layers: dict[str, list[tuple[str, np.ndarray]]], *,
                   backbone: str | None = None, path: str = '',
                   file_format: str = 'keras hdf5') -> ConvertedWeights:
  """Keras layers -> ConvertedWeights for `backbone` (None: the file's)."""
  naming, found = detect(layers, path)
  if backbone is not None and found != backbone:
    raise ArchitectureMismatchError(
        f'{path}: holds Keras {label(found)} weights, but the model is '
        f'{label(backbone)} (config.model.backbone={backbone!r})')
  if found == 'vgg16':
    model_layers, head_layers = _vgg16_layers(), ('fc1', 'fc2', 'predictions')
  else:
    model_layers = _resnet_layers(naming, int(found.removeprefix('resnet')), path)
    head_layers = ('fc1000',) if 'fc1000' in layers else ('predictions',)
  used: set[str] = set()
  params, names = {}, {}

  def take(layer: str, kind: str) -> dict[str, tuple[str, np.ndarray]]:
    if layer not in layers or not layers[layer]:
      raise MissingTensorError(f'{path}: layer {layer!r} is missing (Keras {label(found)}, '
                               f'{naming} names, needs it)')
    used.add(layer)
    return _roles(layer, layers[layer], kind, path)

  for ours, layer, kind in model_layers:
    weights = take(layer, kind)
    roles = (('kernel', 'kernel'), ('bias', 'bias')) if kind == 'conv' else _BN_NAMES
    for role, our_name in roles:
      name, value = weights[role]
      params[ours + (our_name,)] = value.astype(np.float32)
      names[ours + (our_name,)] = f'{layer}/{name.rsplit("/", 1)[-1]}'
  head = None
  if any(layers.get(layer) for layer in head_layers):
    head = {}
    for i, layer in enumerate(head_layers):
      dense = take(layer, 'dense')
      key = head_key(i, len(head_layers))
      head[key + 'kernel'] = dense['kernel'][1].astype(np.float32)
      head[key + 'bias'] = dense['bias'][1].astype(np.float32)
  unexpected = [n for n, w in layers.items() if w and n not in used]
  if unexpected:
    raise ArchitectureMismatchError(
        f'{path}: unexpected layers for a Keras {label(found)}: '
        f'{", ".join(unexpected[:8])}{" ..." if len(unexpected) > 8 else ""} '
        '(another architecture, e.g. ResNet50V2 or a fine-tuned model with another head?)')
  num = sum(len(w) for w in layers.values())
  variant = 'v1' if found.startswith('resnet') else ''
  return ConvertedWeights(params, names, head, 'imagenet_keras', found, variant, naming,
                          file_format, num, path)


def convert_file(path: str | os.PathLike, *, backbone: str | None = None) -> ConvertedWeights:
  """Reads a legacy-format Keras .h5 ResNet or VGG-16 weights file and converts it."""
  layers, attrs = read_h5(path)
  fmt = 'keras hdf5' + (f' (keras {attrs["keras_version"]})' if 'keras_version' in attrs else '')
  return convert_layers(layers, backbone=backbone, path=str(path), file_format=fmt)
