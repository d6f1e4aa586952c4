"""Content and perceptual hashes of images, for finding duplicates across splits.

`content_hash` identifies pixel-identical images (whatever the file encoding);
`perceptual_hash` is the DCT hash (pHash) of Zauner (2010): 64 bits that move little
under re-encoding, resizing and small intensity changes, compared by Hamming distance.
"""

import hashlib

import numpy as np
from PIL import Image

_HASH_SIZE = 8       # 8x8 low-frequency DCT coefficients -> 64 bits
_DCT_INPUT = 32      # the image is reduced to 32x32 before the DCT


def content_hash(pixels: np.ndarray) -> str:
  """SHA-256 of the decoded pixels, their shape and dtype."""
  pixels = np.ascontiguousarray(pixels)
  digest = hashlib.sha256(f'{pixels.shape}{pixels.dtype}'.encode())
  digest.update(pixels.tobytes())
  return digest.hexdigest()


def _dct_matrix(n: int) -> np.ndarray:
  k = np.arange(n)[:, None]
  i = np.arange(n)[None, :]
  m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  m[0] /= np.sqrt(2.0)
  return m


_DCT = _dct_matrix(_DCT_INPUT)


def perceptual_hash(pixels: np.ndarray) -> int:
  """64-bit pHash of an HxW or HxWxC image (any integer or float dtype)."""
  gray = np.asarray(pixels, dtype=np.float32)
  if gray.ndim == 3:
    gray = gray.mean(axis=-1)
  small = Image.fromarray(gray, mode='F').resize(
      (_DCT_INPUT, _DCT_INPUT), Image.Resampling.BOX)
  coeffs = _DCT @ np.asarray(small, np.float64) @ _DCT.T
  low = coeffs[:_HASH_SIZE, :_HASH_SIZE].flatten()
  bits = low > np.median(low[1:])  # the DC term would dominate the median
  return int(np.packbits(bits).view('>u8')[0])
