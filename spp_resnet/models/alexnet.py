"""AlexNet (Krizhevsky et al., 2012; the single-GPU "one weird trick" form) features.

The layout of torchvision's `alexnet().features`: conv 11x11/4 (64), max pool 3/2,
conv 5x5 (192), max pool 3/2, conv 3x3 (384), conv 3x3 (256), conv 3x3 (256), max pool
3/2; biases, ReLU, no normalization. As SPP-net does for its ZF-5 network (He et al.,
2015), the spatial pyramid replaces the LAST max pool: the features are conv5's map,
13 x 13 x 256 at 224 px (6 x 6 with the pool). The ImageNet classifier of a converted
file reads that pool (`imagenet_features`).

stem = conv1; stage1 = pool1 + conv2; stage2 = pool2 + conv3; stage3 = conv4;
stage4 = conv5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spp_resnet.models import layers as layers_lib


class AlexNet(layers_lib.Backbone):
  """AlexNet features up to conv5: [B, 224, 224, C] -> [B, 13, 13, 256]."""

  def __init__(self, variant: str = 'v1.5', *, in_channels: int = 3,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    layers_lib.check_variant('AlexNet', variant)
    self.arch = 'alexnet'
    # He normal (fan_out, as VGG): torch's default uniform init, which torchvision's
    # AlexNet keeps, has a third of the variance and shrinks activations layer by layer.
    init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')

    def conv(cin, cout, kernel, stride=1, padding=None):
      return layers_lib.ConvBNReLU(cin, cout, kernel, stride=stride, padding=padding,
                                   kernel_init=init, dtype=dtype, rngs=rngs)

    self.stem_layers = nnx.List([conv(in_channels, 64, 11, stride=4, padding=2)])
    self.stages = nnx.List([
        nnx.List([layers_lib.MaxPool(3, 2), conv(64, 192, 5)]),
        nnx.List([layers_lib.MaxPool(3, 2), conv(192, 384, 3)]),
        nnx.List([conv(384, 256, 3)]),
        nnx.List([conv(256, 256, 3)]),
    ])
    self.num_features = 256

  def imagenet_features(self, features: jax.Array) -> jax.Array:
    # pool5, then torchvision's AdaptiveAvgPool2d(6) (the identity at 224 px).
    return layers_lib.adaptive_avg_flatten(layers_lib.MaxPool(3, 2)(features), 6)
