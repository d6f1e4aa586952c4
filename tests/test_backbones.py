"""The paper's Table 3 backbones (VGG-16, GoogLeNet, AlexNet, LeNet-5): architecture,
SPP on their feature maps, freezing, and torchvision weights against torch.

The torch references are minimal reimplementations of torchvision's `vgg16[_bn]`,
`alexnet` and `googlenet` with its exact module names, so that `load_state_dict(strict=
True)` takes the keys of the official files; random weights (BatchNorm statistics
randomized) are written with `torch.save` as the official files are, converted, and the
feature maps of every stage and the ImageNet logits compared in eval mode on a real MRI
slice. Parameter counts are pinned to torchvision's published totals.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
from torch import nn  # pylint: disable=g-import-not-at-top
# The .pth writer and cache isolation of the ResNet tests (tests/ is on sys.path).
import test_weights_torchvision as resnet_tests  # pylint: disable=g-import-not-at-top

from configs import default as default_config  # pylint: disable=g-import-not-at-top
from spp_resnet import models  # pylint: disable=g-import-not-at-top
from spp_resnet.training import train  # pylint: disable=g-import-not-at-top
from spp_resnet.weights import convert, sources  # pylint: disable=g-import-not-at-top

ATOL = 1e-4
TABLE3 = ('vgg16', 'vgg16_bn', 'googlenet', 'alexnet', 'lenet')
SLICE = (pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' /
         'bohaju_brain_tumor_sample' / 'Brain Tumor' / 'Brain Tumor' / 'Image1.jpg')


def num_params(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def abstract(name, **kwargs):
  return nnx.eval_shape(lambda: models.BACKBONES[name](**kwargs, rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------------------
# Architecture.


@pytest.mark.parametrize('name,expected', [
    ('vgg16', 138_357_544 - 123_642_856),     # torchvision vgg16 minus its classifier
    ('vgg16_bn', 138_365_992 - 123_642_856),  # vgg16_bn minus the same classifier
    ('alexnet', 61_100_840 - 58_631_144),     # alexnet minus its classifier
    ('googlenet', 6_624_904 - 1_025_000),     # googlenet(aux_logits=False) minus fc
    ('lenet', 456 + 2_416 + 48_120),          # C1, C3, C5 (5x5 kernels and biases)
])
def test_parameter_counts(name, expected):
  assert num_params(abstract(name)) == expected


@pytest.mark.parametrize('name', TABLE3)
@pytest.mark.parametrize('size', [224, 64])
def test_spp_on_every_backbone(name, size):
  """Fixed-length SPP features from each backbone's last map at 224 and 64 px."""
  model = nnx.eval_shape(lambda: models.Classifier(
      models.BACKBONES[name](rngs=nnx.Rngs(0)), num_classes=2, head_hidden=(8,),
      rngs=nnx.Rngs(1)))
  graphdef, state = nnx.split(model)

  def shapes(state, x):
    model = nnx.merge(graphdef, state)
    features = model.backbone(x, train=False)
    return features, model.pool(features), model(x, train=False)

  features, pooled, logits = jax.eval_shape(
      shapes, state, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  channels = model.backbone.num_features
  assert features.shape[-1] == channels and min(features.shape[1:3]) >= 1
  assert pooled.shape == (2, channels * 81) and logits.shape == (2, 1)


def test_feature_map_sizes_at_224():
  """The last pooling is replaced by SPP: VGG and AlexNet keep conv5's larger map."""
  expected = {'vgg16': (14, 512), 'googlenet': (7, 1024), 'alexnet': (13, 256),
              'lenet': (49, 120)}
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  for name, (size, channels) in expected.items():
    graphdef, state = nnx.split(abstract(name))
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, x)
    assert out.shape == (1, size, size, channels), name


def test_variant_is_checked():
  with pytest.raises(ValueError, match="VGG-16 variant must be 'v1' or 'v1.5'"):
    abstract('vgg16', variant='v2')
  assert num_params(abstract('lenet', variant='v1')) == num_params(abstract('lenet'))


@pytest.mark.parametrize('name', TABLE3)
def test_freezing_covers_stem_and_stages(name):
  """Every backbone parameter is in the stem or a stage, so freeze.backbone_up_to works."""
  backbone = abstract(name)
  paths = [('backbone',) + tuple(p) for p, _ in nnx.to_flat_state(nnx.state(backbone,
                                                                             nnx.Param))]
  assert all(str(p[1]).startswith('stem') or p[1] == 'stages' for p in paths)
  for k, up_to in enumerate(('stem', 'stage1', 'stage2', 'stage3', 'stage4')):
    frozen = {p for p in paths if train.frozen_filter(up_to)(p, None)}
    expected = {p for p in paths if str(p[1]).startswith('stem') or
                (p[1] == 'stages' and p[2] < k)}
    assert frozen == expected, up_to
  assert all(train.frozen_filter('all')(p, None) for p in paths)


