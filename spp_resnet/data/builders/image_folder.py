"""`image_folder`: any folder of images with one sub-folder per class.

For your own data, and for evaluating a checkpoint on an outside dataset. Layouts:

    root/<class>/**/<image>            -> one TFDS split, `train`
    root/<split>/<class>/**/<image>    -> one TFDS split per split folder

The second layout is used when every top-level folder is a split name
(case-insensitive): train/training -> `train`, test/testing -> `test`,
val/valid/validation/dev -> `validation`. Class names are the class folder names,
sorted (the union over split folders), kept as they are (no renaming).
Files directly in the root or in a split folder are ignored (listed in the report);
every non-hidden file inside a class folder is decoded, and those that do not decode
are skipped and reported. An image in a sub-folder of a class folder takes the class
folder's class, however deep and whatever the sub-folder is called
(root/tumor/no_tumor/x.png is 'tumor'; `nested_folders` in the report lists them).
A class folder without a usable image stops the build (`allow_empty_classes=True`
builds it anyway). 16-bit images are scaled to uint8 by their own maximum
(see `image_io`), so the dataset is uint8 like the Kaggle sets.

The root is the manual dir (`load('image_folder', manual_dir=root)`), or
`ImageFolder(root_dir=root)`. Prepared data is namespaced by the root's absolute path:
`<data_dir>/image_folder/<folder name>_<hash of path>/<version>/`, so different
folders never collide. A folder's prepared data is reused until deleted, even if the
folder changes (load() warns when it did).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from spp_resnet.data.builders import _common

SPLIT_FOLDERS = {
    'train': 'train', 'training': 'train',
    'test': 'test', 'testing': 'test',
    'val': 'validation', 'valid': 'validation', 'validation': 'validation',
    'dev': 'validation',
}


def _subdirs(path: str) -> list[str]:
  try:
    names = os.listdir(path)
  except OSError:
    return []
  return sorted(n for n in names if not _common.is_ignored_name(n)
                and os.path.isdir(os.path.join(path, n)))


def scan_layout(root: str) -> tuple[dict[str, str], list[str]]:
  """({TFDS split: split folder ('' for the root itself)}, sorted class names)."""
  top = _subdirs(root)
  splits = {}
  if top and all(t.lower() in SPLIT_FOLDERS for t in top):
    for folder in top:
      split = SPLIT_FOLDERS[folder.lower()]
      if split in splits:
        raise ValueError(
            f'image_folder: {root!r} has two folders for split {split!r}: '
            f'{splits[split]!r} and {folder!r}')
      splits[split] = folder
    classes = sorted({c for folder in top for c in _subdirs(os.path.join(root, folder))})
  else:
    splits = {'train': ''}
    classes = top
  return splits, classes


def config_name(root: str) -> str:
  """'<folder name>_<12 hex digits of the absolute path's SHA-256>'."""
  path = os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(root))))
  slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(path).lower()).strip('_')[:40]
  return f"{slug or 'root'}_{hashlib.sha256(path.encode()).hexdigest()[:12]}"


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  root_dir: str = ''
  class_names: tuple[str, ...] = ()
  split_folders: tuple[tuple[str, str], ...] = ()

  @classmethod
  def for_root(cls, root_dir: str | os.PathLike[str]) -> 'ImageFolderConfig':
    root = os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(root_dir))))
    splits, classes = scan_layout(root) if os.path.isdir(root) else ({}, [])
    return cls(name=config_name(root), root_dir=root, class_names=tuple(classes),
               split_folders=tuple(splits.items()),
               description=f'Images in {root}')


