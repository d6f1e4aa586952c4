"""Keras legacy-HDF5 ResNet-50 weights -> v1 ResNet-50: logits and stage activations
against Keras 3 itself (JAX backend) reading the same files.

Random weights (BatchNorm statistics randomized too) are written by Keras' own legacy
HDF5 writer, with and without the 1000-class top, and read back by
`keras.applications.ResNet50(weights=PATH)` as the reference. Variants of the file (`:0`
suffixes, the Keras 1 / deep-learning-models layer names, the `model_weights` layout)
must convert to exactly the same arrays.
"""

import contextlib
import dataclasses
import hashlib
import os
import shutil
import string

os.environ['KERAS_BACKEND'] = 'jax'  # before keras is imported

import h5py  # pylint: disable=g-import-not-at-top,g-bad-import-order
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

keras = pytest.importorskip('keras')
if keras.backend.backend() != 'jax':
  pytest.skip(f'keras was imported with the {keras.backend.backend()} backend',
              allow_module_level=True)
from keras.src.initializers import random_initializers  # pylint: disable=g-import-not-at-top
from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top

from configs import default as default_config  # pylint: disable=g-import-not-at-top
from spp_resnet import models  # pylint: disable=g-import-not-at-top
from spp_resnet.weights import convert, sources  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:keras')

ATOL = 1e-4
STAGES = {'stem': 'pool1_pool', 'stage1': 'conv2_block3_out', 'stage2': 'conv3_block4_out',
          'stage3': 'conv4_block6_out', 'stage4': 'conv5_block3_out'}


@contextlib.contextmanager
def fast_init():
  """Builds Keras models with zero-filled initial kernels instead of random ones.

  Every weight is then set (randomize) or read from the file (weights=PATH) anyway, and
  compiling Keras' random initializers for ~100 shapes would take ~15 s on 2 CPU cores.
  """
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(random_initializers.VarianceScaling, '__call__',
               lambda self, shape, dtype=None: np.zeros(shape, dtype or 'float32'))
    yield


def resnet50(**kwargs):
  with fast_init():
    return keras.applications.ResNet50(**kwargs)


def randomize(model, seed=0):
  """Random conv/dense weights and BN parameters *and* moving statistics."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      k = layer.kernel.shape
      kernel = rng.normal(0.0, np.sqrt(2.0 / (k[0] * k[1] * k[3])), k)
      layer.set_weights([kernel.astype('float32'), rng.normal(0, 0.05, k[3]).astype('float32')])
    elif isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      # Small gains at the end of residual branches keep activations O(1) over depth.
      end = layer.name.endswith(('_3_bn', '_0_bn'))
      gamma = rng.uniform(0.1, 0.4, n) if end else rng.uniform(0.5, 1.5, n)
      layer.set_weights([gamma.astype('float32'), rng.normal(0, 0.1, n).astype('float32'),
                         rng.normal(0, 0.2, n).astype('float32'),
                         rng.uniform(0.5, 2.0, n).astype('float32')])
    elif isinstance(layer, keras.layers.Dense):
      k = layer.kernel.shape
      layer.set_weights([rng.normal(0, 0.05, k).astype('float32'),
                         rng.normal(0, 0.1, k[1]).astype('float32')])


def write_legacy_h5(model, path, group=None):
  """Keras 3's writer of the legacy HDF5 weights layout (as the official files)."""
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f.create_group(group) if group else f, model)
  return str(path)


def _str(x):
  return x.decode() if isinstance(x, bytes) else str(x)


def _rewrite(src, dst, rename_layer, rename_weight, attrs=None):
  """Copies a legacy weights file, renaming layers and datasets (names in attributes too)."""
  with h5py.File(src, 'r') as fin, h5py.File(dst, 'w') as fout:
    names = [_str(n) for n in fin.attrs['layer_names']]
    fout.attrs['layer_names'] = [rename_layer(n).encode() for n in names]
    for k, v in (attrs or dict(fin.attrs)).items():
      if k != 'layer_names':
        fout.attrs[k] = v
    for name in names:
      gin, gout = fin[name], fout.create_group(rename_layer(name))
      new_names = []
      for w in map(_str, gin.attrs['weight_names']):
        new = rename_weight(rename_layer(name), w)
        gout.create_dataset(new, data=gin[w][()])
        new_names.append(new.encode())
      gout.attrs['weight_names'] = new_names
  return str(dst)


