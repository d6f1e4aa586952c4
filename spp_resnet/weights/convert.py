r"""Converting ImageNet weights into our backbones, caching them as Orbax checkpoints.

Library:
  load_pretrained_backbone(model, config.pretrained, config.model) -> normalization name
  convert_file(path) -> ConvertedWeights;  assign_backbone(backbone, weights)
  save_converted(weights, directory);  load_converted(directory) -> ConvertedWeights
  imagenet_logits(backbone, head, images)

Command line (prints what it loaded and verified; writes the Orbax copy into the cache
that training uses, or --out):
  python -m spp_resnet.weights.convert resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
  python -m spp_resnet.weights.convert resnet50-0676ba61.pth --check-image cat.jpg
  python -m spp_resnet.weights.convert --source imagenet_torchvision --backbone googlenet
  python -m spp_resnet.weights.convert --source imagenet_keras      # cache or download
  python -m spp_resnet.weights.convert --list                       # official files
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import orbax.checkpoint as ocp
from PIL import Image

from spp_resnet import models
from spp_resnet.models.layers import Backbone
from spp_resnet.weights import keras_h5, sources
from spp_resnet.weights import torchvision as tv
from spp_resnet.weights.sources import (ArchitectureMismatchError, ConvertedWeights,
                                        CorruptWeightsFileError, DigestCheck, WeightsError)

log = logging.getLogger(__name__)

# Bump when the conversion changes, so that stale cached copies are not reused.
CONVERSION_VERSION = 1
_INFO = 'conversion.json'
_CKPT = 'orbax'
_HEAD_PREFIX = 'imagenet_head.'

# ---------------------------------------------------------------------------------------
# Reading any supported file.


def detect_source(path: str | os.PathLike) -> str:
  """'imagenet_keras' for HDF5 files, 'imagenet_torchvision' for .pth/.safetensors."""
  with open(path, 'rb') as f:
    magic = f.read(8)
  if not magic:
    raise CorruptWeightsFileError(f'{path}: empty file')
  return 'imagenet_keras' if magic == b'\x89HDF\r\n\x1a\n' else 'imagenet_torchvision'


def convert_file(path: str | os.PathLike, *, source: str | None = None,
                 backbone: str | None = None, reader: str = 'auto') -> ConvertedWeights:
  """Reads and converts a Keras .h5 or torchvision .pth/.safetensors file.

  backbone: the model's `config.model.backbone` (None: take the file's); another
  architecture raises ArchitectureMismatchError. Shapes are checked when the result is
  assigned to a model (`assign_backbone`, `backbone_from_weights`).
  """
  path = str(path)
  if not os.path.isfile(path):
    raise sources.WeightsUnavailableError(f'{path}: no such file')
  source = source or detect_source(path)
  framework = sources.get_source(source).framework
  if framework == 'keras':
    if detect_source(path) != 'imagenet_keras':
      raise CorruptWeightsFileError(f'{path}: not an HDF5 file; imagenet_keras needs the '
                                    'Keras .h5 weights')
    return keras_h5.convert_file(path, backbone=backbone)
  if detect_source(path) == 'imagenet_keras':
    raise CorruptWeightsFileError(f'{path}: an HDF5 (Keras) file, but the source is '
                                  f'{source}; use imagenet_keras')
  return tv.convert_file(path, backbone=backbone, reader=reader)


# ---------------------------------------------------------------------------------------
# Into a model.


def _walk(backbone: nnx.Module):
  return list(nnx.to_flat_state(nnx.state(backbone, nnx.Any(nnx.Param, nnx.BatchStat))))


def assign_backbone(backbone: Backbone, weights: ConvertedWeights) -> None:
  """Sets every parameter and batch statistic of `backbone` from `weights`.

  Raises ArchitectureMismatchError naming the file's tensor when a shape differs, a
  variable of the model has no tensor, or a tensor has no place in the model. The values
  keep the model's parameter dtype.
  """
  arch = getattr(backbone, 'arch', type(backbone).__name__)
  variant = getattr(backbone, 'variant', '') if weights.variant else ''  # ResNets only
  if (arch, variant) != (weights.backbone, weights.variant):
    model = ' '.join(filter(None, (models.backbone_label(arch), variant)))
    raise ArchitectureMismatchError(
        f'{weights.file}: {weights.source} weights are {weights.model_name}; the model is '
        f'{model} (config.model.backbone / config.model.variant)')
  flat = _walk(backbone)
  paths = {p for p, _ in flat}
  extra = [weights.names.get(p, str(p)) for p in weights.params if p not in paths]
  if extra:
    raise ArchitectureMismatchError(f'{weights.file}: tensors without a place in the model: '
                                    f'{", ".join(extra[:8])}')
  updates = []
  for p, var in flat:
    if p not in weights.params:
      raise sources.MissingTensorError(
          f'{weights.file}: no tensor for the model variable {"/".join(map(str, p))}')
    value = weights.params[p]
    if tuple(value.shape) != tuple(var.shape):
      name = weights.names.get(p, '/'.join(map(str, p)))
      raise ArchitectureMismatchError(
          f'{weights.file}: tensor {name!r} has shape {tuple(value.shape)} (converted), the '
          f'model\'s {"/".join(map(str, p))} has {tuple(var.shape)}: another architecture '
          '(width, in_channels, ResNeXt?)')
    updates.append((var, value))
  for var, value in updates:  # only once everything has been checked
    var.set_value(jnp.asarray(value, dtype=var.dtype))


def backbone_from_weights(weights: ConvertedWeights, *, dtype=None) -> Backbone:
  """A backbone holding `weights` (built abstractly, so no random initialization is run)."""
  variant = {'variant': weights.variant} if weights.variant else {}
  model = nnx.eval_shape(lambda: models.BACKBONES[weights.backbone](
      **variant, dtype=dtype, rngs=nnx.Rngs(0)))
  assign_backbone(model, weights)
  return model


def imagenet_logits(backbone: Backbone, head: dict[str, Any], images: jax.Array) -> jax.Array:
  """ImageNet logits of `images` through the backbone and the file's classifier."""
  return imagenet_head(backbone, head, backbone(images, train=False))


