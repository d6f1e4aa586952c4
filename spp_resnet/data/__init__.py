"""Data: datasets, preprocessing, splits, leakage checks and the grain input pipeline.

  builders/    TFDS builders of the real datasets (`builders.load`, `read_metadata`)
  phantom      the SYNTHETIC embedded default dataset ('phantom')
  mix          several labelled datasets pooled into one ('mix', config.data.mix)
  class_mapping  one dataset's class names onto another's (tumor / no tumor, by name)
  hashing      content hash and perceptual hash (pHash) of images
  preprocess   paper preprocessing (host, numpy; `Preprocessor`) and `to_model_input`
               (device, JAX)
  augment      `AugmentSpec` / `augment_batch`: the paper's rot90 / flips, random affine
               warp and intensity jitter, on device (JAX)
  splits       'original' / 'paper' / 'stratified' / 'grouped' train/test splits, and a
               leakage-safe validation split
  leakage      report of duplicate groups and patients crossing a split (also a CLI)
  sources      the dataset registry (`load_dataset`) and pooling of its splits into one
               random-access source (`load_pooled`, `pooled_from_config`)
  batching     decoding a split into the in-memory cache, `TrainBatches`, `EvalBatch`
  pipeline     `create_input_pipeline(config.data, ...) -> InputPipeline`: the above,
               assembled
"""