def with_suffix(src, dst):
  return _rewrite(src, dst, lambda n: n, lambda layer, w: w + ':0')


def keras1_name(name):
  """keras.applications layer names -> the Keras 1 / deep-learning-models v0.2 names."""
  if name == 'conv1_conv':
    return 'conv1'
  if name == 'conv1_bn':
    return 'bn_conv1'
  if name == 'predictions':
    return 'fc1000'
  parts = name.split('_')  # conv{s}_block{b}_{k}_{conv|bn}
  if len(parts) == 4 and parts[1].startswith('block') and parts[3] in ('conv', 'bn'):
    stage, block, k = parts[0][4:], int(parts[1][5:]), int(parts[2])
    branch = '1' if k == 0 else '2' + 'abc'[k - 1]
    prefix = 'res' if parts[3] == 'conv' else 'bn'
    return f'{prefix}{stage}{string.ascii_lowercase[block - 1]}_branch{branch}'
  return name


_K1_SUFFIX = {'kernel': 'W', 'bias': 'b', 'gamma': 'gamma', 'beta': 'beta',
              'moving_mean': 'running_mean', 'moving_variance': 'running_std'}


def to_keras1(src, dst):
  return _rewrite(src, dst, keras1_name,
                  lambda layer, w: f'{layer}_{_K1_SUFFIX[w.rsplit("/", 1)[-1]]}:0',
                  attrs={'keras_version': b'1.2.2', 'backend': b'tensorflow'})


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('keras')
  model = resnet50(weights=None, classifier_activation=None)
  randomize(model)
  notop = keras.Model(model.inputs, model.get_layer('conv5_block3_out').output)
  out = {
      'top': write_legacy_h5(model, d / 'random_top.h5'),
      'notop': write_legacy_h5(notop, d / 'random_notop.h5'),
      'model_weights': write_legacy_h5(model, d / 'random_model_weights.h5', 'model_weights'),
      'dir': d,
      'conv1_kernel': np.asarray(model.get_layer('conv1_conv').kernel),
  }
  out['suffix'] = with_suffix(out['top'], d / 'random_top_suffix.h5')
  out['keras1'] = to_keras1(out['top'], d / 'random_top_keras1.h5')
  return out


def _max_diff(ours, ref, name):
  assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
  diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(ref))))
  print(f'{name}: max |diff| {diff:.2e} (max |ref| {float(np.max(np.abs(ref))):.2f})')
  assert diff < ATOL, (name, diff)
  return diff


@nnx.jit
def _stage_outputs(backbone, x):
  return backbone.stage_outputs(x, train=False)  # one compilation: faster than eager