class ImageFolder(_common.ReportingBuilder):
  """One sub-folder per class (optionally below train/test/... split folders).

  Extra keyword argument: allow_empty_classes (default False): build even if a class
  folder has no usable image, instead of refusing to.
  """

  name = 'image_folder'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point manual_dir (or root_dir) at a folder with one sub-folder of images per class,
  optionally below split folders (train/, test/, validation/).
  """

  def __init__(self, *, root_dir: str | os.PathLike[str] = '', config=None,
               allow_empty_classes: bool = False, **kwargs):
    if config is None or isinstance(config, str):
      if not root_dir:
        raise ValueError('image_folder needs the folder of images: pass root_dir= '
                         "(or manual_dir= to load('image_folder', ...))")
      config = ImageFolderConfig.for_root(root_dir)
    self.refuses_empty_classes = not allow_empty_classes
    super().__init__(config=config, **kwargs)
    self._original_state.update(config=config, allow_empty_classes=allow_empty_classes)

  def _info(self) -> tfds.core.DatasetInfo:
    names = list(self.builder_config.class_names)
    prepared = os.path.join(os.fspath(self.data_dir), 'label.labels.txt')
    if os.path.exists(prepared):  # the prepared data's classes win over a re-scan
      with open(prepared) as f:
        prepared_names = f.read().splitlines()
      if names and prepared_names != names:
        _common.log.warning(
            'image_folder: %s now has classes %s, its prepared data %s; delete %s to '
            'rebuild', self.builder_config.root_dir, names, prepared_names,
            self.data_dir)
      names = prepared_names
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=_common.common_features(names or None, np.uint8),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = config.root_dir
    if not os.path.isdir(root):
      raise _common.MissingDataError(f'image_folder: {root!r} is not a folder')
    if not config.class_names:
      raise _common.MissingDataError(
          f'image_folder: {root!r} has no class sub-folders (expected '
          '<root>/<class>/<image> or <root>/<split>/<class>/<image>)')
    split_of = {folder: split for split, folder in config.split_folders}
    flat = '' in split_of  # root/<class>/..., else root/<split>/<class>/...
    by_split = {split: [] for split in split_of.values()}
    labels, ignored, nested = {}, [], {}
    # One walk of the whole root, so that a link between split folders is read once.
    for entry in self._find_files(root, into_zips=False):
      split = split_of.get('' if flat else entry.parts[0])
      parts = entry.parts if flat else entry.parts[1:]
      if split is None or len(parts) < 2 or parts[0] not in config.class_names:
        ignored.append(entry.relpath)
        continue
      if len(parts) > 2:  # deeper folders belong to their class folder
        nested['/'.join(entry.parts[:-1])] = parts[0]
      by_split[split].append(entry)
      labels[entry] = config.class_names.index(parts[0])
    if not labels:
      raise _common.MissingDataError(f'image_folder: no files in the class folders of '
                                     f'{root!r}')
    self._check_classes({config.class_names[label] for label in labels.values()},
                        'no file in the class folder')
    self._report.update(
        root_dir=root, class_names=list(config.class_names),
        split_folders=dict(config.split_folders),
        num_ignored_files=len(ignored), ignored_files=ignored,
        nested_folders=nested,
        listing_fingerprint=listing_fingerprint(root))
    _log_nested(nested, config.class_names)
    return {split: self._generate_examples(split, entries,
                                           lambda entry, _: labels[entry])
            for split, entries in by_split.items()}


def _log_nested(nested: dict[str, str], class_names) -> None:
  """Images in sub-folders take their class folder's class: said, and loudly when a
  sub-folder is named like another class (root/tumor/no_tumor/x.png is 'tumor')."""
  if not nested:
    return
  names = {name.lower() for name in class_names}
  clashes = {folder: label for folder, label in nested.items()
             if folder.rsplit('/', 1)[-1].lower() in names - {label.lower()}}
  shown = ', '.join(f'{folder}/ -> {label!r}'
                    for folder, label in list((clashes or nested).items())[:3])
  if clashes:
    _common.log.warning('image_folder: %d sub-folders named like another class take '
                        "their class folder's class: %s", len(clashes), shown)
  else:
    _common.log.info("image_folder: the images of %d sub-folders take their class "
                     "folder's class, e.g. %s", len(nested), shown)


def listing_fingerprint(root: str) -> str:
  """SHA-256 over the (path, size) of the files below root: changes when files do."""
  digest = hashlib.sha256()
  for entry in _common.walk_files(root, into_zips=False):
    try:
      size = os.path.getsize(entry.disk_path)
    except OSError:
      size = -1
    digest.update(f'{entry.relpath}\0{size}\n'.encode())
  return digest.hexdigest()
