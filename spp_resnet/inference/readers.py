"""Unlabelled scans to 2-D slices: image files, DICOM, NIfTI and figshare `.mat` files.

Every reader yields `Slice`s: a 2-D array of raw intensities (any dtype; the run's own
preprocessing normalizes it, as in training) and its index within the file (None for a
single-slice file). What each format needs before that:

- PNG/JPEG/TIFF/BMP: decoded as the dataset builders decode them (`image_io.decode_image`:
  grayscale, EXIF orientation applied, 16-bit scaled to 8-bit by the image's maximum).
- DICOM (`pydicom`): the modality LUT (rescale slope/intercept: stored values to
  physical units), then the VOI window: the file's own (Window Center/Width or VOI LUT
  Sequence, the first one) with `window='file'`, none with `window='none'`, or an
  explicit `(center, width)`; MONOCHROME1 is inverted so that bright means high signal
  as in every training image. A multi-frame file gives one slice per frame.
- NIfTI (`nibabel`): reoriented to the closest canonical (RAS+) orientation, scaled by
  the header's scl_slope/scl_inter, cut into slices along `axis` ('axial', 'coronal',
  'sagittal' or 0, 1, 2); each slice is shown anterior/superior up and, for axial and
  coronal slices, the patient's right on the left (radiological convention), as the
  2-D slices of the training sets are.
- figshare `.mat` (MATLAB v7.3): the slice of `image_io.read_figshare_mat`.

Every other file found in a folder is ignored; a file named explicitly that is not one
of these is an error. pydicom and nibabel are imported only when a file needs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import os

import numpy as np

from spp_resnet.data import image_io

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
DICOM_SUFFIXES = ('.dcm', '.dicom')
NIFTI_SUFFIXES = ('.nii', '.nii.gz')
MAT_SUFFIXES = ('.mat',)
NIFTI_AXES = {'sagittal': 0, 'coronal': 1, 'axial': 2}
_DICOM_PREAMBLE = 128  # DICOM Part 10 files: 128 bytes, then b'DICM'


class ReadError(ValueError):
  """A file that cannot be read as a scan; the message says why."""


@dataclasses.dataclass(frozen=True)
class Slice:
  path: str
  index: int | None   # frame / slice number within the file; None: a 2-D file
  image: np.ndarray   # 2-D (or H x W x 3) raw intensities


def _missing(package: str, extra: str) -> ImportError:
  return ImportError(f'Reading this file needs {package}: pip install '
                     f"'spp_resnet[{extra}]'")


def file_kind(path: str) -> str | None:
  """'image', 'dicom', 'nifti', 'mat' or None (not a scan), by name, else by content."""
  name = path.lower()
  for kind, suffixes in (('image', IMAGE_SUFFIXES), ('dicom', DICOM_SUFFIXES),
                         ('nifti', NIFTI_SUFFIXES), ('mat', MAT_SUFFIXES)):
    if name.endswith(suffixes):
      return kind
  # DICOM series are often stored without a suffix.
  try:
    with open(path, 'rb') as f:
      f.seek(_DICOM_PREAMBLE)
      return 'dicom' if f.read(4) == b'DICM' else None
  except OSError:
    return None


def find_scans(paths: Sequence[str]) -> Iterator[str]:
  """Files to read: each file given, and every scan below each folder (sorted)."""
  for path in paths:
    if not os.path.isdir(path):
      yield path  # a missing or unsupported file is reported when it is read
      continue
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        full = os.path.join(root, name)
        if not name.startswith('.') and file_kind(full):
          yield full


def read_slices(path: str, *, dicom_window: str | tuple[float, float] = 'file',
                nifti_axis: str | int = 'axial') -> list[Slice]:
  """The slices of one file.

  Raises ReadError (or the format library's own error) for a file that cannot be read,
  ImportError when its format's optional package is missing.
  """
  if not os.path.isfile(path):
    raise ReadError('no such file')
  kind = file_kind(path)
  if kind == 'dicom':
    frames = read_dicom(path, dicom_window)
  elif kind == 'nifti':
    frames = read_nifti(path, nifti_axis)
  elif kind in ('image', 'mat'):
    with open(path, 'rb') as f:
      data = f.read()
    try:
      frames = [image_io.decode_image(data, name=path) if kind == 'image'
                else image_io.read_figshare_mat(data, path)['image']]
    except image_io.ImageDecodeError as e:
      raise ReadError(e.reason) from None
  else:
    raise ReadError('not a supported scan (PNG/JPEG/TIFF/BMP, DICOM, NIfTI or figshare '
                    '.mat)')
  if len(frames) == 1:
    return [Slice(path, None, frames[0])]
  return [Slice(path, i, frame) for i, frame in enumerate(frames)]


def parse_window(value: str) -> str | tuple[float, float]:
  """--dicom_window: 'file', 'none' or 'CENTER,WIDTH'."""
  if value in ('file', 'none'):
    return value
  try:
    center, width = (float(v) for v in value.split(','))
  except ValueError:
    raise ValueError(f"--dicom_window must be 'file', 'none' or CENTER,WIDTH (e.g. "
                     f"'40,80'), got {value!r}") from None
  if width <= 0:
    raise ValueError(f'--dicom_window: the width must be positive, got {value!r}')
  return center, width


def read_dicom(path: str, window: str | tuple[float, float] = 'file') -> list[np.ndarray]:
  """The frames of a DICOM file, in physical units and windowed (module docstring)."""
  try:
    import pydicom  # pylint: disable=g-import-not-at-top  # optional (and nibabel)
    from pydicom import pixels as dicom_pixels  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise _missing('pydicom', 'dicom') from None
  ds = pydicom.dcmread(path)
  if 'PixelData' not in ds:
    raise ReadError('a DICOM file without an image (no Pixel Data)')
  stored = ds.pixel_array
  values = dicom_pixels.apply_modality_lut(stored, ds).astype(np.float32)
  if window == 'file':
    if 'WindowCenter' in ds or 'VOILUTSequence' in ds:
      values = np.asarray(dicom_pixels.apply_voi_lut(values, ds), np.float32)
  elif window != 'none':
    center, width = window
    values = np.clip(values, center - width / 2, center + width / 2)
  if ds.get('PhotometricInterpretation', '') == 'MONOCHROME1':  # 0 = white
    values = values.max() + values.min() - values
  frames = int(ds.get('NumberOfFrames', 1) or 1)
  return list(values) if frames > 1 else [values]


def read_nifti(path: str, axis: str | int = 'axial') -> list[np.ndarray]:
  """The 2-D slices of a 3-D NIfTI volume along `axis` (module docstring)."""
  try:
    import nibabel  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise _missing('nibabel', 'nifti') from None
  axis = NIFTI_AXES.get(axis, axis)
  if axis not in (0, 1, 2):
    raise ValueError(f'nifti axis must be one of {sorted(NIFTI_AXES)} or 0, 1, 2, got '
                     f'{axis!r}')
  volume = nibabel.as_closest_canonical(nibabel.load(path))
  data = np.asarray(volume.dataobj, np.float32)  # dataobj applies scl_slope/scl_inter
  if data.ndim == 4 and data.shape[3] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise ReadError(f'expected a 3-D volume, got shape {data.shape}')
  slices = []
  for k in range(data.shape[axis]):
    # np.rot90 puts the remaining second axis (anterior or superior) up; flipping the
    # columns puts the patient's right (+x in RAS) on the left.
    view = np.rot90(np.take(data, k, axis=axis))
    slices.append(np.ascontiguousarray(view[:, ::-1] if axis != 0 else view))
  return slices
