"""VGG-16 (Simonyan & Zisserman, 2015) feature extractor, with or without BatchNorm.

The layout of torchvision's `vgg16().features` / `vgg16_bn().features` and Keras'
`VGG16(include_top=False)`: thirteen 3x3 convs (padding 1, biases) in five blocks of
2, 2, 3, 3, 3, each followed by a 2x2 max pool. As SPP-net does (He et al., 2015), the
spatial pyramid replaces the LAST max pool (pool5): the features are conv5_3's map,
14 x 14 x 512 at 224 px (7 x 7 with pool5), which the (1, 4, 8) levels bin without
overlap. The ImageNet classifier of a converted file reads pool5 (`imagenet_features`).

stem = block1 (conv1_1, conv1_2); stage i = the max pool that ends block i, then the
convs of block i + 1 (stage4 = pool4 + conv5_1..conv5_3). `vgg16_bn` adds BatchNorm
after each conv (torchvision: epsilon 1e-5, momentum 0.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spp_resnet.models import layers as layers_lib

BLOCK_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def conv_path(block: int, index: int) -> tuple[str | int, ...]:
  """The module path of conv `index` of `block` (both from 0), as the converters fill it."""
  return ('stem_layers', index) if block == 0 else ('stages', block - 1, index + 1)  # pool 1st


class VGG16(layers_lib.Backbone):
  """VGG-16 features up to conv5_3: [B, H, W, C] -> [B, H/16, W/16, 512]."""

  def __init__(self, variant: str = 'v1.5', *, batch_norm: bool = False,
               in_channels: int = 3, dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    layers_lib.check_variant('VGG-16', variant)
    self.arch = 'vgg16_bn' if batch_norm else 'vgg16'
    # torchvision's initialization (He normal, fan_out; zero biases).
    init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    cin, blocks = in_channels, []
    for widths in BLOCK_WIDTHS:
      block = []
      for width in widths:
        block.append(layers_lib.ConvBNReLU(
            cin, width, 3, bn_epsilon=1e-5 if batch_norm else 0.0, kernel_init=init,
            dtype=dtype, rngs=rngs))
        cin = width
      blocks.append(block)
    self.stem_layers = nnx.List(blocks[0])
    self.stages = nnx.List([nnx.List([layers_lib.MaxPool(2, 2), *block])
                            for block in blocks[1:]])
    self.num_features = cin

  def imagenet_features(self, features: jax.Array) -> jax.Array:
    # pool5, torchvision's AdaptiveAvgPool2d(7) (the identity at 224 px; Keras has none).
    return layers_lib.adaptive_avg_flatten(layers_lib.MaxPool(2, 2)(features), 7)
