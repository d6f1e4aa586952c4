"""Robust decoding of image files (and figshare .mat slices) to canonical grayscale.

The canonical form of every image in this project is a single-channel array of shape
(H, W, 1): uint8 for 8-bit sources, uint16 for 16-bit sources that keep their depth
(figshare). Conversions:

- RGB (and CMYK, YCbCr, ...) -> L with the ITU-R 601-2 luma transform
  (L = R * 299/1000 + G * 587/1000 + B * 114/1000, PIL's `convert('L')`);
- RGBA / LA / palette with transparency -> composited on black, then luma;
- palette -> its RGB colors, then luma; 1-bit -> 0/255;
- 16-bit grayscale (PIL modes I;16, I;16B, I;16L, and I with values in 0..65535)
  -> uint16 with `sixteen_bit='keep'`, or uint8 with `sixteen_bit='scale'`: each image
  is scaled by its own maximum (round(x * 255 / max(x))), which keeps 12-bit MRI
  readable where a fixed /257 would leave it nearly black;
- the EXIF orientation tag is applied; multi-frame files use their first frame.

Anything that does not decode (empty, truncated, corrupt, not an image, a Git LFS
pointer file instead of the real content) raises `ImageDecodeError` with a short
human-readable reason, which the dataset builders report or, in strict mode, raise.
Images that decode but carry (almost) nothing to learn from, smaller than `MIN_SIDE`
pixels on a side or of one constant value (`degenerate_reason`), are kept and flagged:
the builders list them in the build report.

The `*_task` functions are the units of work of the builders' process pool: they take
bytes or a path and return the PNG to store plus the hashes, or the reason for skipping.
This module must stay light to import (no TFDS, no JAX): pool workers import it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
from collections.abc import Callable, Iterable, Iterator, Sequence
import contextlib
import io
import itertools
import logging
import multiprocessing
import os
from typing import Any

import h5py
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from spp_resnet.data import hashing

LFS_POINTER_PREFIX = b'version https://git-lfs'
# Smaller than the smallest model input (config.data.image_size >= 32): upscaling would
# invent nearly every pixel, and a 1x1 image becomes a constant (all-black) one.
MIN_SIDE = 32
PNG_COMPRESS_LEVEL = 1  # ~4x faster to write than PIL's default 6, ~15% larger files

_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
_TO_RGB_MODES = ('RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV')


class ImageDecodeError(ValueError):
  """A file that cannot be turned into an image; `reason` says why."""

  def __init__(self, reason: str, name: str = ''):
    super().__init__(f'{name}: {reason}' if name else reason)
    self.reason = reason
    self.name = name


def is_lfs_pointer(data: bytes) -> bool:
  return data[:len(LFS_POINTER_PREFIX)] == LFS_POINTER_PREFIX


def check_bytes(data: bytes, name: str = '') -> None:
  """Raises ImageDecodeError for empty files and Git LFS pointers."""
  if not data:
    raise ImageDecodeError('empty file (0 bytes)', name)
  if is_lfs_pointer(data):
    raise ImageDecodeError(
        'Git LFS pointer file, not the real content (fetch it with `git lfs pull`)',
        name)


@contextlib.contextmanager
def _strict_truncation():
  """Makes PIL fail on truncated files even if someone enabled leniency globally."""
  previous = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    yield
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _composite_on_black(image: Image.Image) -> Image.Image:
  """RGBA/LA -> RGB/L composited over a black background."""
  alpha = image.getchannel('A')
  base_mode = 'L' if image.mode == 'LA' else 'RGB'
  background = Image.new(base_mode, image.size, 0)
  background.paste(image.convert(base_mode), mask=alpha)
  return background


def _sixteen_bit(pixels: np.ndarray, sixteen_bit: str) -> np.ndarray:
  pixels = np.clip(pixels.astype(np.int64), 0, 65535)
  if sixteen_bit == 'keep':
    return pixels.astype(np.uint16)
  if sixteen_bit == 'scale':
    peak = int(pixels.max()) if pixels.size else 0
    if peak == 0:
      return np.zeros(pixels.shape, np.uint8)
    return ((pixels * 255 + peak // 2) // peak).astype(np.uint8)
  raise ValueError(f"sixteen_bit must be 'keep' or 'scale', got {sixteen_bit!r}")


def to_grayscale(image: Image.Image, *, sixteen_bit: str = 'scale') -> np.ndarray:
  """Converts a loaded PIL image to the canonical (H, W, 1) uint8/uint16 array."""
  mode = image.mode
  if mode in _SIXTEEN_BIT_MODES:
    pixels = np.asarray(image)
    pixels = pixels.astype(pixels.dtype.newbyteorder('='))
    return _sixteen_bit(pixels, sixteen_bit)[..., None]
  if mode == 'F':
    raise ImageDecodeError("unsupported floating-point image (PIL mode 'F')")
  if mode == 'P':
    image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
  elif mode == 'PA':
    image = image.convert('RGBA')
  elif mode in ('RGBa', 'La'):  # premultiplied alpha: the color is already composited
    image = image.convert('RGB' if mode == 'RGBa' else 'L')
  elif mode in _TO_RGB_MODES:
    image = image.convert('RGB')
  if image.mode in ('RGBA', 'LA'):
    image = _composite_on_black(image)
  if image.mode != 'L':
    image = image.convert('L')  # RGB -> ITU-R 601-2 luma; '1' -> 0/255
  return np.asarray(image, dtype=np.uint8)[..., None]


def decode_image(data: bytes, *, name: str = '',
                 sixteen_bit: str = 'scale') -> np.ndarray:
  """Decodes encoded image bytes to the canonical (H, W, 1) grayscale array.

  Args:
    data: the file's content.
    name: the file's name, for error messages.
    sixteen_bit: 'keep' (16-bit sources stay uint16) or 'scale' (to uint8 by each
      image's maximum).

  Raises:
    ImageDecodeError: empty, Git LFS pointer, not an image, truncated or corrupt.
  """
  check_bytes(data, name)
  try:
    with _strict_truncation(), Image.open(io.BytesIO(data)) as image:
      image.load()
      ImageOps.exif_transpose(image, in_place=True)
      pixels = to_grayscale(image, sixteen_bit=sixteen_bit)
  except ImageDecodeError as e:
    raise ImageDecodeError(e.reason, name) from None
  except UnidentifiedImageError:
    raise ImageDecodeError('not a recognized image format', name) from None
  except Image.DecompressionBombError as e:
    raise ImageDecodeError(f'image too large: {e}', name) from None
  except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
    reason = str(e) or type(e).__name__
    if 'truncated' in reason.lower() or isinstance(e, EOFError):
      reason = f'truncated file ({reason})'
    else:
      reason = f'corrupt image ({type(e).__name__}: {reason})'
    raise ImageDecodeError(reason, name) from None
  if pixels.shape[0] == 0 or pixels.shape[1] == 0:
    raise ImageDecodeError(f'image has no pixels (shape {pixels.shape})', name)
  return pixels


def encode_png(pixels: np.ndarray) -> bytes:
  """(H, W, 1) or (H, W) uint8/uint16 -> PNG bytes (8- or 16-bit grayscale)."""
  pixels = np.asarray(pixels)
  if pixels.ndim == 3:
    pixels = pixels[..., 0]
  if pixels.dtype in (np.uint8, np.uint16):
    image = Image.fromarray(np.ascontiguousarray(pixels))  # mode L or I;16
  else:
    raise ValueError(f'encode_png needs uint8 or uint16 pixels, got {pixels.dtype}')
  buffer = io.BytesIO()
  image.save(buffer, format='PNG', compress_level=PNG_COMPRESS_LEVEL)
  return buffer.getvalue()


def phash_hex(pixels: np.ndarray) -> str:
  """The 64-bit perceptual hash as 16 zero-padded lowercase hex characters."""
  return f'{hashing.perceptual_hash(pixels):016x}'


def degenerate_reason(pixels: np.ndarray) -> str | None:
  """Why a decoded (H, W, 1) image is useless to train or test on, or None if it is not."""
  height, width = pixels.shape[:2]
  if min(height, width) < MIN_SIDE:
    return f'{height}x{width} pixels, smaller than {MIN_SIDE} on a side'
  if pixels.min() == pixels.max():  # min-max normalization makes it all black
    return f'constant image (every pixel is {pixels.flat[0]})'
  return None


def _hashed(pixels: np.ndarray) -> dict[str, Any]:
  result = {
      'png': encode_png(pixels),
      'sha256': hashing.content_hash(pixels),
      'phash': phash_hex(pixels),
      'shape': tuple(pixels.shape),
  }
  if reason := degenerate_reason(pixels):
    result['degenerate'] = reason
  return result


def _read(source: str | bytes | OSError) -> bytes:
  if isinstance(source, OSError):  # the parent process could not read it
    raise source
  if isinstance(source, (bytes, bytearray, memoryview)):
    return bytes(source)
  with open(source, 'rb') as f:
    return f.read()


# ---- Units of work of the builders' process pool -----------------------------------
# Each takes (name, path-or-bytes, options) and returns a dict with either 'error'
# (the reason, a str) or the encoded example parts (and 'degenerate', a reason, when
# `degenerate_reason` has one).


def image_task(task: tuple[str, str | bytes, dict[str, Any]]) -> dict[str, Any]:
  name, source, options = task
  try:
    data = _read(source)
    pixels = decode_image(data, name=name,
                          sixteen_bit=options.get('sixteen_bit', 'scale'))
  except ImageDecodeError as e:
    return {'name': name, 'error': e.reason}
  except OSError as e:
    return {'name': name, 'error': f'unreadable file ({e})'}
  result = _hashed(pixels)
  result['name'] = name
  return result


def read_figshare_mat(data: bytes, name: str = '') -> dict[str, Any]:
  """Reads one slice of Jun Cheng's figshare dataset (MATLAB v7.3 = HDF5).

  Returns image (H, W, 1) uint16 (int16 on disk, transposed by MATLAB's column-major
  storage; negative values, which the published files do not have, are clipped to 0),
  mask (H, W, 1) uint8 with values 0/1, label (1 meningioma, 2 glioma, 3 pituitary)
  and patient_id (str).
  """

  check_bytes(data, name)
  try:
    with h5py.File(io.BytesIO(data), 'r') as f:
      if 'cjdata' not in f:
        raise ImageDecodeError(
            "not a figshare slice (no 'cjdata' group in the .mat file)", name)
      cj = f['cjdata']
      image = np.asarray(cj['image'][()]).T
      mask = np.asarray(cj['tumorMask'][()]).T if 'tumorMask' in cj else None
      label = int(np.asarray(cj['label'][()]).reshape(-1)[0])
      pid_chars = np.asarray(cj['PID'][()]).reshape(-1) if 'PID' in cj else []
  except ImageDecodeError:
    raise
  except (OSError, KeyError, ValueError, IndexError, TypeError) as e:
    raise ImageDecodeError(
        f'corrupt or unreadable .mat file ({type(e).__name__}: {e})', name) from None
  if image.ndim != 2 or image.size == 0:
    raise ImageDecodeError(f'cjdata/image has shape {image.shape}, expected 2-D', name)
  if label not in (1, 2, 3):
    raise ImageDecodeError(f'cjdata/label is {label}, expected 1, 2 or 3', name)
  pixels = np.clip(image.astype(np.int64), 0, 65535).astype(np.uint16)[..., None]
  if mask is None:
    mask = np.zeros(image.shape, np.uint8)
  if mask.shape != image.shape:
    raise ImageDecodeError(
        f'cjdata/tumorMask shape {mask.shape} != image shape {image.shape}', name)
  mask = (np.asarray(mask) != 0).astype(np.uint8)[..., None]
  patient_id = ''.join(chr(int(c)) for c in pid_chars if int(c) != 0).strip()
  return {'image': pixels, 'mask': mask, 'label': label, 'patient_id': patient_id}


def figshare_task(task: tuple[str, str | bytes, dict[str, Any]]) -> dict[str, Any]:
  name, source, _ = task
  try:
    parsed = read_figshare_mat(_read(source), name)
  except ImageDecodeError as e:
    return {'name': name, 'error': e.reason}
  except OSError as e:
    return {'name': name, 'error': f'unreadable file ({e})'}
  result = _hashed(parsed['image'])
  result.update(name=name, mask_png=encode_png(parsed['mask']),
                label=parsed['label'], patient_id=parsed['patient_id'])
  return result


def _run_chunk(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
  return [fn(item) for item in chunk]


def default_num_workers() -> int:
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, 8))


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], *,
                num_workers: int, chunk_size: int = 8) -> Iterator[Any]:
  """`map(fn, items)` over 'spawn' worker processes, in order, with bounded memory.

  At most 4 chunks per worker are in flight, so items holding file contents (read
  from zip archives) are not all loaded at once. `num_workers <= 1` runs in-process.
  `fn` must be a module-level function of a module that is cheap to import. If the
  workers cannot run (e.g. the main script cannot be re-imported by 'spawn', as with
  `python -` or a script without an `if __name__ == '__main__':` guard), the rest of
  the work runs in-process, with a warning.
  """
  items = iter(items)
  if num_workers <= 1:
    yield from map(fn, items)
    return
  executor = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context('spawn'))
  pending = collections.deque()  # (future, chunk)

  def submit_next() -> bool:
    chunk = list(itertools.islice(items, chunk_size))
    if chunk:
      pending.append((executor.submit(_run_chunk, fn, chunk), chunk))
    return bool(chunk)

  try:
    while len(pending) < 4 * num_workers and submit_next():
      pass
    while pending:
      future, chunk = pending.popleft()
      try:
        results = future.result()
      except concurrent.futures.process.BrokenProcessPool as e:
        logging.getLogger(__name__).warning(
            'Worker processes failed (%s); decoding in this process instead.', e)
        for _, chunk in [(future, chunk), *pending]:
          yield from map(fn, chunk)
        pending.clear()
        yield from map(fn, items)
        return
      yield from results
      submit_next()
  finally:
    executor.shutdown(wait=True, cancel_futures=True)
