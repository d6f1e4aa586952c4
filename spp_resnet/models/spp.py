"""Spatial pyramid pooling (He et al., 2015): a fixed-length vector from any feature map.

Level n splits the map into an n x n grid of bins and pools each bin. Bin i of n over an
axis of length L spans [floor(i L / n), ceil((i + 1) L / n)) — the adaptive-pooling rule of
torch.nn.AdaptiveMaxPool2d — so every bin holds at least one position, also when the map
is smaller than the grid (a 7x7 map at 224x224 input against the paper's 8x8 level);
neighbouring bins then share positions. The bin edges depend only on the (static) map
shape, so pooling is a masked reduction that jit compiles once per input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PoolMode = Literal['max', 'avg']


def bin_edges(length: int, bins: int) -> list[tuple[int, int]]:
  return [(i * length // bins, -((-(i + 1) * length) // bins)) for i in range(bins)]


def _bin_masks(length: int, bins: int) -> np.ndarray:
  """[bins, length] float 0/1 membership matrix."""
  mask = np.zeros((bins, length), np.float32)
  for i, (start, stop) in enumerate(bin_edges(length, bins)):
    mask[i, start:stop] = 1.0
  return mask


def _pool_axis(x: jax.Array, axis: int, bins: int, mode: PoolMode) -> jax.Array:
  """Pools `axis` of x into `bins` adaptive bins, which replace that axis."""
  mask = _bin_masks(x.shape[axis], bins)
  x = jnp.moveaxis(x, axis, -2)  # [..., L, C]
  if mode == 'max':
    neg = jnp.asarray(-jnp.inf, x.dtype)
    pooled = jnp.where(mask[:, :, None] > 0, x[..., None, :, :], neg).max(axis=-2)
  else:
    weights = jnp.asarray(mask / mask.sum(axis=1, keepdims=True), x.dtype)
    pooled = jnp.einsum('bl,...lc->...bc', weights, x)
  return jnp.moveaxis(pooled, -2, axis)


def spatial_pyramid_pool(x: jax.Array, levels: Sequence[int] = (1, 4, 8),
                         mode: PoolMode = 'max') -> jax.Array:
  """[B, H, W, C] -> [B, C * sum(n * n for n in levels)], bins-major per level."""
  if mode not in ('max', 'avg'):
    raise ValueError(f"SPP mode must be 'max' or 'avg', got {mode!r}")
  batch, _, _, channels = x.shape
  pooled = []
  for n in levels:
    y = _pool_axis(_pool_axis(x, 1, n, mode), 2, n, mode)  # [B, n, n, C]
    pooled.append(y.reshape(batch, n * n * channels))
  return jnp.concatenate(pooled, axis=-1)


def num_bins(levels: Sequence[int]) -> int:
  return sum(n * n for n in levels)


class SpatialPyramidPooling(nnx.Module):

  def __init__(self, levels: Sequence[int] = (1, 4, 8), mode: PoolMode = 'max'):
    if not levels or any(int(n) < 1 for n in levels):
      raise ValueError(f'SPP levels must be positive integers, got {tuple(levels)}')
    self.levels = tuple(int(n) for n in levels)
    self.mode = mode

  def __call__(self, x: jax.Array) -> jax.Array:
    return spatial_pyramid_pool(x, self.levels, self.mode)