# ---------------------------------------------------------------------------------------
# References: torchvision's modules, by its names.


class TorchVGG16(nn.Module):
  CFG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512,
         'M']

  def __init__(self, batch_norm, hidden=64):  # torchvision's hidden width is 4096
    super().__init__()
    layers, cin = [], 3
    for v in self.CFG:
      if v == 'M':
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(cin, v, 3, padding=1),
                   *([nn.BatchNorm2d(v)] if batch_norm else []), nn.ReLU()]
        cin = v
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d(7)
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, hidden),
        nn.ReLU(), nn.Dropout(), nn.Linear(hidden, 1000))

  def stage_outputs(self, x):
    """The maps entering each max pool: blocks 1..5 = stem, stage1..stage4."""
    out = []
    for layer in self.features:
      if isinstance(layer, nn.MaxPool2d):
        out.append(x)
      x = layer(x)
    return out, self.classifier(torch.flatten(self.avgpool(x), 1))


class TorchAlexNet(nn.Module):

  def __init__(self, hidden=64):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d(6)
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 6 * 6, hidden), nn.ReLU(), nn.Dropout(),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1000))

  def stage_outputs(self, x):
    out = []
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i in (1, 4, 7, 9, 11):  # after conv1 .. conv5
        out.append(x)
    return out, self.classifier(torch.flatten(self.avgpool(x), 1))


