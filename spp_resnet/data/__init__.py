"""Data: datasets, preprocessing, splits, leakage checks and the grain input pipeline.

  builders/    TFDS builders of the real datasets (`builders.load`, `read_metadata`)
  phantom      the SYNTHETIC embedded default dataset ('phantom')
  mix          several labelled datasets pooled into one ('mix', config.data.mix)
  class_mapping  one dataset's class names onto another's (tumor / no tumor, by name)
  hashing      content hash and perceptual hash (pHash) of images
  preprocess   paper preprocessing (host, numpy) and `to_model_input` (device, JAX)
  augment      `AugmentSpec` / `augment_batch`: the paper's rot90 / flips, random affine
               warp and intensity jitter, on device (JAX)
  splits       'original' / 'paper' / 'stratified' / 'grouped' train/test splits, and a
               leakage-safe validation split
  leakage      report of duplicate groups and patients crossing a split (also a CLI)
  pipeline     `create_input_pipeline(config.data, ...) -> InputPipeline`

The main names are re-exported lazily (importing this package stays cheap):
`create_input_pipeline`, `InputPipeline`, `to_model_input`, `resolve_normalization`,
`augment_batch`.
"""

import importlib

_LAZY = {
    'create_input_pipeline': 'pipeline',
    'InputPipeline': 'pipeline',
    'load_dataset': 'pipeline',
    'to_model_input': 'preprocess',
    'resolve_normalization': 'preprocess',
    'preprocess_image': 'preprocess',
    'augment_batch': 'augment',
}


def __getattr__(name):
  if name in _LAZY:
    module = importlib.import_module(f'{__name__}.{_LAZY[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
