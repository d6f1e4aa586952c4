"""ResNet backbones (He et al., 2016) in Flax NNX, in the two stride placements in use.

- 'v1'   : as Keras `keras.applications.ResNet50` — the stride of a downsampling
           bottleneck sits on its first 1x1 conv, convolutions have biases, BatchNorm
           epsilon 1.001e-5, momentum 0.99.
- 'v1.5' : as torchvision `resnet50` — the stride sits on the 3x3 conv, convolutions have
           no bias, BatchNorm epsilon 1e-5, momentum 0.9 (torch's 0.1).
Padding is explicit and symmetric in both, as in the reference frameworks (XLA's 'SAME'
pads strided convolutions asymmetrically, which would not match converted weights).

The attribute names (stem_conv, stages[i][j].conv1, ..., proj_conv) are the contract of
the weight converters in `spp_resnet.weights`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

Variant = Literal['v1', 'v1.5']


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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated`, but one matmul over patches when the map is tiny.

  XLA's CPU convolution is pathologically slow when the feature map is smaller than the
  kernel: a 3x3 conv of 512 channels on a 2x2 map (ResNet's last stage at 48-64 px
  inputs) took 264 ms for a batch of 32, 2.2 s with 1024 channels, against 3.7 ms as
  patches @ kernel (jax 0.10.2, 2-core CPU; docs/benchmarks.md). Both compute the same
  convolution; maps at least as large as the kernel (every map at 224 px) take lax's.
  """
  height, width = lhs.shape[1:3]
  kh, kw = rhs.shape[:2]
  plain = (height >= kh and width >= kw) or feature_group_count != 1 or any(
      d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if plain or isinstance(padding, str):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  (pt, pb), (pl, pr) = padding
  sh, sw = window_strides
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  out_h = (height + pt + pb - kh) // sh + 1
  out_w = (width + pl + pr - kw) // sw + 1
  patches = jnp.concatenate(
      [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)  # (i, j, channel): HWIO order
  return jnp.dot(patches, rhs.reshape(kh * kw * rhs.shape[2], rhs.shape[3]),
                 precision=precision,
                 preferred_element_type=kwargs.get('preferred_element_type'))


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
        conv_general_dilated=conv_general_dilated, dtype=self.dtype, rngs=self.rngs)

  def bn(self, features, zero_scale=False):
    v1 = self.variant == 'v1'
    return nnx.BatchNorm(
        features, epsilon=1.001e-5 if v1 else 1e-5, momentum=0.99 if v1 else 0.9,
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        dtype=self.dtype, rngs=self.rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  expansion = 1

  def __init__(self, cin: int, width: int, stride: int, layers: _Layers):
    self.conv1 = layers.conv(cin, width, 3, stride)
    self.bn1 = layers.bn(width)
    self.conv2 = layers.conv(width, width, 3)
    self.bn2 = layers.bn(width)
    self.has_proj = stride != 1 or cin != width
    if self.has_proj:
      self.proj_conv = layers.conv(cin, width, 1, stride)
      self.proj_bn = layers.bn(width)

  def __call__(self, x, *, train: bool):
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    if self.has_proj:
      x = self.proj_bn(self.proj_conv(x), use_running_average=not train)
    return nnx.relu(x + y)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152)."""
  expansion = 4

  def __init__(self, cin: int, width: int, stride: int, layers: _Layers):
    stride_1x1, stride_3x3 = (stride, 1) if layers.variant == 'v1' else (1, stride)
    cout = width * self.expansion
    self.conv1 = layers.conv(cin, width, 1, stride_1x1)
    self.bn1 = layers.bn(width)
    self.conv2 = layers.conv(width, width, 3, stride_3x3)
    self.bn2 = layers.bn(width)
    self.conv3 = layers.conv(width, cout, 1)
    self.bn3 = layers.bn(cout)
    self.has_proj = stride != 1 or cin != cout
    if self.has_proj:
      self.proj_conv = layers.conv(cin, cout, 1, stride)
      self.proj_bn = layers.bn(cout)

  def __call__(self, x, *, train: bool):
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = nnx.relu(self.bn2(self.conv2(y), use_running_average=not train))
    y = self.bn3(self.conv3(y), use_running_average=not train)
    if self.has_proj:
      x = self.proj_bn(self.proj_conv(x), use_running_average=not train)
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """ResNet feature extractor: [B, H, W, C] -> [B, H/32, W/32, 512 * expansion]."""

  def __init__(self, depth: int, variant: Variant = 'v1.5', *, in_channels: int = 3,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    if depth not in RESNET_SPECS:
      raise ValueError(f'ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}')
    if variant not in ('v1', 'v1.5'):
      raise ValueError(f"ResNet variant must be 'v1' or 'v1.5', got {variant!r}")
    self.depth, self.variant = depth, variant
    spec = RESNET_SPECS[depth]
    block_cls = Bottleneck if spec.block == 'bottleneck' else BasicBlock
    layers = _Layers(variant, dtype, rngs)
    self.stem_conv = layers.conv(in_channels, 64, 7, 2)
    self.stem_bn = layers.bn(64)
    cin, stages = 64, []
    for i, (num_blocks, width) in enumerate(zip(spec.stage_sizes, STAGE_WIDTHS)):
      blocks = []
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(block_cls(cin, width, stride, layers))
        cin = width * block_cls.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.num_features = cin

  def stem(self, x, *, train: bool):
    x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    # Zero padding before the max pool (Keras) equals -inf padding (torch): x >= 0.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')

  def stage_outputs(self, x, *, train: bool,
                    frozen_stages: int = 0) -> dict[str, jax.Array]:
    """Activations after the stem and after each stage (for tests and feature reuse).

    `frozen_stages` = k: the first k parts (the stem, then stage1, ...) run BatchNorm in
    inference mode even when training: frozen layers keep their running statistics (as
    Keras runs a frozen BatchNorm), instead of normalizing with batch statistics that
    their fixed weights were never fitted to.
    """
    outputs = {'stem': self.stem(x, train=train and frozen_stages < 1)}
    x = outputs['stem']
    for i, stage in enumerate(self.stages):
      stage_train = train and frozen_stages < i + 2
      for block in stage:
        x = block(x, train=stage_train)
      outputs[f'stage{i + 1}'] = x
    return outputs

  def __call__(self, x, *, train: bool, frozen_stages: int = 0):
    return self.stage_outputs(x, train=train, frozen_stages=frozen_stages)['stage4']
