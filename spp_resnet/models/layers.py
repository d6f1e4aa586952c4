"""What the backbones share: the stem/stages interface, conv(+BN)+ReLU and max pooling.

Every backbone is a stem followed by stages (`Backbone`). The training loop freezes by
parameter path (`train.frozen_filter`): attributes whose names begin with `stem` are the
stem, `stages[i]` is stage i + 1; `frozen_stages` = k runs the first k parts (stem,
stage1, ...) with BatchNorm in inference mode.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from spp_resnet.models import ops
from spp_resnet.models import spp as spp_lib

# `config.model.variant` picks ResNet's stride placement; the other backbones have one
# layout, and take either value.
RESNET_VARIANTS = ('v1', 'v1.5')


def check_variant(name: str, variant: str) -> None:
  if variant not in RESNET_VARIANTS:
    raise ValueError(f"{name} variant must be 'v1' or 'v1.5' (config.model.variant; "
                     f'{name} has one layout and ignores it), got {variant!r}')


def run_layers(layers: Iterable[nnx.Module], x: jax.Array, *, train: bool) -> jax.Array:
  for layer in layers:
    x = layer(x, train=train)
  return x


class Backbone(nnx.Module):
  """A stem, then stages: [B, H, W, C] -> the last stage's map [B, h, w, num_features].

  Subclasses set `stem_layers` (or override `stem`), `stages` (an nnx.List of layer
  sequences, each layer called as `layer(x, train=...)`), `num_features` and `arch`
  (its name in `models.BACKBONES`, which the weight converters check).
  """

  def stem(self, x: jax.Array, *, train: bool) -> jax.Array:
    return run_layers(self.stem_layers, x, train=train)

  def stage_outputs(self, x: jax.Array, *, train: bool,
                    frozen_stages: int = 0) -> dict[str, jax.Array]:
    """Activations after the stem and after each stage (for tests and feature reuse).

    `frozen_stages` = k: the first k parts (the stem, then stage1, ...) run BatchNorm in
    inference mode even when training: frozen layers keep their running statistics (as
    Keras runs a frozen BatchNorm), instead of normalizing with batch statistics that
    their fixed weights were never fitted to.
    """
    x = self.stem(x, train=train and frozen_stages < 1)
    outputs = {'stem': x}
    for i, stage in enumerate(self.stages):
      x = run_layers(stage, x, train=train and frozen_stages < i + 2)
      outputs[f'stage{i + 1}'] = x
    return outputs

  def __call__(self, x: jax.Array, *, train: bool, frozen_stages: int = 0) -> jax.Array:
    *_, features = self.stage_outputs(x, train=train, frozen_stages=frozen_stages).values()
    return features

  def imagenet_features(self, features: jax.Array) -> jax.Array:
    """What the ImageNet classifier of the converted weights reads: [B, D].

    Global average pooling here (ResNet, GoogLeNet); VGG and AlexNet pool and flatten.
    """
    return features.mean(axis=(1, 2))


def adaptive_avg_flatten(x: jax.Array, size: int) -> jax.Array:
  """torch's AdaptiveAvgPool2d(size) then a flatten in NHWC order: [B, size*size*C]."""
  return spp_lib.spatial_pyramid_pool(x, (size,), 'avg')


class ConvBNReLU(nnx.Module):
  """Conv (explicit symmetric padding, as torch and Keras), optional BatchNorm, ReLU.

  `bn_epsilon` > 0 adds BatchNorm with torch's default momentum (0.1, flax's 0.9).
  """

  def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1,
               padding: int | None = None, use_bias: bool = True, bn_epsilon: float = 0.0,
               kernel_init: nnx.Initializer, dtype: jnp.dtype | None, rngs: nnx.Rngs):
    pad = (kernel - 1) // 2 if padding is None else padding
    self.conv = nnx.Conv(
        cin, cout, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=use_bias, kernel_init=kernel_init,
        conv_general_dilated=ops.conv_general_dilated, dtype=dtype, rngs=rngs)
    self.bn = (nnx.BatchNorm(cout, epsilon=bn_epsilon, momentum=0.9, dtype=dtype, rngs=rngs)
               if bn_epsilon else None)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x, use_running_average=not train)
    return nnx.relu(x)


class MaxPool(nnx.Module):
  """torch's MaxPool2d(window, stride, padding, ceil_mode) on NHWC maps."""

  def __init__(self, window: int, stride: int, padding: int = 0, ceil_mode: bool = False):
    self.window, self.stride, self.padding, self.ceil_mode = window, stride, padding, ceil_mode

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no state
    pads = [ops.pool_padding(n, self.window, self.stride, self.padding, self.ceil_mode)
            for n in x.shape[1:3]]
    return nnx.max_pool(x, (self.window, self.window), strides=(self.stride, self.stride),
                        padding=pads)
