"""LeNet-5 (LeCun et al., 1998) adapted to 224 px three-channel input.

LeCun's topology: C1 = 6 5x5 convs, S2 = 2x2 subsampling, C3 = 16 5x5 convs, S4 = 2x2
subsampling, C5 = 120 5x5 convs (then F6 and the output, which the classifier head
replaces). Kept: the layer sizes, valid (unpadded) convolutions, and C5 as a
convolution, so that on images larger than LeNet's 32 x 32 it yields a map (49 x 49 at
224 px, 9 x 9 at 64 px; 1 x 1 at 32 px, as in the original) for the spatial pyramid.
Changed, as modern re-implementations do: ReLU instead of scaled tanh, max pooling
instead of trainable average subsampling, C3 connected to all six C1 maps instead of
LeCun's sparse table, three input channels (the gray slice replicated, as every
backbone gets it) instead of one.

stem = C1; stage1 = S2 + C3; stage2 = S4 + C5. There are only two stages:
`freeze.backbone_up_to='stage3'` or `'stage4'` freeze everything, as 'all' does.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from spp_resnet.models import layers as layers_lib


class LeNet5(layers_lib.Backbone):
  """LeNet-5 features up to C5: [B, H, W, C] -> [B, (H - 28) / 4, (W - 28) / 4, 120]."""

  def __init__(self, variant: str = 'v1.5', *, in_channels: int = 3,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    layers_lib.check_variant('LeNet-5', variant)
    self.arch = 'lenet'
    init = nnx.initializers.variance_scaling(2.0, 'fan_in', 'normal')  # He, for ReLU

    def conv(cin, cout):
      return layers_lib.ConvBNReLU(cin, cout, 5, padding=0, kernel_init=init, dtype=dtype,
                                   rngs=rngs)

    self.stem_layers = nnx.List([conv(in_channels, 6)])
    self.stages = nnx.List([nnx.List([layers_lib.MaxPool(2, 2), conv(6, 16)]),
                            nnx.List([layers_lib.MaxPool(2, 2), conv(16, 120)])])
    self.num_features = 120