class BasicConv2d(nn.Module):

  def __init__(self, cin, cout, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):

  def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    super().__init__()
    self.branch1 = BasicConv2d(cin, ch1x1, kernel_size=1)
    self.branch2 = nn.Sequential(BasicConv2d(cin, ch3x3red, kernel_size=1),
                                 BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
    self.branch3 = nn.Sequential(BasicConv2d(cin, ch5x5red, kernel_size=1),
                                 BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
    self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                 BasicConv2d(cin, pool_proj, kernel_size=1))

  def forward(self, x):
    return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
  """Kept so that the state dict has the official file's aux1.* / aux2.* tensors."""

  def __init__(self, cin):
    super().__init__()
    self.conv = BasicConv2d(cin, 128, kernel_size=1)
    self.fc1 = nn.Linear(2048, 1024)
    self.fc2 = nn.Linear(1024, 1000)


class TorchGoogLeNet(nn.Module):
  """torchvision's googlenet(transform_input=True) as its pretrained model is built."""

  def __init__(self):
    super().__init__()
    self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
    self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.conv2 = BasicConv2d(64, 64, kernel_size=1)
    self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
    self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
    self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
    self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
    self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
    self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
    self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
    self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
    self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
    self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
    self.aux1, self.aux2 = InceptionAux(512), InceptionAux(528)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(1024, 1000)

  def stage_outputs(self, x):
    channels = [x[:, i:i + 1] * (std / 0.5) + (mean - 0.5) / 0.5
                for i, (mean, std) in enumerate(zip((0.485, 0.456, 0.406),
                                                    (0.229, 0.224, 0.225)))]
    x = self.conv1(torch.cat(channels, 1))
    out = [x]
    for names in (('maxpool1', 'conv2', 'conv3'), ('maxpool2', 'inception3a', 'inception3b'),
                  ('maxpool3', 'inception4a', 'inception4b', 'inception4c', 'inception4d',
                   'inception4e'), ('maxpool4', 'inception5a', 'inception5b')):
      for name in names:
        x = getattr(self, name)(x)
      out.append(x)
    return out, self.fc(torch.flatten(self.avgpool(x), 1))


TORCH_MODELS = {'vgg16': functools.partial(TorchVGG16, batch_norm=False),
                'vgg16_bn': functools.partial(TorchVGG16, batch_norm=True),
                'alexnet': TorchAlexNet, 'googlenet': TorchGoogLeNet}


def random_torch_model(name, seed=0):
  """Random weights: He-scaled convs (activations stay O(1) over depth), random BN."""
  torch.manual_seed(seed)
  model = TORCH_MODELS[name]()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
        if m.bias is not None:
          m.bias.normal_(0.0, 0.1)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(1234)
      elif isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
        m.bias.normal_(0.0, 0.1)
  return model.eval()


def mri_slice(size: int) -> np.ndarray:
  """A real MRI slice (Bohaju sample; noise without ../shared/data), gray replicated to
  RGB, ImageNet-normalized as for torchvision weights: [1, size, size, 3]."""
  if SLICE.is_file():
    from PIL import Image  # pylint: disable=g-import-not-at-top
    gray = np.asarray(Image.open(SLICE).convert('L').resize((size, size), Image.BILINEAR),
                      np.float32) / 255.0
  else:
    gray = np.random.default_rng(0).uniform(size=(size, size)).astype(np.float32)
  rgb = np.repeat(gray[None, :, :, None], 3, axis=-1)
  return sources.NORMALIZATIONS['imagenet'].apply(rgb).astype(np.float32)


@nnx.jit
def _outputs(backbone, x):
  return backbone.stage_outputs(x, train=False)  # one compilation: faster than eager


# Sizes exercise odd maps: GoogLeNet's ceil-mode pools, AlexNet's 6x6 adaptive pool of a
# 4x4 map; VGG-16 at the paper's 224.
@pytest.mark.parametrize('name,size', [('vgg16', 224), ('vgg16_bn', 64), ('alexnet', 160),
                                       ('googlenet', 100)])
@pytest.mark.slow
def test_torchvision_weights_match_torch(name, size, tmp_path):
  model = random_torch_model(name)
  path = resnet_tests.save_pth(model.state_dict(), tmp_path / f'{name}.pth')
  reference = TORCH_MODELS[name]().eval()
  reference.load_state_dict(torch.load(path, weights_only=True), strict=True)
  x = mri_slice(size)
  with torch.no_grad():
    ref_stages, ref_logits = reference.stage_outputs(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  weights = convert.convert_file(path)
  assert (weights.backbone, weights.variant, weights.head is not None) == (name, '', True)
  backbone = convert.backbone_from_weights(weights)
  with jax.default_matmul_precision('highest'):
    ours = _outputs(backbone, jnp.asarray(x))
    logits = convert.imagenet_head(backbone, weights.head, ours['stage4'])
  stages = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')
  assert set(ours) == set(stages)
  for key, ref in zip(stages, ref_stages):
    ref = ref.numpy().transpose(0, 2, 3, 1)
    assert ours[key].shape == ref.shape, key
    np.testing.assert_allclose(ours[key], ref, rtol=0, atol=ATOL, err_msg=key)
  assert float(ours['stage4'].std()) > 0.1  # not a trivially small map
  np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=0, atol=ATOL)


def test_wrong_backbone_and_no_weights(tmp_path, monkeypatch):
  path = resnet_tests.save_pth(random_torch_model('alexnet').state_dict(),
                               tmp_path / 'alexnet.pth')
  with pytest.raises(sources.ArchitectureMismatchError,
                     match=r"AlexNet weights.*VGG-16.*set it to 'alexnet'"):
    convert.convert_file(path, backbone='vgg16')
  assert sources.source_fits_backbone('imagenet_torchvision', 'googlenet')
  assert sources.source_fits_backbone('imagenet_keras', 'vgg16')
  assert not sources.source_fits_backbone('imagenet_keras', 'googlenet')
  assert not sources.source_fits_backbone('imagenet_torchvision', 'lenet')
  assert sources.source_fits_backbone('', 'lenet')
  config = default_config.get_config()
  for backbone, source, message in (
      ('lenet', 'imagenet_torchvision', "no ImageNet weights for lenet.*source=''"),
      ('googlenet', 'imagenet_keras', "googlenet has weights from 'imagenet_torchvision'")):
    config.model.backbone, config.pretrained.source = backbone, source
    with pytest.raises(ValueError, match=message):
      convert.check_compatibility(config.pretrained, config.model)
  # Offline, nothing cached: one message with the official address and where to put it.
  resnet_tests._no_other_caches(monkeypatch, tmp_path)  # pylint: disable=protected-access
  with pytest.raises(sources.WeightsUnavailableError) as e:
    sources.resolve_weights_file('imagenet_torchvision', 'googlenet',
                                 cache_dir=str(tmp_path / 'cache'), download=False)
  assert 'https://download.pytorch.org/models/googlenet-1378be20.pth' in str(e.value)
  assert str(tmp_path / 'cache' / 'googlenet-1378be20.pth') in str(e.value)


@pytest.mark.slow
def test_training_loads_weights_into_the_classifier(tmp_path):
  """config.pretrained with an AlexNet file: the backbone of the SPP classifier gets it,
  converted once and cached; the normalization is torchvision's."""
  model_torch = random_torch_model('alexnet')
  path = resnet_tests.save_pth(model_torch.state_dict(),
                               tmp_path / 'alexnet-owt-7be5be79.pth')
  config = default_config.get_config()
  config.model.backbone, config.model.head_hidden = 'alexnet', (8,)
  config.pretrained = ml_collections.ConfigDict({
      'source': 'imagenet_torchvision', 'path': path, 'cache_dir': str(tmp_path / 'cache'),
      'strict_digest': False})
  model = models.create_model(config.model, num_classes=2, rngs=nnx.Rngs(0))
  with pytest.warns(sources.DigestWarning):  # random weights under an official name
    assert convert.load_pretrained_backbone(model, config.pretrained,
                                            config.model) == 'imagenet'
  conv1 = np.asarray(model.backbone.stem_layers[0].conv.kernel[...])
  np.testing.assert_array_equal(conv1, model_torch.features[0].weight.detach().numpy()
                                .transpose(2, 3, 1, 0))
  assert list((tmp_path / 'cache' / 'converted').iterdir())
