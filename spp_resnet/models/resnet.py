"""ResNet backbones (He et al., 2016) in Flax NNX, in the two stride placements in use.

- 'v1'   : as Keras `keras.applications.ResNet50` — the stride of a downsampling
           bottleneck sits on its first 1x1 conv, convolutions have biases, BatchNorm
           epsilon 1.001e-5, momentum 0.99.
- 'v1.5' : as torchvision `resnet50` — the stride sits on the 3x3 conv, convolutions have
           no bias, BatchNorm epsilon 1e-5, momentum 0.9 (torch's 0.1).
Padding is explicit and symmetric in both, as in the reference frameworks (XLA's 'SAME'
pads strided convolutions asymmetrically, which would not match converted weights).

`ibn` adds instance normalization as IBN-Net does (Pan et al., ECCV 2018, "Two at Once:
Enhancing Learning and Generalization Capacities via IBN-Net"; the layout of the authors'
`resnet_ibn.py`). Instance normalization removes each image's own feature statistics
(contrast, brightness, a scanner's intensity profile) in the early layers, where they
mostly carry the site's appearance; BatchNorm keeps the rest discriminative.
- 'a': the first normalization of every block of stages 1-3 normalizes half its
       channels per instance and half per batch.
- 'b': instance normalization replaces the stem's BatchNorm and follows the residual
       sum of the last block of stages 1 and 2.
There are no ImageNet weights for these layouts here: from scratch (or SSL) only.

The attribute names (stem_conv, stages[i][j].conv1, ..., proj_conv) are the contract of
the weight converters in `spp_resnet.weights`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
from flax import nnx

from spp_resnet.models import layers as layers_lib
from spp_resnet.models import ops

Variant = Literal['v1', 'v1.5']
IBN_LAYOUTS = ('', 'a', 'b')


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  block: Literal['basic', 'bottleneck']
  stage_sizes: tuple[int, ...]


RESNET_SPECS = {
    18: ResNetSpec('basic', (2, 2, 2, 2)),
    34: ResNetSpec('basic', (3, 4, 6, 3)),
    50: ResNetSpec('bottleneck', (3, 4, 6, 3)),
    101: ResNetSpec('bottleneck', (3, 4, 23, 3)),
    152: ResNetSpec('bottleneck', (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class _Layers:
  """Conv/BatchNorm factories that carry the variant's conventions and the dtypes."""
  variant: Variant
  dtype: jnp.dtype | None
  rngs: nnx.Rngs

  def conv(self, cin, cout, kernel, stride=1):
    pad = (kernel - 1) // 2
    return nnx.Conv(
        cin, cout, (kernel, kernel), (stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=self.variant == 'v1',
        kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
        conv_general_dilated=ops.conv_general_dilated, dtype=self.dtype, rngs=self.rngs)

  @property
  def epsilon(self):
    return 1.001e-5 if self.variant == 'v1' else 1e-5

  def bn(self, features, zero_scale=False):
    return nnx.BatchNorm(
        features, epsilon=self.epsilon, momentum=0.99 if self.variant == 'v1' else 0.9,
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        dtype=self.dtype, rngs=self.rngs)

  def instance_norm(self, features):
    return InstanceNorm(features, epsilon=self.epsilon, dtype=self.dtype, rngs=self.rngs)

  def ibn(self, features):
    return InstanceBatchNorm(features, self)


class InstanceNorm(nnx.InstanceNorm):
  """Instance normalization called like BatchNorm (no running statistics to switch)."""

  def __call__(self, x, *, use_running_average: bool | None = None):
    del use_running_average
    return super().__call__(x)


class InstanceBatchNorm(nnx.Module):
  """IBN-Net's IBN layer: the first half of the channels normalized per instance, the
  rest by BatchNorm."""

  def __init__(self, features: int, layers: _Layers):
    self.split = features // 2
    self.instance = layers.instance_norm(self.split)
    self.batch = layers.bn(features - self.split)

  def __call__(self, x, *, use_running_average: bool):
    return jnp.concatenate(
        [self.instance(x[..., :self.split]),
         self.batch(x[..., self.split:], use_running_average=use_running_average)], axis=-1)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  expansion = 1

  def __init__(self, cin: int, width: int, stride: int, layers: _Layers, ibn: str = ''):
    self.conv1 = layers.conv(cin, width, 3, stride)
    self.bn1 = layers.ibn(width) if ibn == 'a' else layers.bn(width)
    self.conv2 = layers.conv(width, width, 3)
    self.bn2 = layers.bn(width)
    self.has_proj = stride != 1 or cin != width
    if self.has_proj:
      self.proj_conv = layers.conv(cin, width, 1, stride)
      self.proj_bn = layers.bn(width)
    self.sum_norm = layers.instance_norm(width) if ibn == 'b' else None

  def __call__(self, x, *, train: bool):
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    if self.has_proj:
      x = self.proj_bn(self.proj_conv(x), use_running_average=not train)
    return nnx.relu(_normalize_sum(self.sum_norm, x + y))


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152)."""
  expansion = 4

  def __init__(self, cin: int, width: int, stride: int, layers: _Layers, ibn: str = ''):
    stride_1x1, stride_3x3 = (stride, 1) if layers.variant == 'v1' else (1, stride)
    cout = width * self.expansion
    self.conv1 = layers.conv(cin, width, 1, stride_1x1)
    self.bn1 = layers.ibn(width) if ibn == 'a' else layers.bn(width)
    self.conv2 = layers.conv(width, width, 3, stride_3x3)
    self.bn2 = layers.bn(width)
    self.conv3 = layers.conv(width, cout, 1)
    self.bn3 = layers.bn(cout)
    self.has_proj = stride != 1 or cin != cout
    if self.has_proj:
      self.proj_conv = layers.conv(cin, cout, 1, stride)
      self.proj_bn = layers.bn(cout)
    self.sum_norm = layers.instance_norm(cout) if ibn == 'b' else None

  def __call__(self, x, *, train: bool):
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = nnx.relu(self.bn2(self.conv2(y), use_running_average=not train))
    y = self.bn3(self.conv3(y), use_running_average=not train)
    if self.has_proj:
      x = self.proj_bn(self.proj_conv(x), use_running_average=not train)
    return nnx.relu(_normalize_sum(self.sum_norm, x + y))


def _normalize_sum(norm: InstanceNorm | None, x):
  return x if norm is None else norm(x)


def _block_ibn(ibn: str, stage: int, block: int, num_blocks: int) -> str:
  """The IBN-Net layout of a block: 'a' in stages 1-3; 'b' on stages 1-2's last block."""
  if ibn == 'a' and stage < 3:
    return 'a'
  if ibn == 'b' and stage < 2 and block == num_blocks - 1:
    return 'b'
  return ''