@pytest.mark.slow
def test_top_file_matches_keras(files):
  ref_model = resnet50(weights=files['top'], classifier_activation=None)
  # The reference really read the file.
  np.testing.assert_array_equal(np.asarray(ref_model.get_layer('conv1_conv').kernel),
                                files['conv1_kernel'])
  probe = keras.Model(ref_model.inputs,
                      [ref_model.get_layer(n).output for n in STAGES.values()] +
                      [ref_model.output])
  x = np.random.default_rng(1).standard_normal((2, 224, 224, 3)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    ref = [np.asarray(y) for y in probe.predict(x, batch_size=2, verbose=0)]
    weights = convert.convert_file(files['top'])
    assert (weights.source, weights.depth, weights.variant) == ('imagenet_keras', 50, 'v1')
    assert weights.layout == 'keras.applications' and weights.normalization == 'caffe'
    ours = _stage_outputs(convert.backbone_from_weights(weights), jnp.asarray(x))
    logits = ours['stage4'].mean(axis=(1, 2)) @ weights.head['kernel'] + weights.head['bias']
  for name, r in zip(STAGES, ref):
    _max_diff(ours[name], r, name)
  _max_diff(logits, ref[-1], 'logits')
  assert float(np.std(ref[-1])) > 0.1


@pytest.mark.slow
def test_notop_file_matches_keras(files):
  ref_model = resnet50(weights=files['notop'], include_top=False)
  x = np.random.default_rng(2).standard_normal((2, 224, 224, 3)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    ref = ref_model.predict(x, batch_size=2, verbose=0)
    weights = convert.convert_file(files['notop'])
    assert weights.head is None
    features = _stage_outputs(convert.backbone_from_weights(weights), jnp.asarray(x))['stage4']
  _max_diff(features, ref, 'notop features')
  with pytest.raises(ValueError, match='no ImageNet head'):
    convert.imagenet_logits(convert.backbone_from_weights(weights), weights.head, x)


def _same(a, b, head=True):
  assert a.params.keys() == b.params.keys()
  for k in a.params:
    np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=str(k))
  if head:
    for k in ('kernel', 'bias'):
      np.testing.assert_array_equal(a.head[k], b.head[k])


def test_name_variants_convert_identically(files):
  base = convert.convert_file(files['top'])
  suffix = convert.convert_file(files['suffix'])
  assert suffix.names[('stem_conv', 'kernel')] == 'conv1_conv/kernel:0'
  _same(base, suffix)
  old = convert.convert_file(files['keras1'])
  assert old.layout.startswith('keras 1')
  assert old.names[('stages', 1, 0, 'proj_bn', 'var')] == 'bn3a_branch1/bn3a_branch1_running_std:0'
  _same(base, old)
  _same(base, convert.convert_file(files['model_weights']))
  _same(base, convert.convert_file(files['notop']), head=False)
  # Keras itself reads the Keras 1 names (in order) into the same model.
  with h5py.File(files['keras1'], 'r') as f:
    assert 'res2a_branch2a' in f and 'bn2a_branch2a_running_std:0' in f['bn2a_branch2a']


def test_truncated_and_wrong_files(files, tmp_path):
  data = open(files['top'], 'rb').read()
  for size in (len(data) // 2, 4096, 0):
    path = tmp_path / f'trunc{size}.h5'
    path.write_bytes(data[:size])
    with pytest.raises(sources.CorruptWeightsFileError, match=r'truncated|corrupt|empty'):
      convert.convert_file(path, source='imagenet_keras')
  # A layer missing.
  path = tmp_path / 'missing_layer.h5'
  shutil.copy(files['top'], path)
  with h5py.File(path, 'r+') as f:
    del f['conv3_block2_2_bn']
    f.attrs['layer_names'] = [n.encode() for n in map(_str, f.attrs['layer_names'])
                             if n != 'conv3_block2_2_bn']
  with pytest.raises(sources.MissingTensorError, match="'conv3_block2_2_bn'"):
    convert.convert_file(path)
  # A tensor missing from a layer (and from its weight_names).
  shutil.copy(files['top'], path)
  with h5py.File(path, 'r+') as f:
    g = f['conv4_block3_1_bn']
    del g['conv4_block3_1_bn/moving_variance']
    g.attrs['weight_names'] = [w.encode() for w in map(_str, g.attrs['weight_names'])
                              if 'moving_variance' not in w]
  with pytest.raises(sources.MissingTensorError,
                     match="'conv4_block3_1_bn/moving_variance'"):
    convert.convert_file(path)
  # Listed but absent.
  shutil.copy(files['top'], path)
  with h5py.File(path, 'r+') as f:
    del f['conv4_block3_1_bn']['conv4_block3_1_bn/moving_mean']
  with pytest.raises(sources.MissingTensorError, match="conv4_block3_1_bn/moving_mean"):
    convert.convert_file(path)
  # Another architecture: an extra layer (as in ResNet50V2), a different width, no ResNet.
  shutil.copy(files['top'], path)
  with h5py.File(path, 'r+') as f:
    f.attrs['layer_names'] = [n.encode() for n in map(_str, f.attrs['layer_names'])] + [
        b'conv2_block1_preact_bn']
    g = f.create_group('conv2_block1_preact_bn')
    g.attrs['weight_names'] = [b'conv2_block1_preact_bn/gamma']
    g.create_dataset('conv2_block1_preact_bn/gamma', data=np.ones(64, np.float32))
  with pytest.raises(sources.ArchitectureMismatchError, match='conv2_block1_preact_bn'):
    convert.convert_file(path)
  shutil.copy(files['top'], path)
  with h5py.File(path, 'r+') as f:
    del f['conv2_block2_2_conv']['conv2_block2_2_conv/kernel']
    f['conv2_block2_2_conv'].create_dataset('conv2_block2_2_conv/kernel',
                                            data=np.zeros((3, 3, 64, 32), np.float32))
  weights = convert.convert_file(path)
  with pytest.raises(sources.ArchitectureMismatchError,
                     match=r"'conv2_block2_2_conv/kernel' has shape \(3, 3, 64, 32\)"):
    convert.backbone_from_weights(weights)
  vgg = tmp_path / 'vgg.h5'
  with h5py.File(vgg, 'w') as f:
    g = f.create_group('block1_conv1')
    g.attrs['weight_names'] = [b'block1_conv1/kernel']
    g.create_dataset('block1_conv1/kernel', data=np.zeros((3, 3, 3, 8), np.float32))
  with pytest.raises(sources.ArchitectureMismatchError, match='is not VGG-16'):
    convert.convert_file(vgg)
  with pytest.raises(sources.ArchitectureMismatchError, match='ResNet-50.*ResNet-101'):
    convert.convert_file(files['notop'], backbone='resnet101')
  # A torch file under the Keras source, and the other way round.
  pth = tmp_path / 'x.pth'
  pth.write_bytes(b'PK\x03\x04' + b'\0' * 100)
  with pytest.raises(sources.CorruptWeightsFileError, match='not an HDF5 file'):
    convert.convert_file(pth, source='imagenet_keras')
  with pytest.raises(sources.CorruptWeightsFileError, match='HDF5'):
    convert.convert_file(files['notop'], source='imagenet_torchvision')


def test_digest_checks(files, tmp_path, monkeypatch):
  path = tmp_path / 'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'
  shutil.copy(files['notop'], path)
  with pytest.warns(sources.DigestWarning, match='4d473c1dd8becc155b73f8504c6f6626'):
    assert sources.check_digest(path).status == 'mismatch'
  with pytest.raises(sources.DigestMismatchError, match='strict_digest'):
    sources.check_digest(path, strict=True)
  md5 = hashlib.md5(path.read_bytes()).hexdigest()
  official = [f for f in sources.OFFICIAL_FILES if f.filename == path.name]
  assert {f.digest for f in official} == {'4d473c1dd8becc155b73f8504c6f6626',
                                          'a268eb855778b3df3c7506639542a6af'}
  patched = tuple(dataclasses.replace(f, digest=md5) if f.release == 'keras.applications'
                  and f.filename == path.name else f for f in sources.OFFICIAL_FILES)
  monkeypatch.setattr(sources, 'OFFICIAL_FILES', patched)
  check = sources.check_digest(path, strict=True)
  assert check.status == 'ok' and check.official.release == 'keras.applications'


def test_official_table():
  top = [f for f in sources.OFFICIAL_FILES
         if f.filename == 'resnet50_weights_tf_dim_ordering_tf_kernels.h5']
  assert {(f.digest, f.url) for f in top} == {
      ('2cb95161c43110f7111970584f804107', 'https://storage.googleapis.com/tensorflow/'
       'keras-applications/resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5'),
      ('a7b3fe01876f51b976af0dea6bc144eb', 'https://github.com/fchollet/deep-learning-models/'
       'releases/download/v0.2/resnet50_weights_tf_dim_ordering_tf_kernels.h5')}
  default = sources.default_file('imagenet_keras', 'resnet50')
  assert default.filename == 'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'
  assert default.digest == '4d473c1dd8becc155b73f8504c6f6626'


@pytest.mark.slow
def test_load_pretrained_backbone_and_cli(files, tmp_path, capsys):
  config = default_config.get_config()  # the paper's setting: Keras ResNet-50 v1 + SPP
  config.pretrained.path = files['notop']
  config.pretrained.cache_dir = str(tmp_path / 'cache')
  model = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=4,
                                                     rngs=nnx.Rngs(0)))
  with pytest.warns(sources.DigestWarning):
    assert convert.load_pretrained_backbone(model, config.pretrained, config.model) == 'caffe'
  expected = convert.convert_file(files['notop'])
  for path in [('stem_conv', 'bias'), ('stages', 3, 2, 'bn3', 'var'),
               ('stages', 1, 0, 'proj_conv', 'kernel')]:
    var = model.backbone
    for p in path:
      var = var[p] if isinstance(p, int) else getattr(var, p)
    np.testing.assert_array_equal(np.asarray(var[...]), expected.params[path])
  assert convert.is_converted_dir(next((tmp_path / 'cache' / 'converted').iterdir()))
  # The command line on the file with the top.
  assert convert.main([files['top'], '--out', str(tmp_path / 'out')]) == 0
  text = capsys.readouterr().out
  for expected_text in ('ResNet-50 v1', 'keras.applications', '1000 classes', "'caffe'",
                        'shapes verified'):
    assert expected_text in text, (expected_text, text)


