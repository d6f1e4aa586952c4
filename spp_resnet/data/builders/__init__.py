"""TFDS dataset builders of the brain MRI datasets, built and read without TensorFlow.

Datasets (TFDS names; see each module's docstring):
- `brain_tumor`: Kaggle "Brain Tumor" (Bohaju), the paper's; ['no_tumor', 'tumor'].
- `brain_tumor_mri` (configs `four_class`, default, and `binary`): the Training/ and
  Testing/ folder datasets of Bhuvaji and Nickparvar;
  ['glioma', 'meningioma', 'no_tumor', 'pituitary'] or ['no_tumor', 'tumor'].
- `figshare_brain_tumor`: Jun Cheng's figshare slices with patient IDs and tumor
  masks; ['glioma', 'meningioma', 'pituitary'].
- `image_folder`: any folder with one sub-folder per class (manual_dir = the folder).

Every example: `image` (H, W, 1) uint8 (uint16 for figshare), single-channel grayscale,
stored as PNG; `label` (ClassLabel); `filename` (path relative to the manual dir, or
inside its zip archive); `patient_id` ('' when unknown); `sha256`
(`hashing.content_hash` of the (H, W, 1) image exactly as read back); `phash` (16 hex
chars of `hashing.perceptual_hash`). figshare adds `tumor_mask` (H, W, 1) uint8, 0/1.
Text features come back from data sources as bytes.

Files are written as ArrayRecord; reading goes through TFDS data sources with the
images decoded by PIL (`numpy_decoders`): TFDS' own NumPy decoding of uint16 PNGs needs
OpenCV. Files that cannot be used (empty, truncated, corrupt, not an image, Git LFS
pointers) are skipped and listed in `build_report.json` next to the prepared data
(strict=True stops at the first one, naming it). Images that decode but are tiny or
constant are kept and listed (`degenerate_images`); links are followed, but no folder or
file twice (`repeated_paths`); an image_folder class without a usable image stops the
build (allow_empty_classes=True builds it anyway). Each list is also summarized on the console.

    loaded = load('brain_tumor_mri/binary', manual_dir='/data/brain_mri')
    train = loaded.sources['train']      # random access: train[i] -> dict of numpy
    meta = read_metadata(train)          # labels, filenames, hashes; no image decoding
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from spp_resnet.data.builders import _common
from spp_resnet.data.builders._common import BuildError, MissingDataError
from spp_resnet.data.builders.brain_tumor import BrainTumor
from spp_resnet.data.builders.brain_tumor_mri import BrainTumorMri
from spp_resnet.data.builders.figshare_brain_tumor import FigshareBrainTumor
from spp_resnet.data.builders.image_folder import ImageFolder, listing_fingerprint

__all__ = [
    'BUILDERS', 'BrainTumor', 'BrainTumorMri', 'BuildError', 'FigshareBrainTumor',
    'ImageFolder', 'Loaded', 'MissingDataError', 'PilImageDecoder', 'get_builder',
    'load', 'names', 'numpy_decoders', 'read_metadata',
]

BUILDERS = {
    'brain_tumor': BrainTumor,
    'brain_tumor_mri': BrainTumorMri,
    'figshare_brain_tumor': FigshareBrainTumor,
    'image_folder': ImageFolder,
}
METADATA_KEYS = ('label', 'filename', 'patient_id', 'sha256', 'phash')
_TEXT_KEYS = ('filename', 'patient_id', 'sha256', 'phash')
_METADATA_CHUNK = 256


@dataclasses.dataclass
class Loaded:
  """A prepared dataset, ready for random access.

  Attributes:
    sources: TFDS split name -> TFDS ArrayRecord data source; `source[i]` is a dict
      of numpy values (images (H, W, 1), label int64, text features as bytes).
    class_names: the label names, index = label.
    build_report: the build's JSON report: 'skipped' ([{'file', 'reason', 'split'}]),
      'splits' ({split: {'num_examples', 'per_class'}}), 'num_examples',
      'num_skipped', per dataset e.g. 'missing_images' (CSV rows without image), and
      when there are any 'degenerate_images', 'repeated_paths', 'empty_classes' (each
      with its 'num_'). {} if the data was prepared without a report.
    builder: the TFDS builder (info, data_dir, ...).
  """
  sources: dict[str, Any]
  class_names: list[str]
  build_report: dict[str, Any]
  builder: Any = None


class PilImageDecoder(tfds.decode.Decoder):
  """Decodes a `tfds.features.Image` with PIL to (H, W, C), uint8 or uint16."""

  def decode_example(self, serialized_example):
    raise NotImplementedError('PilImageDecoder only decodes to NumPy (data sources).')

  def decode_example_np(self, serialized_example):
    with Image.open(io.BytesIO(serialized_example)) as image:
      pixels = np.asarray(image)
    pixels = pixels.astype(self.feature.np_dtype, copy=False)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def numpy_decoders(info: tfds.core.DatasetInfo) -> dict[str, tfds.decode.Decoder]:
  """Decoders for `as_data_source`/`tfds.data_source` that need neither TF nor cv2."""
  return {key: PilImageDecoder() for key, feature in info.features.items()
          if isinstance(feature, tfds.features.Image)}


def names() -> list[str]:
  """Every name `load` takes: the builders, and builder/config for each config."""
  return [name for base, builder in BUILDERS.items()
          for name in (base, *(f'{base}/{c.name}' for c in builder.BUILDER_CONFIGS))]


def _parse_name(name: str) -> tuple[str, str | None]:
  """'brain_tumor_mri/binary' -> ('brain_tumor_mri', 'binary'); ValueError if unknown."""
  if name not in names():
    raise ValueError(f'Unknown dataset {name!r}; known: {", ".join(names())} '
                     '(image_folder: the folder is the manual dir)')
  base, _, config = name.partition('/')
  return base, config or None


def get_builder(name: str, *, data_dir: str = '', manual_dir: str = '',
                strict: bool = False, **kwargs) -> tfds.core.DatasetBuilder:
  """The (not necessarily prepared) builder for a `load` name."""
  base, config = _parse_name(name)
  kwargs = dict(kwargs, data_dir=os.fspath(data_dir) if data_dir else None,
                strict=strict)
  if base == 'image_folder':
    return ImageFolder(root_dir=manual_dir, **kwargs)
  return BUILDERS[base](config=config, **kwargs)


def load(name: str, *, data_dir: str = '', manual_dir: str = '', strict: bool = False,
         num_workers: int | None = None, download: bool = True,
         allow_empty_classes: bool = False) -> Loaded:
  """Builds the dataset if it is not prepared yet, then opens its data sources.

  Args:
    name: 'brain_tumor', 'brain_tumor_mri' (= 'brain_tumor_mri/four_class'),
      'brain_tumor_mri/binary', 'figshare_brain_tumor' or 'image_folder'.
    data_dir: where TFDS keeps prepared data ('' = TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    manual_dir: the folder holding the downloaded files ('' = TFDS' default,
      <data_dir>/downloads/manual); for 'image_folder', the folder of images.
    strict: stop the build at the first unusable file (naming it) instead of
      skipping it; with already prepared data, fail if its build skipped files.
    num_workers: decoding processes (None: one per CPU, at most 8; 0: in-process).
    download: figshare only: download the archives when manual_dir has none.
    allow_empty_classes: image_folder only: build even if a class folder has no usable
      image (other datasets' fixed classes are listed in the report when absent).

  Raises:
    MissingDataError: the files are missing; the message says what to download and
      where to put it.
    BuildError: strict and a file could not be used, or an image_folder class has no
      usable image.
  """
  kwargs = {'num_workers': num_workers}
  if name.partition('/')[0] == 'figshare_brain_tumor':
    kwargs['download'] = download
  if name == 'image_folder':
    kwargs['allow_empty_classes'] = allow_empty_classes
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir, strict=strict,
                        **kwargs)
  prepared = builder.data_path.exists()
  if not prepared:
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir else None)
    builder.download_and_prepare(file_format='array_record',
                                 download_config=download_config)
  report = _read_report(builder)
  if prepared:
    _check_prepared(builder, report, strict, manual_dir)
  sources = builder.as_data_source(decoders=numpy_decoders(builder.info))
  return Loaded(sources=dict(sources),
                class_names=list(builder.info.features['label'].names),
                build_report=report, builder=builder)


def _read_report(builder) -> dict[str, Any]:
  path = os.path.join(os.fspath(builder.data_dir), _common.REPORT_FILENAME)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def _check_prepared(builder, report: dict[str, Any], strict: bool, manual_dir: str):
  if strict and report.get('skipped'):
    first = report['skipped'][0]
    raise BuildError(
        f"{builder.name}: the prepared data at {builder.data_dir} skipped "
        f"{len(report['skipped'])} files, e.g. {first['file']!r}: {first['reason']} "
        '(strict mode; fix or remove them and delete the prepared data to rebuild)')
  built_from = report.get('manual_dir')
  if (manual_dir and built_from and not isinstance(builder, ImageFolder) and
      os.path.realpath(manual_dir) != os.path.realpath(built_from)):
    logging.getLogger(__name__).warning(
        '%s: reusing the data prepared at %s from %s (not from manual_dir=%s); '
        'delete it to rebuild', builder.name, builder.data_dir, built_from, manual_dir)
  if isinstance(builder, ImageFolder) and report.get('listing_fingerprint'):
    root = builder.builder_config.root_dir
    if os.path.isdir(root) and listing_fingerprint(root) != report['listing_fingerprint']:
      logging.getLogger(__name__).warning(
          'image_folder: files in %s changed since its data was prepared at %s; '
          'delete that folder to rebuild', root, builder.data_dir)


def read_metadata(source) -> dict[str, np.ndarray]:
  """label, filename, patient_id, sha256, phash of every record, without images.

  Args:
    source: a data source from `load(...).sources` (or `as_data_source`).

  Returns:
    {'label': int64 array, 'filename'/'patient_id'/'sha256'/'phash': str arrays},
    in the source's record order (index i = source[i]).
  """
  info = source.dataset_info
  skip = {key: tfds.decode.SkipDecoding() for key, feature in info.features.items()
          if isinstance(feature, tfds.features.Image)}
  raw = type(source)(dataset_info=info, split=source.split, decoders=skip)
  columns = {key: [] for key in METADATA_KEYS}
  for start in range(0, len(raw), _METADATA_CHUNK):
    keys = list(range(start, min(start + _METADATA_CHUNK, len(raw))))
    for example in raw.__getitems__(keys):
      for key in METADATA_KEYS:
        columns[key].append(example[key])
  out = {'label': np.asarray(columns['label'], dtype=np.int64)}
  for key in _TEXT_KEYS:
    out[key] = np.asarray([v.decode('utf-8') if isinstance(v, bytes) else str(v)
                           for v in columns[key]], dtype=str)
  return out
