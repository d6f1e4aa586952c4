"""torchvision weights -> v1.5 ResNet: logits and stage activations against a torch reference.

The reference is a minimal torch reimplementation of torchvision's ResNet with its exact
module names, so that `load_state_dict(strict=True)` accepts the keys of the official
files; random weights with randomized BatchNorm statistics are written in the real file
formats (.pth zip and legacy, .safetensors) and read independently by torch.
"""

import collections
import functools
import hashlib
import http.server
import os
import pickle
import shutil
import threading
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
from torch import nn  # pylint: disable=g-import-not-at-top

from configs import default as default_config  # pylint: disable=g-import-not-at-top
from spp_resnet import models  # pylint: disable=g-import-not-at-top
from spp_resnet.weights import convert, sources  # pylint: disable=g-import-not-at-top
from spp_resnet.weights import torchvision as tv  # pylint: disable=g-import-not-at-top

ATOL = 1e-4

# ---------------------------------------------------------------------------------------
# Reference: torchvision's ResNet (v1.5) with torchvision's module names.


def conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv1x1(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1, self.bn1 = conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1, self.bn1 = conv1x1(cin, planes), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
    self.conv3, self.bn3 = conv1x1(planes, planes * 4), nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(nn.Module):
  def __init__(self, block, layers, num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2)
    self.layer3 = self._make_layer(block, 256, layers[2], 2)
    self.layer4 = self._make_layer(block, 512, layers[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def stage_outputs(self, x):
    out = {'stem': self.maxpool(self.relu(self.bn1(self.conv1(x))))}
    x = out['stem']
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
      out[f'stage{i}'] = x
    out['logits'] = self.fc(torch.flatten(self.avgpool(x), 1))
    return out


ARCHS = {18: (BasicBlock, [2, 2, 2, 2]), 50: (Bottleneck, [3, 4, 6, 3])}


def random_torch_resnet(depth, seed=0):
  """Random weights, BN statistics and affine parameters randomized (not 0/1)."""
  torch.manual_seed(seed)
  model = TorchResNet(*ARCHS[depth])
  with torch.no_grad():
    last_bn = ('bn3' if depth >= 50 else 'bn2', 'downsample.1')
    for name, m in model.named_modules():
      if isinstance(m, nn.BatchNorm2d):
        # Small gains at the end of each residual branch keep activations O(1) over depth.
        if name.endswith(last_bn):
          m.weight.uniform_(0.1, 0.4)
        else:
          m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(1234)
    model.fc.weight.normal_(0.0, 0.05)
    model.fc.bias.normal_(0.0, 0.1)
  return model.eval()


@functools.lru_cache(maxsize=None)
def _reference(depth):
  return random_torch_resnet(depth)


def save_pth(state_dict, path, legacy=False):
  torch.save(state_dict, path, _use_new_zipfile_serialization=not legacy)
  return str(path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('tv')
  out = {}
  for depth in (18, 50):
    sd = _reference(depth).state_dict()
    out[depth] = save_pth(sd, d / f'random_resnet{depth}.pth')
  sd18 = _reference(18).state_dict()
  out['legacy18'] = save_pth(sd18, d / 'legacy_resnet18.pth', legacy=True)
  # Files older than torch 0.4 have no num_batches_tracked.
  old = collections.OrderedDict((k, v) for k, v in sd18.items()
                                if not k.endswith('num_batches_tracked'))
  out['old18'] = save_pth(old, d / 'old_resnet18.pth', legacy=True)
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: v.contiguous() for k, v in sd18.items()}, str(d / 'resnet18.safetensors'))
  out['st18'] = str(d / 'resnet18.safetensors')
  out['dir'] = d
  return out


def torch_reference_outputs(path, depth, x_nhwc):
  """Loads the file with torch (weights_only) into a fresh model, strict=True."""
  model = TorchResNet(*ARCHS[depth]).eval()
  model.load_state_dict(torch.load(path, weights_only=True), strict=True)
  with torch.no_grad():
    out = model.stage_outputs(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)).contiguous())
  return {k: (v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy())
          for k, v in out.items()}


