"""GoogLeNet / Inception v1 (Szegedy et al., 2015) feature extractor, torchvision's layout.

As torchvision's `googlenet()`: every conv is a BasicConv2d (conv without bias,
BatchNorm epsilon 1e-3, ReLU); max pools round up (`ceil_mode=True`); the "5x5" branch
of each Inception module is a 3x3 conv, as in torchvision's weights (its issue #906).
The auxiliary classifiers are left out (they only add training losses to the ImageNet
head, which the SPP head replaces) and so are the final global average pool, which the
spatial pyramid replaces, dropout and fc: the features are inception5b's map,
7 x 7 x 1024 at 224 px.

torchvision's ImageNet weights were ported from TensorFlow and expect inputs in
[-1, 1]; its pretrained model maps ImageNet-normalized inputs there first
(`transform_input=True`). So does this one, always, so that the 'imagenet'
normalization of `imagenet_torchvision` fits it; from scratch it is a fixed per-channel
affine map, which conv1's BatchNorm absorbs.

stem = conv1; stage1 = maxpool1 + conv2 + conv3; stage2 = maxpool2 + inception3a/3b;
stage3 = maxpool3 + inception4a..4e; stage4 = maxpool4 + inception5a/5b.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from spp_resnet.models import layers as layers_lib

# (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection), by stage.
INCEPTION_SPECS = (
    (('3a', 192, 64, 96, 128, 16, 32, 32), ('3b', 256, 128, 128, 192, 32, 96, 64)),
    (('4a', 480, 192, 96, 208, 16, 48, 64), ('4b', 512, 160, 112, 224, 24, 64, 64),
     ('4c', 512, 128, 128, 256, 24, 64, 64), ('4d', 512, 112, 144, 288, 32, 64, 64),
     ('4e', 528, 256, 160, 320, 32, 128, 128)),
    (('5a', 832, 256, 160, 320, 32, 128, 128), ('5b', 832, 384, 192, 384, 48, 128, 128)),
)
# torchvision's transform_input: x * std / 0.5 + (mean - 0.5) / 0.5, per RGB channel.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Inception(nnx.Module):
  """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max pool -> 1x1."""

  def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, *, conv):
    self.branch1 = conv(cin, ch1x1, 1)
    self.branch2 = nnx.List([conv(cin, ch3x3red, 1), conv(ch3x3red, ch3x3, 3)])
    self.branch3 = nnx.List([conv(cin, ch5x5red, 1), conv(ch5x5red, ch5x5, 3)])
    self.branch4 = nnx.List([layers_lib.MaxPool(3, 1, padding=1, ceil_mode=True),
                             conv(cin, pool_proj, 1)])
    self.num_features = ch1x1 + ch3x3 + ch5x5 + pool_proj

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return jnp.concatenate(
        [self.branch1(x, train=train),
         *(layers_lib.run_layers(b, x, train=train)
           for b in (self.branch2, self.branch3, self.branch4))], axis=-1)


class GoogLeNet(layers_lib.Backbone):
  """GoogLeNet features up to inception5b: [B, H, W, C] -> [B, H/32, W/32, 1024]."""

  def __init__(self, variant: str = 'v1.5', *, in_channels: int = 3,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    layers_lib.check_variant('GoogLeNet', variant)
    self.arch = 'googlenet'
    conv = functools.partial(_basic_conv, dtype=dtype, rngs=rngs)
    self.stem_layers = nnx.List([conv(in_channels, 64, 7, stride=2)])
    pool = functools.partial(layers_lib.MaxPool, stride=2, ceil_mode=True)
    stages = [nnx.List([pool(3), conv(64, 64, 1), conv(64, 192, 3)])]
    for specs, window in zip(INCEPTION_SPECS, (3, 3, 2)):
      stages.append(nnx.List([pool(window)] + [Inception(*spec[1:], conv=conv)
                                               for spec in specs]))
    self.stages = nnx.List(stages)
    self.num_features = stages[-1][-1].num_features

  def stem(self, x: jax.Array, *, train: bool) -> jax.Array:
    std, mean = (jnp.asarray(v, x.dtype) for v in (_IMAGENET_STD, _IMAGENET_MEAN))
    x = x * (std / 0.5) + (mean - 0.5) / 0.5
    return super().stem(x, train=train)


def _basic_conv(cin, cout, kernel, stride=1, *, dtype, rngs):
  # torchvision's initialization: truncated normal, std 0.01, cut at 2 std.
  return layers_lib.ConvBNReLU(
      cin, cout, kernel, stride=stride, use_bias=False, bn_epsilon=1e-3,
      kernel_init=nnx.initializers.truncated_normal(0.01), dtype=dtype, rngs=rngs)