# ---------------------------------------------------------------------------------------
# VGG-16 (the paper's Table 3).

VGG_STAGES = {'stem': 'block1_conv2', 'stage1': 'block2_conv2', 'stage2': 'block3_conv3',
              'stage3': 'block4_conv3', 'stage4': 'block5_conv3'}


@pytest.fixture(scope='module')
def vgg_files(tmp_path_factory):
  """Random VGG-16 files: notop as keras.applications writes it, and one with the top's
  layers (flatten, fc1, fc2, predictions) 64 wide instead of 4096 (400 MB of weights)."""
  d = tmp_path_factory.mktemp('keras_vgg')
  with fast_init():
    base = keras.applications.VGG16(weights=None, include_top=False,
                                    input_shape=(224, 224, 3))
  x = keras.layers.Flatten(name='flatten')(base.output)
  x = keras.layers.Dense(64, activation='relu', name='fc1')(x)
  x = keras.layers.Dense(64, activation='relu', name='fc2')(x)
  top = keras.Model(base.inputs, keras.layers.Dense(1000, name='predictions')(x))
  randomize(top, seed=3)
  return {'notop': write_legacy_h5(base, d / 'vgg16_notop.h5'),
          'top': write_legacy_h5(top, d / 'vgg16_top.h5'), 'top_model': top}