@nnx.jit
def _stage_outputs(backbone, x):
  return backbone.stage_outputs(x, train=False)  # one compilation: faster than eager


def jax_outputs(weights, x_nhwc):
  backbone = convert.backbone_from_weights(weights)
  with jax.default_matmul_precision('highest'):
    out = _stage_outputs(backbone, jnp.asarray(x_nhwc))
    pooled = out['stage4'].mean(axis=(1, 2))
    out['logits'] = pooled @ weights.head['kernel'] + weights.head['bias']
  return {k: np.asarray(v) for k, v in out.items()}


def _compare(ours, ref, keys):
  diffs = {}
  for k in keys:
    assert ours[k].shape == ref[k].shape, k
    diffs[k] = float(np.max(np.abs(ours[k] - ref[k])))
    scale = float(np.max(np.abs(ref[k])))
    print(f'{k}: max |diff| {diffs[k]:.2e} (max |ref| {scale:.2f})')
    assert diffs[k] < ATOL, (k, diffs[k])
  return diffs


@pytest.mark.slow
@pytest.mark.parametrize('depth,batch', [(50, 2), (18, 1)])
def test_logits_and_stages_match_torch(files, depth, batch):
  x = np.random.default_rng(depth).standard_normal((batch, 224, 224, 3)).astype(np.float32)
  ref = torch_reference_outputs(files[depth], depth, x)
  weights = convert.convert_file(files[depth], backbone=f'resnet{depth}')
  assert weights.source == 'imagenet_torchvision' and weights.variant == 'v1.5'
  assert weights.normalization == 'imagenet'
  ours = jax_outputs(weights, x)
  _compare(ours, ref, ['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'logits'])
  assert float(np.std(ref['logits'])) > 0.1  # a real signal, not ~0 everywhere
  if depth == 18:  # the user-facing helper computes the same logits
    with jax.default_matmul_precision('highest'):
      logits = convert.imagenet_logits(convert.backbone_from_weights(weights), weights.head,
                                       jnp.asarray(x))
    assert float(np.max(np.abs(np.asarray(logits) - ref['logits']))) < ATOL


def _same(a: convert.ConvertedWeights, b: convert.ConvertedWeights):
  assert a.params.keys() == b.params.keys()
  for k in a.params:
    np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=str(k))
  for k in ('kernel', 'bias'):
    np.testing.assert_array_equal(a.head[k], b.head[k])


def test_formats_and_readers_agree(files):
  base = convert.convert_file(files[18], reader='torch')
  assert base.file_format == 'torch zip' and base.depth == 18
  for key in (18, 'legacy18', 'old18'):
    for reader in ('torch', 'pure'):
      _same(base, convert.convert_file(files[key], reader=reader))
  st = convert.convert_file(files['st18'])
  assert st.file_format == 'safetensors'
  _same(base, st)


def test_pure_reader_equals_torch_load(tmp_path):
  torch.manual_seed(0)
  sd = collections.OrderedDict(
      w=torch.randn(4, 3, 2, 2), t=torch.randn(5, 6).t(), s=torch.randn(10)[2:7],
      h=torch.randn(3).half(), bf=torch.randn(3).bfloat16(), n=torch.tensor(7),
      i=torch.arange(6, dtype=torch.int32).reshape(2, 3), b=torch.tensor([True, False]))
  sd['shared'] = sd['w'][1]  # a view sharing the storage of another tensor
  for legacy in (False, True):
    path = save_pth(sd, tmp_path / f'x{legacy}.pth', legacy=legacy)
    ours = tv.read_pth_pure(path)
    ref = torch.load(path, weights_only=True)
    assert list(ours) == list(ref)
    for k, v in ref.items():
      expected = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
      got = ours[k].astype(np.float32) if v.dtype == torch.bfloat16 else ours[k]
      assert got.dtype == expected.dtype and got.shape == expected.shape, k
      np.testing.assert_array_equal(got, expected, err_msg=k)


class _Boom:
  def __reduce__(self):
    return (os.system, ('echo pwned > /dev/null',))


def test_pure_reader_runs_no_code(tmp_path):
  # A zip checkpoint whose pickle calls os.system, and a legacy-format one.
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('evil/data.pkl', pickle.dumps({'x': _Boom()}, protocol=2))
    z.writestr('evil/byteorder', 'little')
    z.writestr('evil/version', '3\n')
  with pytest.raises(sources.UnsafePickleError, match='os.system|posix.system'):
    tv.read_pth_pure(path)
  legacy = tmp_path / 'evil_legacy.pth'
  with open(legacy, 'wb') as f:
    for obj in (tv._LEGACY_MAGIC, 1001, {'little_endian': True}):
      pickle.dump(obj, f, protocol=2)
    pickle.dump({'x': _Boom()}, f, protocol=2)
  with pytest.raises(sources.UnsafePickleError):
    tv.read_pth_pure(legacy)
  for evil in (path, legacy):  # torch.load(weights_only=True) refuses them too
    with pytest.raises(sources.UnsafePickleError):
      tv.read_pth_torch(evil)


@pytest.mark.parametrize('reader', ['torch', 'pure'])
def test_truncated_file(files, tmp_path, reader):
  data = open(files[18], 'rb').read()
  path = tmp_path / 'truncated.pth'
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(sources.CorruptWeightsFileError, match='truncated|corrupt'):
    convert.convert_file(path, reader=reader)
  legacy = open(files['legacy18'], 'rb').read()
  path.write_bytes(legacy[:len(legacy) - 1000])
  with pytest.raises(sources.CorruptWeightsFileError, match='truncated|corrupt'):
    convert.convert_file(path, reader=reader)
  st = open(files['st18'], 'rb').read()
  path = tmp_path / 'truncated.safetensors'
  path.write_bytes(st[:len(st) // 2])
  with pytest.raises(sources.CorruptWeightsFileError, match='truncated'):
    convert.convert_file(path)


def test_wrong_architecture_and_missing_tensor(files, tmp_path):
  with pytest.raises(sources.ArchitectureMismatchError,
                     match=r"ResNet-18 weights.*ResNet-50.*config.model.backbone='resnet50'"):
    convert.convert_file(files[18], backbone='resnet50')
  sd = torch.load(files[18], weights_only=True)
  missing = collections.OrderedDict((k, v) for k, v in sd.items()
                                    if k != 'layer3.1.bn2.running_var')
  with pytest.raises(sources.MissingTensorError, match=r"'layer3\.1\.bn2\.running_var'"):
    convert.convert_file(save_pth(missing, tmp_path / 'missing.pth'))
  # Same keys, other shapes (a wider network): the error names the tensor.
  wide = collections.OrderedDict(sd)
  wide['layer2.0.conv1.weight'] = torch.zeros(256, 64, 3, 3)
  weights = convert.convert_file(save_pth(wide, tmp_path / 'wide.pth'))
  with pytest.raises(sources.ArchitectureMismatchError, match=r"'layer2\.0\.conv1\.weight'"):
    convert.backbone_from_weights(weights)
  extra = collections.OrderedDict(sd, **{'layer1.0.conv1.bias': torch.zeros(64)})
  with pytest.raises(sources.ArchitectureMismatchError, match=r'layer1\.0\.conv1\.bias'):
    convert.convert_file(save_pth(extra, tmp_path / 'extra.pth'))
  with pytest.raises(sources.ArchitectureMismatchError, match='not a torchvision ResNet'):
    convert.convert_file(save_pth({'features.0.weight': torch.zeros(3)}, tmp_path / 'v.pth'))


def test_digest_checks(files, tmp_path, monkeypatch):
  path = tmp_path / 'resnet18-f37072fd.pth'
  shutil.copy(files[18], path)
  with pytest.warns(sources.DigestWarning, match='does not match the official sha256 f37072fd'):
    check = sources.check_digest(path)
  assert check.status == 'mismatch'
  with pytest.raises(sources.DigestMismatchError, match='strict_digest'):
    sources.check_digest(path, strict=True)
  # The same file with its true digest in the official table passes, even strictly.
  sha = hashlib.sha256(path.read_bytes()).hexdigest()
  official = sources.OfficialFile(path.name, 'https://example.invalid/' + path.name,
                                  'imagenet_torchvision', 'resnet18', True, 'sha256', sha[:8],
                                  'TEST')
  monkeypatch.setattr(sources, 'OFFICIAL_FILES', (official,))
  check = sources.check_digest(path, strict=True)
  assert check.status == 'ok' and check.official == official
  # Renamed: identified by content.
  renamed = tmp_path / 'weights.pth'
  shutil.copy(path, renamed)
  assert sources.check_digest(renamed, strict=True).official == official
  # torch.hub convention for other names: the hex digits in the name begin the sha256.
  hub = tmp_path / f'resnet18-custom-{sha[:10]}.pth'
  shutil.copy(path, hub)
  monkeypatch.setattr(sources, 'OFFICIAL_FILES', ())
  assert sources.check_digest(hub, strict=True).status == 'ok'
  with pytest.warns(sources.DigestWarning, match='cannot be verified'):
    assert sources.check_digest(renamed).status == 'unknown'


def test_official_table():
  names = {f.filename for f in sources.OFFICIAL_FILES if f.source == 'imagenet_torchvision'}
  for name in ('resnet50-0676ba61.pth', 'resnet50-11ad3fa6.pth', 'resnet50-19c8e357.pth',
               'resnet18-f37072fd.pth', 'resnet34-b627a593.pth', 'resnet101-63fe2227.pth',
               'resnet152-394f9c45.pth'):
    assert name in names
  for f in sources.OFFICIAL_FILES:
    if f.source == 'imagenet_torchvision':
      assert f.url == 'https://download.pytorch.org/models/' + f.filename
      assert f.filename.startswith(f.backbone) and f.filename.endswith(f'-{f.digest}.pth')
  for depth in (18, 34, 50, 101, 152):
    assert sources.default_file('imagenet_torchvision',
                                f'resnet{depth}').release == 'IMAGENET1K_V1'


def _no_other_caches(monkeypatch, tmp_path):
  monkeypatch.setenv('KERAS_HOME', str(tmp_path / 'keras_home'))
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
  monkeypatch.delenv('SPP_RESNET_OFFLINE', raising=False)


def test_offline_message(tmp_path, monkeypatch, capsys):
  _no_other_caches(monkeypatch, tmp_path)
  url = 'http://127.0.0.1:9/models/resnet18-f37072fd.pth'  # nothing listens on port 9
  official = sources.OfficialFile('resnet18-f37072fd.pth', url, 'imagenet_torchvision',
                                  'resnet18', True, 'sha256', 'f37072fd', 'IMAGENET1K_V1', True)
  monkeypatch.setattr(sources, 'OFFICIAL_FILES', (official,))
  start = time.time()
  with pytest.raises(sources.WeightsUnavailableError) as e:
    sources.resolve_weights_file('imagenet_torchvision', 'resnet18',
                                 cache_dir=str(tmp_path / 'c'), timeout=5)
  assert time.time() - start < 10
  dest = str(tmp_path / 'c' / 'resnet18-f37072fd.pth')
  assert url in str(e.value) and dest in str(e.value)
  assert url in capsys.readouterr().err
  with pytest.raises(sources.WeightsUnavailableError, match='downloads are disabled'):
    sources.resolve_weights_file('imagenet_torchvision', 'resnet18',
                                 cache_dir=str(tmp_path / 'c'), download=False)
  assert not list((tmp_path / 'c').glob('*'))  # no partial file left behind


def test_download_cache_and_torch_hub_cache(files, tmp_path, monkeypatch):
  """A download from a local HTTP server: atomic, digest-checked, then served from cache."""
  _no_other_caches(monkeypatch, tmp_path)
  served = tmp_path / 'served'
  served.mkdir()
  data = open(files[18], 'rb').read()
  sha = hashlib.sha256(data).hexdigest()
  name = f'resnet18-{sha[:8]}.pth'
  (served / name).write_bytes(data)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
  handler.log_message = lambda *a: None
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    url = f'http://127.0.0.1:{server.server_address[1]}/{name}'
    good = sources.OfficialFile(name, url, 'imagenet_torchvision', 'resnet18', True,
                                'sha256', sha[:8], 'TEST', True)
    monkeypatch.setattr(sources, 'OFFICIAL_FILES', (good,))
    cache = tmp_path / 'cache'
    path = sources.resolve_weights_file('imagenet_torchvision', 'resnet18',
                                        cache_dir=str(cache))
    assert path == cache / name and path.read_bytes() == data
    (served / name).unlink()  # now only the cache has it
    assert sources.resolve_weights_file('imagenet_torchvision', 'resnet18',
                                        cache_dir=str(cache)) == path
    # An official file name as config.pretrained.path: looked up in the cache.
    assert sources.resolve_weights_file('imagenet_torchvision', 'resnet18', path=name,
                                        cache_dir=str(cache)) == path
    with pytest.raises(sources.WeightsUnavailableError, match='config.pretrained.path'):
      sources.resolve_weights_file('imagenet_torchvision', 'resnet18', path='nope.pth',
                                   cache_dir=str(cache))
    # A corrupt download is refused and not kept.
    bad = dataclasses_replace(good, digest='00000000')
    (served / name).write_bytes(data)
    monkeypatch.setattr(sources, 'OFFICIAL_FILES', (bad,))
    with pytest.raises(sources.DigestMismatchError, match='not kept'):
      sources.resolve_weights_file('imagenet_torchvision', 'resnet18',
                                   cache_dir=str(tmp_path / 'c2'))
    assert not list((tmp_path / 'c2').glob('*'))
    # torch.hub's cache is used when present.
    hub = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    shutil.copy(path, hub / name)
    assert sources.resolve_weights_file('imagenet_torchvision', 'resnet18',
                                        cache_dir=str(tmp_path / 'c3')) == hub / name
  finally:
    server.shutdown()


def dataclasses_replace(obj, **kw):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(obj, **kw)


def _config(backbone='resnet18', variant='v1.5', source='imagenet_torchvision', path=''):
  config = default_config.get_config()
  config.model.backbone, config.model.variant = backbone, variant
  config.model.head_hidden = (8,)
  config.pretrained.source, config.pretrained.path = source, path
  return config


def test_load_pretrained_backbone(files, tmp_path, monkeypatch):
  config = _config(path=files[18])
  config.pretrained.cache_dir = str(tmp_path / 'cache')
  model = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=4,
                                                     rngs=nnx.Rngs(0)))
  head_before = model.dense[0].kernel
  with pytest.warns(sources.DigestWarning, match='cannot be verified'):
    norm = convert.load_pretrained_backbone(model, config.pretrained, config.model)
  assert norm == 'imagenet' == sources.WEIGHT_SOURCES['imagenet_torchvision'].normalization
  expected = convert.convert_file(files[18])
  np.testing.assert_array_equal(np.asarray(model.backbone.stages[2][1].conv2.kernel[...]),
                                expected.params[('stages', 2, 1, 'conv2', 'kernel')])
  np.testing.assert_array_equal(np.asarray(model.backbone.stem_bn.var[...]),
                                expected.params[('stem_bn', 'var')])
  assert model.dense[0].kernel is head_before  # the head is left alone
  entries = list((tmp_path / 'cache' / 'converted').iterdir())
  assert len(entries) == 1 and convert.is_converted_dir(entries[0])
  # Second time: the Orbax copy, no conversion.
  monkeypatch.setattr(convert, 'convert_file', lambda *a, **k: pytest.fail('converted again'))
  model2 = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=4,
                                                      rngs=nnx.Rngs(0)))
  with pytest.warns(sources.DigestWarning):
    assert convert.load_pretrained_backbone(model2, config.pretrained, config.model) == 'imagenet'
  np.testing.assert_array_equal(np.asarray(model2.backbone.stages[3][1].bn2.mean[...]),
                                expected.params[('stages', 3, 1, 'bn2', 'mean')])
  # The converted directory itself can be given as the path.
  config.pretrained.path = str(entries[0])
  model3 = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=4,
                                                      rngs=nnx.Rngs(0)))
  assert convert.load_pretrained_backbone(model3, config.pretrained, config.model) == 'imagenet'
  np.testing.assert_array_equal(np.asarray(model3.backbone.stem_conv.kernel[...]),
                                expected.params[('stem_conv', 'kernel')])
  # Strict mode refuses the unverifiable file.
  config.pretrained.path, config.pretrained.strict_digest = files[18], True
  with pytest.raises(sources.DigestMismatchError, match='strict_digest'):
    convert.load_pretrained_backbone(model3, config.pretrained, config.model)


