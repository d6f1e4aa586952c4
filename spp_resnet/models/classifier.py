"""Backbone + pooling + fully connected head: the paper's SPP-ResNet classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from spp_resnet.models import spp as spp_lib


class Classifier(nnx.Module):
  """features = backbone(x); pooled = SPP or global average; FC head -> logits.

  The head is `len(hidden) + 1` fully connected layers initialized N(0, std^2) with zero
  biases, ReLU and dropout after each hidden layer (the paper: dropout 0.5 after the
  first two). Two classes give one logit (sigmoid cross-entropy); more give one per class.
  """

  def __init__(self, backbone: nnx.Module, *, num_classes: int,
               pooling: Literal['spp', 'gap'] = 'spp',
               spp_levels: Sequence[int] = (1, 4, 8), spp_mode: str = 'max',
               spp_channels: int = 0, head_hidden: Sequence[int] = (512, 512),
               dropout: float = 0.5, head_init_std: float = 0.01,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    if num_classes < 2:
      raise ValueError(f'num_classes must be >= 2, got {num_classes}')
    if pooling not in ('spp', 'gap'):
      raise ValueError(f"model.pooling must be 'spp' or 'gap', got {pooling!r}")
    self.backbone = backbone
    self.pooling = pooling
    channels = backbone.num_features
    # Optional 1x1 reduction before SPP (the paper mentions 256-channel maps).
    self.reduce = None
    if spp_channels:
      self.reduce = nnx.Conv(channels, spp_channels, (1, 1), dtype=dtype, rngs=rngs)
      channels = spp_channels
    self.spp = spp_lib.SpatialPyramidPooling(spp_levels, spp_mode) if pooling == 'spp' else None
    features = channels * (spp_lib.num_bins(spp_levels) if pooling == 'spp' else 1)
    init = nnx.initializers.normal(head_init_std)
    dense = []
    widths = (*head_hidden, 1 if num_classes == 2 else num_classes)
    for i, width in enumerate(widths):
      # The output layer computes in float32 even under bf16: bf16 logits tie (1,000
      # logits gave 684 distinct values), which blunts ROC AUC and threshold fitting.
      layer_dtype = jnp.float32 if i == len(widths) - 1 else dtype
      dense.append(nnx.Linear(features, width, kernel_init=init, dtype=layer_dtype,
                              rngs=rngs))
      features = width
    self.dense = nnx.List(dense)
    self.dropout = nnx.Dropout(dropout)
    self.num_classes = num_classes

  def pool(self, features: jax.Array) -> jax.Array:
    if self.reduce is not None:
      features = nnx.relu(self.reduce(features))
    if self.spp is not None:
      return self.spp(features)
    return features.mean(axis=(1, 2))

  def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None,
               batch_norm_train: bool | None = None, frozen_stages: int = 0) -> jax.Array:
    """x: [B, H, W, 3] normalized images -> float32 logits [B, 1] or [B, K].

    `train` switches dropout and, unless `batch_norm_train` says otherwise, BatchNorm
    batch statistics (False freezes them: transfer learning on small batches);
    `frozen_stages` = k keeps the backbone's first k parts (stem, stage1, ...) in
    inference mode (`ResNet.stage_outputs`).
    """
    bn_train = train if batch_norm_train is None else batch_norm_train
    return self.head(self.backbone(x, train=bn_train, frozen_stages=frozen_stages),
                     train=train, rngs=rngs)

  def head(self, features: jax.Array, *, train: bool,
           rngs: nnx.Rngs | None = None) -> jax.Array:
    """The backbone's last feature map [B, h, w, C] -> float32 logits (pooling + FC)."""
    h = self.pool(features)
    for layer in self.dense[:-1]:
      h = self.dropout(nnx.relu(layer(h)), deterministic=not train, rngs=rngs)
    return self.dense[-1](h).astype(jnp.float32)
