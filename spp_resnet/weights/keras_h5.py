"""Keras legacy HDF5 ResNet-50 weights -> our v1 ResNet-50.

The official files (`resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5`) are in the
legacy Keras HDF5 weights layout: one group per layer (at the top level, or under
`model_weights` in a whole-model file) whose `weight_names` attribute lists its datasets.
Two naming schemes exist, both read here, with or without the `:0` suffix:

- keras.applications (keras-applications >= 1.0.7, tf.keras, Keras 3): `conv1_conv`,
  `conv1_bn`, `conv{s}_block{b}_{1,2,3}_conv/_bn`, shortcut `conv{s}_block{b}_0_conv/_bn`,
  head `predictions`; datasets `<layer>/kernel`, `.../moving_variance`.
- Keras 1 / the deep-learning-models v0.2 release: `conv1`, `bn_conv1`,
  `res{s}{a,b,..}_branch2{a,b,c}`, `bn{s}{a,..}_branch2{a,b,c}`, shortcut `..._branch1`,
  head `fc1000`; datasets `<layer>_W`, `_b`, `_gamma`, `_beta`, `_running_mean`,
  `_running_std` (which holds the variance, as Keras 2 read it).

Kernels are HWIO as ours ('tf_kernels'); BN gamma/beta/moving_mean/moving_variance ->
scale/bias/mean/var.
"""

from __future__ import annotations

import collections
import os
import re
import string

import numpy as np

from spp_resnet.models.resnet import RESNET_SPECS
from spp_resnet.weights.sources import (ArchitectureMismatchError, ConvertedWeights,
                                        CorruptWeightsFileError, MissingTensorError)

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
  import h5py  # pylint: disable=g-import-not-at-top
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


def detect(layers: dict, path: str = '') -> tuple[str, int]:
  """(naming scheme, ResNet depth) of a Keras ResNet weights file."""
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
        f'{path}: not a Keras ResNet weights file (no conv1_conv or res2a_branch2a layer; '
        f'layers with weights: {some[:300]})')
  sizes = tuple(counts.get(s, 0) for s in (2, 3, 4, 5))
  block = 'bottleneck' if bottleneck else 'basic'
  for depth, spec in RESNET_SPECS.items():
    if spec.block == block and spec.stage_sizes == sizes:
      return naming, depth
  raise ArchitectureMismatchError(
      f'{path}: a Keras ResNet with {block} blocks {sizes} per stage is none of ResNet-'
      f'{"/".join(map(str, RESNET_SPECS))}')


def convert_layers(layers: dict[str, list[tuple[str, np.ndarray]]], *, depth: int | None = 50,
                   path: str = '', file_format: str = 'keras hdf5') -> ConvertedWeights:
  """Keras layers -> ConvertedWeights for ResNet(depth, 'v1')."""
  naming, found = detect(layers, path)
  if depth is not None and found != depth:
    raise ArchitectureMismatchError(
        f'{path}: holds Keras ResNet-{found} weights, but the model is ResNet-{depth} '
        f'(config.model.backbone={f"resnet{depth}"!r})')
  depth = found
  spec = RESNET_SPECS[depth]
  if spec.block != 'bottleneck':
    raise ArchitectureMismatchError(f'{path}: Keras ResNets have bottleneck blocks')
  used: set[str] = set()
  params, names = {}, {}

  def take(layer: str, kind: str) -> dict[str, tuple[str, np.ndarray]]:
    if layer not in layers or not layers[layer]:
      raise MissingTensorError(f'{path}: layer {layer!r} is missing (Keras ResNet-{depth}, '
                               f'{naming} names, needs it)')
    used.add(layer)
    return _roles(layer, layers[layer], kind, path)

  def conv_bn(ours: tuple, conv_layer: str, bn_layer: str):
    conv = take(conv_layer, 'conv')
    for role in ('kernel', 'bias'):
      name, value = conv[role]
      params[ours[0] + (role,)] = value.astype(np.float32)
      names[ours[0] + (role,)] = f'{conv_layer}/{name.rsplit("/", 1)[-1]}'
    bn = take(bn_layer, 'bn')
    for role, our_name in _BN_NAMES:
      name, value = bn[role]
      params[ours[1] + (our_name,)] = value.astype(np.float32)
      names[ours[1] + (our_name,)] = f'{bn_layer}/{name.rsplit("/", 1)[-1]}'

  if naming == 'keras.applications':
    conv_bn((('stem_conv',), ('stem_bn',)), 'conv1_conv', 'conv1_bn')
  else:
    conv_bn((('stem_conv',), ('stem_bn',)), 'conv1', 'bn_conv1')
  for s, n in enumerate(spec.stage_sizes):
    for b in range(n):
      ours = ('stages', s, b)
      for k in (1, 2, 3):
        conv_bn((ours + (f'conv{k}',), ours + (f'bn{k}',)), *_layer_names(naming, s, b, k))
      if b == 0:  # every first bottleneck block has a projection shortcut
        conv_bn((ours + ('proj_conv',), ours + ('proj_bn',)),
                *_layer_names(naming, s, b, 'proj'))
  head = None
  for head_layer in ('predictions', 'fc1000'):
    if layers.get(head_layer):
      dense = take(head_layer, 'dense')
      head = {'kernel': dense['kernel'][1].astype(np.float32),
              'bias': dense['bias'][1].astype(np.float32)}
      break
  unexpected = [n for n, w in layers.items() if w and n not in used]
  if unexpected:
    raise ArchitectureMismatchError(
        f'{path}: unexpected layers for a Keras ResNet-{depth} v1: '
        f'{", ".join(unexpected[:8])}{" ..." if len(unexpected) > 8 else ""} '
        '(another architecture, e.g. ResNet50V2 or a fine-tuned model with another head?)')
  num = sum(len(w) for w in layers.values())
  return ConvertedWeights(params, names, head, 'imagenet_keras', depth, 'v1', naming,
                          file_format, num, path)


def convert_file(path: str | os.PathLike, *, depth: int | None = 50) -> ConvertedWeights:
  """Reads a legacy-format Keras .h5 ResNet weights file and converts it."""
  layers, attrs = read_h5(path)
  fmt = 'keras hdf5' + (f' (keras {attrs["keras_version"]})' if 'keras_version' in attrs else '')
  return convert_layers(layers, depth=depth, path=str(path), file_format=fmt)