def test_config_compatibility(files):
  model = None
  for config, match in [
      (_config(variant='v1'), r"config.model.variant='v1'.*set config.model.variant='v1.5'"),
      (_config(backbone='resnet50', source='imagenet_keras', variant='v1.5'),
       r"config.model.variant='v1.5'"),
      (_config(backbone='resnet18', source='imagenet_keras', variant='v1'),
       r"config.model.backbone='resnet18'"),
      (_config(source='imagenet_foo'), 'config.pretrained.source'),
  ]:
    with pytest.raises(ValueError, match=match):
      convert.load_pretrained_backbone(model, config.pretrained, config.model)
  # A file of another depth than config.model.backbone.
  config = _config(backbone='resnet34', path=files[18])
  model = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=2,
                                                     rngs=nnx.Rngs(0)))
  with pytest.warns(sources.DigestWarning), pytest.raises(
      sources.ArchitectureMismatchError, match=r"ResNet-18.*config.model.backbone='resnet34'"):
    convert.load_pretrained_backbone(model, config.pretrained, config.model)
  assert convert.load_pretrained_backbone(model, _config(source='').pretrained,
                                          config.model) == 'none'


def test_cli(files, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = tmp_path / 'img.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), np.uint8)).save(image)
  out = tmp_path / 'out'
  rc = convert.main([files[18], '--out', str(out), '--check-image', str(image)])
  text = capsys.readouterr().out
  assert rc == 0, text
  for expected in ('digest:    UNKNOWN', 'ResNet-18 v1.5', 'shapes verified', "'imagenet'",
                   'orbax:', 'top-5'):
    assert expected in text, (expected, text)
  restored = convert.load_converted(out)
  _same(convert.convert_file(files[18]), restored)
  assert convert.main(['--list']) == 0
  assert 'https://download.pytorch.org/models/resnet50-0676ba61.pth' in capsys.readouterr().out
  # Errors are one clear line and a non-zero status.
  assert convert.main([files[18], '--backbone', 'resnet50']) == 1
  assert 'ResNet-18 weights' in capsys.readouterr().err
  assert convert.main([files[18], '--strict']) == 1
  assert 'strict_digest' in capsys.readouterr().err


def test_input_conventions():
  x = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
  imagenet = sources.NORMALIZATIONS['imagenet'].apply(x)
  np.testing.assert_allclose(imagenet, (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                             rtol=1e-5, atol=1e-6)
  caffe = sources.NORMALIZATIONS['caffe'].apply(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(caffe),
                             x[..., ::-1] * 255 - np.array([103.939, 116.779, 123.68]),
                             rtol=1e-5, atol=1e-4)
  assert sources.normalization_for_source('imagenet_keras') == 'caffe'
  assert sources.normalization_for_source('imagenet_torchvision') == 'imagenet'
  assert sources.normalization_for_source('') == 'none'