class ResNet(layers_lib.Backbone):
  """ResNet feature extractor: [B, H, W, C] -> [B, H/32, W/32, 512 * expansion].

  stem = 7x7 conv + max pool; stage1..stage4 = conv2_x..conv5_x (Keras names).
  """

  def __init__(self, depth: int, variant: Variant = 'v1.5', *, in_channels: int = 3,
               ibn: str = '', dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    if depth not in RESNET_SPECS:
      raise ValueError(f'ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}')
    if variant not in layers_lib.RESNET_VARIANTS:
      raise ValueError(f"ResNet variant must be 'v1' or 'v1.5', got {variant!r}")
    if ibn not in IBN_LAYOUTS:
      raise ValueError(f"ResNet ibn (config.model.ibn) must be '', 'a' or 'b', got {ibn!r}")
    self.depth, self.variant = depth, variant
    self.arch = f'resnet{depth}'
    spec = RESNET_SPECS[depth]
    block_cls = Bottleneck if spec.block == 'bottleneck' else BasicBlock
    layers = _Layers(variant, dtype, rngs)
    self.stem_conv = layers.conv(in_channels, 64, 7, 2)
    self.stem_bn = layers.instance_norm(64) if ibn == 'b' else layers.bn(64)
    cin, stages = 64, []
    for i, (num_blocks, width) in enumerate(zip(spec.stage_sizes, STAGE_WIDTHS)):
      blocks = []
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(block_cls(cin, width, stride, layers, _block_ibn(ibn, i, j, num_blocks)))
        cin = width * block_cls.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.num_features = cin

  def stem(self, x, *, train: bool):
    x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    # Zero padding before the max pool (Keras) equals -inf padding (torch): x >= 0.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
