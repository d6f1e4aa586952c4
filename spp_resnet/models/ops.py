"""Array ops the backbones share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated`, but one matmul over patches when the map is tiny.

  XLA's CPU convolution is pathologically slow when the feature map is smaller than the
  kernel: a 3x3 conv of 512 channels on a 2x2 map (ResNet's last stage at 48-64 px
  inputs) took 264 ms for a batch of 32, 2.2 s with 1024 channels, against 3.7 ms as
  patches @ kernel (jax 0.10.2, 2-core CPU; docs/benchmarks.md). Both compute the same
  convolution; maps at least as large as the kernel (every map at 224 px) take lax's.
  Takes NHWC inputs and HWIO kernels (what `nnx.Conv` passes).
  """
  height, width = lhs.shape[1:3]
  kh, kw = rhs.shape[:2]
  plain = (height >= kh and width >= kw) or feature_group_count != 1 or any(
      d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if plain or isinstance(padding, str):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  (pt, pb), (pl, pr) = padding
  sh, sw = window_strides
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  out_h = (height + pt + pb - kh) // sh + 1
  out_w = (width + pl + pr - kw) // sw + 1
  patches = jnp.concatenate(
      [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)  # (i, j, channel): HWIO order
  return jnp.dot(patches, rhs.reshape(kh * kw * rhs.shape[2], rhs.shape[3]),
                 precision=precision,
                 preferred_element_type=kwargs.get('preferred_element_type'))


def pool_padding(length: int, window: int, stride: int, padding: int,
                 ceil_mode: bool) -> tuple[int, int]:
  """(before, after) padding that gives torch's `MaxPool2d` output length.

  ceil_mode=True rounds the number of windows up (GoogLeNet), with torch's rule that
  the last window must start inside the input or its left padding; the extra window
  reads padding, which max pooling ignores (XLA pads with -inf).
  """
  if not ceil_mode:
    return padding, padding
  out = -(-(length + 2 * padding - window) // stride) + 1
  if (out - 1) * stride >= length + padding:
    out -= 1
  return padding, max(padding, (out - 1) * stride + window - length - padding)
