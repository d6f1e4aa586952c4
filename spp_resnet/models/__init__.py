"""Model registry: backbones by name, and the classifier built from `config.model`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
from flax import nnx

from spp_resnet.models.alexnet import AlexNet
from spp_resnet.models.classifier import Classifier
from spp_resnet.models.googlenet import GoogLeNet
from spp_resnet.models.layers import Backbone
from spp_resnet.models.lenet import LeNet5
from spp_resnet.models.resnet import RESNET_SPECS, ResNet
from spp_resnet.models.spp import SpatialPyramidPooling, spatial_pyramid_pool
from spp_resnet.models.vgg import VGG16

# Constructors taking (variant=, dtype=, rngs=); each builds a `Backbone`.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    **{f'resnet{depth}': functools.partial(ResNet, depth) for depth in RESNET_SPECS},
    'vgg16': VGG16,
    'vgg16_bn': functools.partial(VGG16, batch_norm=True),
    'googlenet': GoogLeNet,
    'alexnet': AlexNet,
    'lenet': LeNet5,
}
# How tables and logs name them.
BACKBONE_LABELS = {
    **{f'resnet{depth}': f'ResNet-{depth}' for depth in RESNET_SPECS},
    'vgg16': 'VGG-16', 'vgg16_bn': 'VGG-16-BN', 'googlenet': 'GoogLeNet',
    'alexnet': 'AlexNet', 'lenet': 'LeNet-5',
}


def backbone_label(backbone: str) -> str:
  return BACKBONE_LABELS.get(backbone, backbone)


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(model_config: ml_collections.ConfigDict, *, num_classes: int,
                 rngs: nnx.Rngs) -> Classifier:
  if model_config.backbone not in BACKBONES:
    raise ValueError(f'config.model.backbone: unknown {model_config.backbone!r}; '
                     f'choose from {sorted(BACKBONES)}')
  if model_config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'config.model.compute_dtype: {model_config.compute_dtype!r} is not '
                     f'one of {sorted(COMPUTE_DTYPES)}')
  dtype = COMPUTE_DTYPES[model_config.compute_dtype]
  ibn = model_config.get('ibn', '')  # runs from before the field have none
  if ibn and not model_config.backbone.startswith('resnet'):
    raise ValueError(f'config.model.ibn={ibn!r}: instance normalization (IBN-Net) is '
                     f'built for the ResNets only, not {model_config.backbone!r}')
  backbone = BACKBONES[model_config.backbone](
      variant=model_config.variant, dtype=dtype, rngs=rngs, **({'ibn': ibn} if ibn else {}))
  return Classifier(
      backbone, num_classes=num_classes, pooling=model_config.pooling,
      spp_levels=tuple(model_config.spp_levels), spp_mode=model_config.spp_mode,
      spp_channels=model_config.spp_channels, head_hidden=tuple(model_config.head_hidden),
      dropout=model_config.dropout, head_init_std=model_config.head_init_std,
      dtype=dtype, rngs=rngs)


__all__ = ['BACKBONES', 'BACKBONE_LABELS', 'AlexNet', 'Backbone', 'Classifier', 'GoogLeNet',
           'LeNet5', 'ResNet', 'SpatialPyramidPooling', 'VGG16', 'backbone_label', 'create_model',
           'spatial_pyramid_pool']