def test_vgg16_files_match_keras(vgg_files):
  with fast_init():  # Keras' own reader of the notop file is the reference
    ref_model = keras.applications.VGG16(weights=vgg_files['notop'], include_top=False)
  probe = keras.Model(ref_model.inputs,
                      [ref_model.get_layer(n).output for n in VGG_STAGES.values()])
  x = np.random.default_rng(4).standard_normal((1, 224, 224, 3)).astype(np.float32)
  with jax.default_matmul_precision('highest'):
    ref = probe.predict(x, verbose=0)
    ref_logits = vgg_files['top_model'].predict(x, verbose=0)
    notop = convert.convert_file(vgg_files['notop'])
    assert (notop.backbone, notop.variant, notop.head) == ('vgg16', '', None)
    assert notop.normalization == 'caffe'
    ours = _stage_outputs(convert.backbone_from_weights(notop), jnp.asarray(x))
    top = convert.convert_file(vgg_files['top'], backbone='vgg16')
    _same(notop, top, head=False)
    logits = convert.imagenet_head(convert.backbone_from_weights(top), top.head,
                                   ours['stage4'])
  for name, r in zip(VGG_STAGES, ref):
    _max_diff(ours[name], r, name)
  _max_diff(logits, ref_logits, 'logits')
  with pytest.raises(sources.ArchitectureMismatchError, match='Keras VGG-16 weights.*ResNet-50'):
    convert.convert_file(vgg_files['notop'], backbone='resnet50')


def test_vgg16_official_files():
  assert sources.default_file('imagenet_keras', 'vgg16').url == (
      'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/'
      'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
  # md5s as keras/src/applications/vgg16.py checks them.
  assert {f.digest for f in sources.official_files(backbone='vgg16', source='imagenet_keras')
          } == {'6d6bbae143d832006294945121d1f1fc', '64373286793e3c8b2b4e3219cbf3544b'}