def imagenet_head(backbone: Backbone, head: dict[str, Any], features: jax.Array) -> jax.Array:
  """The file's classifier on the backbone's last map: its FC layers, ReLU between, on
  global average pooling or (VGG, AlexNet) on the flattened last pool."""
  if head is None:
    raise ValueError('this weights file has no ImageNet head (a notop file); use the file '
                     'with the 1000-class top')
  h = backbone.imagenet_features(features.astype(jnp.float32))
  num_hidden = sum(k.endswith('.kernel') for k in head)  # 'hidden0.kernel', ...
  for i in range(num_hidden):
    h = jax.nn.relu(h @ jnp.asarray(head[f'hidden{i}.kernel']) +
                    jnp.asarray(head[f'hidden{i}.bias']))
  return h @ jnp.asarray(head['kernel']) + jnp.asarray(head['bias'])


# ---------------------------------------------------------------------------------------
# Orbax copies.


def _key(path: tuple) -> str:
  return '.'.join(map(str, path))


def _path(key: str) -> tuple:
  return tuple(int(p) if p.isdigit() else p for p in key.split('.'))


def _checkpointer():
  # Each process writes its own (local) copy: no cross-host barriers.
  me = jax.process_index()
  mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=mp),
                          multiprocessing_options=mp)


def save_converted(weights: ConvertedWeights, directory: str | os.PathLike,
                   extra_info: dict | None = None) -> pathlib.Path:
  """Writes `weights` as an Orbax checkpoint (+ conversion.json) into `directory`.

  Written into a temporary sibling and renamed, so a directory that exists is complete.
  An existing `directory` is replaced.
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f'.{directory.name}.'))
  try:
    tree = {_key(p): np.asarray(v) for p, v in weights.params.items()}
    if weights.head is not None:
      tree.update({_HEAD_PREFIX + k: np.asarray(v) for k, v in weights.head.items()})
    _checkpointer().save(tmp / _CKPT, tree)
    info = {
        'conversion_version': CONVERSION_VERSION,
        'source': weights.source, 'backbone': weights.backbone, 'variant': weights.variant,
        'layout': weights.layout, 'file_format': weights.file_format,
        'num_file_tensors': weights.num_file_tensors, 'file': weights.file,
        'normalization': weights.normalization,
        'names': {_key(p): n for p, n in weights.names.items()},
        'created': time.strftime('%Y-%m-%d %H:%M:%S'), **(extra_info or {}),
    }
    (tmp / _INFO).write_text(json.dumps(info, indent=1))
    if directory.exists():
      shutil.rmtree(directory)
    try:
      os.replace(tmp, directory)
    except OSError:
      if not (directory / _INFO).exists():  # not another process that won the race
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return directory


def is_converted_dir(directory: str | os.PathLike) -> bool:
  d = pathlib.Path(directory).expanduser()
  return (d / _INFO).is_file() and (d / _CKPT).is_dir()


def load_converted(directory: str | os.PathLike) -> ConvertedWeights:
  """Reads what `save_converted` wrote."""
  directory = pathlib.Path(directory).expanduser().absolute()
  try:
    info = json.loads((directory / _INFO).read_text())
    tree = _checkpointer().restore(directory / _CKPT)
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptWeightsFileError(f'{directory}: not a readable converted-weights '
                                  f'checkpoint: {e}') from e
  head = {k[len(_HEAD_PREFIX):]: np.asarray(v) for k, v in tree.items()
          if k.startswith(_HEAD_PREFIX)} or None
  params = {_path(k): np.asarray(v) for k, v in tree.items() if not k.startswith(_HEAD_PREFIX)}
  names = {_path(k): n for k, n in info.get('names', {}).items()}
  backbone = info.get('backbone') or f"resnet{info['depth']}"  # older copies: ResNets
  return ConvertedWeights(params, names, head, info['source'], backbone, info['variant'],
                          info['layout'], info['file_format'], info['num_file_tensors'],
                          info.get('file', str(directory)))


def cache_entry(cache_dir: str | os.PathLike, file: str | os.PathLike,
                digests: dict[str, str]) -> pathlib.Path:
  """Where the converted copy of `file` (identified by its content) is cached."""
  stem = pathlib.Path(file).name.split('.')[0]
  return (pathlib.Path(cache_dir).expanduser() / 'converted' /
          f'{stem}-{digests["sha256"][:16]}-c{CONVERSION_VERSION}')


# ---------------------------------------------------------------------------------------
# The training loop's entry point.


def check_compatibility(pretrained_config, model_config) -> str:
  """The backbone, after checking config.model fits config.pretrained.source."""
  source = pretrained_config.source
  spec = sources.get_source(source)
  backbone = model_config.backbone
  if not sources.source_fits_backbone(source, backbone):
    others = sources.sources_for_backbone(backbone)
    hint = (f'{backbone} has weights from {", ".join(map(repr, others))}' if others else
            f"there are no ImageNet weights for {backbone}: set config.pretrained.source=''")
    raise ValueError(
        f'config.model.backbone={backbone!r} does not fit config.pretrained.source='
        f'{source!r}: its official weights are for {", ".join(spec.backbones)}; {hint}')
  if backbone.startswith('resnet') and model_config.variant != spec.variant:
    where = ('stride in the first 1x1 conv, as Keras' if spec.variant == 'v1'
             else 'stride in the 3x3 conv, as torchvision')
    raise ValueError(
        f'config.model.variant={model_config.variant!r} does not fit '
        f'config.pretrained.source={source!r}: those weights are for the {spec.variant} '
        f'ResNet ({where}); set config.model.variant={spec.variant!r}')
  return backbone


def load_pretrained_backbone(model, pretrained_config, model_config, *,
                             download: bool | None = None) -> str:
  """Loads ImageNet weights into `model.backbone` in place; returns the input normalization.

  Finds the weights file (config.pretrained.path: a file, an official file name, or a
  directory written by `save_converted` / the CLI; else the cache, else a download),
  checks its digest (warns, or raises in strict_digest mode), converts it once and keeps
  an Orbax copy under <cache_dir>/converted/, then sets every parameter and batch
  statistic of the backbone. The classifier head is left as initialized. Returns
  'caffe' (Keras) or 'imagenet' (torchvision); '' source: nothing loaded, 'none'.
  """
  source = pretrained_config.source
  if not source:
    return 'none'
  backbone_name = check_compatibility(pretrained_config, model_config)
  backbone = model.backbone
  path = pretrained_config.get('path', '') or ''
  cache_dir = pretrained_config.get('cache_dir', '') or sources.DEFAULT_CACHE_DIR
  strict = bool(pretrained_config.get('strict_digest', False))
  if path and is_converted_dir(path):
    weights = load_converted(path)
    if weights.source != source:
      raise ArchitectureMismatchError(f'config.pretrained.path={path!r} holds {weights.source} '
                                      f'weights, config.pretrained.source is {source!r}')
    assign_backbone(backbone, weights)
    log.info('Loaded converted %s weights from %s', source, path)
    return weights.normalization
  file = sources.resolve_weights_file(source, backbone_name, path=path, cache_dir=cache_dir,
                                      download=download)
  check = sources.check_digest(file, strict=strict)
  entry = cache_entry(cache_dir, file, check.digests)
  weights = None
  if is_converted_dir(entry):
    try:
      weights = load_converted(entry)
    except WeightsError as e:
      log.warning('Ignoring a broken cached conversion %s: %s', entry, e)
  if weights is not None:
    assign_backbone(backbone, weights)
    how = f'cached conversion {entry}'
  else:
    weights = convert_file(file, source=source, backbone=backbone_name)
    assign_backbone(backbone, weights)  # checks every shape before anything is cached
    try:
      save_converted(weights, entry, _digest_info(check))
      how = f'converted, cached at {entry}'
    except OSError as e:  # a read-only cache must not stop training
      log.warning('Could not cache the conversion at %s: %s', entry, e)
      how = 'converted (not cached)'
  msg = (f'ImageNet weights: {file} [{check.status}: {check.message}]; {how}; '
         f'{weights.summary()}')
  log.info(msg)
  return weights.normalization


def _digest_info(check: DigestCheck) -> dict:
  return {'digest_status': check.status, 'md5': check.digests['md5'],
          'sha256': check.digests['sha256'],
          'official': dataclasses.asdict(check.official) if check.official else None}


# ---------------------------------------------------------------------------------------
# Command line.


def _load_image(path: str, convention: sources.InputConvention) -> np.ndarray:
  img = Image.open(path).convert('RGB')
  w, h = img.size
  scale = 256 / min(w, h)  # shorter side 256, centre crop 224
  img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
  w, h = img.size
  left, top = (w - 224) // 2, (h - 224) // 2
  x = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
  return convention.apply(x)[None]


def _print_official() -> None:
  for f in sources.OFFICIAL_FILES:
    default = f', default for {f.backbone}' if f.default else ''
    top = 'with' if f.include_top else 'without'
    print(f'{f.filename}  [{f.source}, {f.release}, {top} the 1000-class head{default}]\n'
          f'    {f.algorithm} {f.digest}  {f.url}')


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m spp_resnet.weights.convert',
      description='Convert official ImageNet weights (Keras .h5, torchvision .pth / '
                  '.safetensors; ResNet, VGG-16, GoogLeNet, AlexNet) into an Orbax '
                  'checkpoint of the Flax backbone, verifying digests and shapes.')
  parser.add_argument('file', nargs='?', default='',
                      help='weights file, or an official file name to fetch; omit with '
                           '--source to fetch the default file')
  parser.add_argument('--source', choices=sorted(sources.WEIGHT_SOURCES),
                      help='default: from the file format (HDF5: Keras, else torchvision)')
  parser.add_argument('--backbone', default='', choices=['', *models.BACKBONES],
                      help="e.g. resnet50, vgg16 (default: the file's; resnet50 to fetch)")
  parser.add_argument('--cache-dir', default=sources.DEFAULT_CACHE_DIR,
                      help='cache of downloads and conversions (config.pretrained.cache_dir)')
  parser.add_argument('--out', default='',
                      help='write the Orbax copy here (default: the cache, where training '
                           'finds it)')
  parser.add_argument('--strict', action='store_true', help='fail on a digest mismatch')
  parser.add_argument('--no-download', action='store_true')
  parser.add_argument('--reader', choices=('auto', 'torch', 'pure'), default='auto',
                      help='.pth reader (auto: torch.load(weights_only=True) if installed)')
  parser.add_argument('--check-image', nargs='*', default=[], metavar='IMAGE',
                      help='print the ImageNet top-5 for these images (needs the head)')
  parser.add_argument('--list', action='store_true', help='list the official files')
  args = parser.parse_args(argv)
  if args.list:
    _print_official()
    return 0
  if not args.file and not args.source:
    parser.error('give a weights file, or --source to fetch the default one')
  try:
    if args.file and os.path.isfile(args.file):
      file = pathlib.Path(args.file)
      source = args.source or detect_source(file)
    else:
      source = args.source or next((f.source for f in sources.official_files(
          filename=os.path.basename(args.file))), None)
      if source is None:
        parser.error(f'{args.file}: no such file')
      file = sources.resolve_weights_file(
          source, args.backbone or 'resnet50', path=args.file, cache_dir=args.cache_dir,
          download=False if args.no_download else None)
    print(f'file:      {file} ({os.path.getsize(file):,} bytes)')
    with warnings.catch_warnings():  # printed below instead
      warnings.simplefilter('ignore', sources.DigestWarning)
      check = sources.check_digest(file, strict=False)
    print(f'md5:       {check.digests["md5"]}\nsha256:    {check.digests["sha256"]}')
    print(f'digest:    {check.status.upper()}: {check.message}')
    if args.strict:
      sources.enforce_digest(check, strict=True)
    weights = convert_file(file, source=source, backbone=args.backbone or None,
                           reader=args.reader)
    backbone = backbone_from_weights(weights)  # checks every shape
    print(f'format:    {weights.file_format}; names: {weights.layout}; '
          f'{weights.num_file_tensors} tensors in the file')
    print(f'model:     {weights.model_name}: {len(weights.params)} arrays '
          f'(params + batch stats) assigned, shapes verified')
    print('head:      ' + (f"{weights.head['kernel'].shape[1]} classes (not part of the "
                             'backbone)' if weights.head is not None else 'none (notop)'))
    conv = sources.NORMALIZATIONS[weights.normalization]
    print(f'input:     {weights.normalization!r}: {conv.description} '
          f'(config.data.normalization=auto)')
    out = pathlib.Path(args.out) if args.out else cache_entry(args.cache_dir, file, check.digests)
    save_converted(weights, out, _digest_info(check))
    print(f'orbax:     {out}')
    for image in args.check_image:
      x = _load_image(image, conv)
      with jax.default_matmul_precision('highest'):
        probs = jax.nn.softmax(imagenet_logits(backbone, weights.head, jnp.asarray(x))[0])
      top = np.argsort(-np.asarray(probs))[:5]
      print(f'top-5 {image}: ' + ', '.join(f'{i} ({probs[i]:.3f})' for i in top))
  except (WeightsError, FileNotFoundError, ValueError) as e:
    if not getattr(e, 'printed', False):
      print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def run():
  """The console script (pyproject.toml) and `python -m`."""
  sys.exit(main())


if __name__ == '__main__':
  run()
