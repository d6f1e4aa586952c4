"""ImageNet weights for the backbones: official files, conversion, input conventions.

- `load_pretrained_backbone(model, config.pretrained, config.model)`: what training calls.
- `WEIGHT_SOURCES[source].normalization` / `normalization_for_source(source)`: the input
  normalization each source expects ('caffe' for Keras, 'imagenet' for torchvision);
  `NORMALIZATIONS[name].apply(rgb_0_1_images)` implements it.
- `python -m spp_resnet.weights.convert FILE` converts and verifies a file (docs/weights.md).
"""

import importlib

from spp_resnet.weights.sources import (NORMALIZATIONS, OFFICIAL_FILES, WEIGHT_SOURCES,
                                        ArchitectureMismatchError, ConvertedWeights,
                                        CorruptWeightsFileError, DigestMismatchError,
                                        DigestWarning, InputConvention, MissingTensorError,
                                        OfficialFile, UnsafePickleError, WeightsError,
                                        WeightSource, WeightsUnavailableError, check_digest,
                                        normalization_for_source, resolve_weights_file,
                                        source_fits_backbone, sources_for_backbone)

__all__ = [
    'NORMALIZATIONS', 'OFFICIAL_FILES', 'WEIGHT_SOURCES', 'ArchitectureMismatchError',
    'ConvertedWeights', 'CorruptWeightsFileError', 'DigestMismatchError', 'DigestWarning',
    'InputConvention', 'MissingTensorError', 'OfficialFile', 'UnsafePickleError',
    'WeightSource', 'WeightsError', 'WeightsUnavailableError', 'assign_backbone',
    'backbone_from_weights', 'check_digest', 'convert_file', 'imagenet_head',
    'imagenet_logits', 'load_converted', 'load_pretrained_backbone',
    'normalization_for_source', 'resolve_weights_file', 'save_converted',
    'source_fits_backbone', 'sources_for_backbone',
]

# Imported lazily so that `python -m spp_resnet.weights.convert` runs the module only once.
_FROM_CONVERT = ('assign_backbone', 'backbone_from_weights', 'convert_file', 'imagenet_head',
                 'imagenet_logits', 'load_converted', 'load_pretrained_backbone',
                 'save_converted')


def __getattr__(name):
  if name in _FROM_CONVERT:
    return getattr(importlib.import_module('spp_resnet.weights.convert'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
