"""Shared machinery of the dataset builders: file discovery, parallel decoding, reports.

The builders write ArrayRecord files and are built and read without TensorFlow:
images reach TFDS as PNG bytes produced here with PIL (never NumPy arrays, which TFDS
would encode with TensorFlow), and reading goes through `as_data_source`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
import dataclasses
import datetime
import io
import json
import logging
import os
from typing import Any
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from spp_resnet.data import image_io

log = logging.getLogger('spp_resnet.data.builders')

REPORT_FILENAME = 'build_report.json'
IMAGE_EXTENSIONS = frozenset({
    '.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.bmp', '.dib', '.gif', '.tif', '.tiff',
    '.webp', '.pgm', '.ppm', '.pbm', '.pnm', '.tga', '.jp2', '.j2k'})
_IGNORED_NAMES = frozenset({'thumbs.db', 'desktop.ini', '__macosx'})
_MAX_LISTED = 20  # in log messages; the JSON report lists everything


class MissingDataError(FileNotFoundError):
  """The manual dir lacks the dataset's files; the message says what to do."""


class BuildError(RuntimeError):
  """A file could not be used and the build is strict."""


def is_ignored_name(name: str) -> bool:
  """Hidden files, macOS resource forks and OS thumbnails: not part of any dataset."""
  return name.startswith('.') or name.lower() in _IGNORED_NAMES


# ---- Finding files in the manual dir, on disk or inside zip archives ---------------


@dataclasses.dataclass(frozen=True)
class Entry:
  """A file of a dataset: on disk, or a member of a (possibly nested) zip archive.

  Attributes:
    relpath: the path relative to the manual dir ('Training/glioma_tumor/gg (1).jpg'),
      or, for a zip member, the member's path inside its archive; the example's
      `filename`.
    disk_path: the file on disk (None for zip members).
    zip_chain: for zip members: the archive on disk, then the names of the nested
      archives, then the member.
  """
  relpath: str
  disk_path: str | None = None
  zip_chain: tuple[str, ...] = ()

  @property
  def parts(self) -> tuple[str, ...]:
    return tuple(self.relpath.split('/'))

  @property
  def basename(self) -> str:
    return self.parts[-1]

  @property
  def suffix(self) -> str:
    return os.path.splitext(self.basename)[1].lower()

  @property
  def display(self) -> str:
    """Where the file is, for reports and errors (zip members: archive!/member)."""
    if self.disk_path is not None:
      return self.relpath
    return '!/'.join(self.zip_chain)


class _ZipReader:
  """Opens (nested) zip archives once and reads members; keeps a few open."""

  def __init__(self, keep: int = 2):
    self._open: collections.OrderedDict[tuple[str, ...], zipfile.ZipFile] = (
        collections.OrderedDict())
    self._keep = keep

  def archive(self, chain: tuple[str, ...]) -> zipfile.ZipFile:
    if chain in self._open:
      self._open.move_to_end(chain)
      return self._open[chain]
    if len(chain) == 1:
      archive = zipfile.ZipFile(chain[0])
    else:
      archive = zipfile.ZipFile(io.BytesIO(self.archive(chain[:-1]).read(chain[-1])))
    self._open[chain] = archive
    while len(self._open) > self._keep + 1:
      self._open.popitem(last=False)[1].close()
    return archive

  def read(self, entry: Entry) -> bytes:
    return self.archive(entry.zip_chain[:-1]).read(entry.zip_chain[-1])

  def close(self):
    for archive in self._open.values():
      archive.close()
    self._open.clear()


def walk_files(root: str | os.PathLike[str], *, into_zips: bool = True,
               zip_reader: _ZipReader | None = None,
               problems: list[dict[str, str]] | None = None) -> list[Entry]:
  """All files below `root` (sorted), descending into .zip archives if asked.

  Hidden files and directories, `__MACOSX` and OS thumbnail files are left out.
  Unreadable zip archives are appended to `problems` ({'file', 'reason'}).
  """
  root = os.fspath(root)
  entries = []
  zips = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not is_ignored_name(d))
    for filename in sorted(filenames):
      if is_ignored_name(filename):
        continue
      path = os.path.join(dirpath, filename)
      relpath = os.path.relpath(path, root).replace(os.sep, '/')
      if into_zips and filename.lower().endswith('.zip'):
        zips.append((relpath, path))
      else:
        entries.append(Entry(relpath=relpath, disk_path=path))
  if zips:
    reader = zip_reader or _ZipReader()
    for relpath, path in zips:
      _walk_zip(reader, (path,), relpath, entries, problems)
  return entries


def _walk_zip(reader: _ZipReader, chain: tuple[str, ...], display: str,
              entries: list[Entry], problems: list[dict[str, str]] | None):
  try:
    archive = reader.archive(chain)
    infos = sorted(archive.infolist(), key=lambda info: info.filename)
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    if problems is not None:
      problems.append({'file': display, 'reason': f'unreadable zip archive ({e})'})
    return
  for info in infos:
    name = info.filename
    if info.is_dir() or any(is_ignored_name(p) for p in name.split('/') if p):
      continue
    if name.lower().endswith('.zip'):
      _walk_zip(reader, chain + (name,), f'{display}!/{name}', entries, problems)
    else:
      entries.append(Entry(relpath=name.strip('/'), zip_chain=chain + (name,)))


def dedupe(entries: Iterable[Entry], key: Callable[[Entry], Any]) -> list[Entry]:
  """Keeps the first entry per key: files on disk win over copies in zip archives."""
  ordered = sorted(entries, key=lambda e: e.disk_path is None)  # stable
  seen = set()
  kept = []
  for entry in ordered:
    k = key(entry)
    if k not in seen:
      seen.add(k)
      kept.append(entry)
  return kept


# ---- The builders' base class -------------------------------------------------------


def image_feature(dtype=np.uint8) -> tfds.features.Image:
  return tfds.features.Image(shape=(None, None, 1), dtype=dtype, encoding_format='png')


def common_features(label_names: list[str] | None, image_dtype=np.uint8,
                    **extra) -> tfds.features.FeaturesDict:
  label = (tfds.features.ClassLabel(names=label_names) if label_names is not None
           else tfds.features.ClassLabel())
  return tfds.features.FeaturesDict({
      'image': image_feature(image_dtype),
      'label': label,
      'filename': tfds.features.Text(),
      'patient_id': tfds.features.Text(),
      'sha256': tfds.features.Text(),
      'phash': tfds.features.Text(),
      **extra,
  })


class ReportingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """GeneratorBasedBuilder that skips bad files into a JSON build report.

  Keyword arguments (besides TFDS' data_dir/config/version):
    strict: stop the build at the first unusable file, naming it, instead of
      skipping it and listing it in the report.
    num_workers: processes that decode and hash images (None: one per CPU, at most
      8; 0 or 1: in-process).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def __init__(self, *, strict: bool = False, num_workers: int | None = None,
               **kwargs):
    self._strict = bool(strict)
    self._num_workers = num_workers
    self._report: dict[str, Any] = {}
    super().__init__(**kwargs)
    self._original_state.update(strict=self._strict, num_workers=num_workers)

  # -- report ---------------------------------------------------------------------

  @property
  def strict(self) -> bool:
    return self._strict

  def _reset_report(self, manual_dir: str):
    self._report = {
        'dataset': self.info.full_name,
        'manual_dir': manual_dir,
        'strict': self._strict,
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'splits': {},
        'skipped': [],
    }

  def _skip(self, file: str, reason: str, split: str | None = None):
    """A file that cannot be used: recorded, or fatal in strict mode."""
    if self._strict:
      raise BuildError(
          f'{self.name}: cannot use {file!r}: {reason} (strict mode; build without '
          'strict=True to skip such files and list them in the build report)')
    item = {'file': file, 'reason': reason}
    if split is not None:
      item['split'] = split
    self._report['skipped'].append(item)

  def _count(self, split: str, label_name: str):
    counts = self._report['splits'].setdefault(
        split, {'num_examples': 0, 'per_class': {}})
    counts['num_examples'] += 1
    counts['per_class'][label_name] = counts['per_class'].get(label_name, 0) + 1

  def _check_nonempty(self, split: str, num_files: int):
    """Called after a split's last example: TFDS cannot write an empty split."""
    if split in self._report['splits']:
      return
    skipped = [s for s in self._report['skipped'] if s.get('split') == split]
    examples = '; '.join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
    raise BuildError(
        f'{self.name}: none of the {num_files} files of split {split!r} could be used'
        + (f' (e.g. {examples})' if examples else ''))

  def _download_and_prepare(self, dl_manager, download_config, **kwargs):
    manual = download_config.manual_dir or getattr(dl_manager, '_manual_dir', None)
    self._reset_report(os.fspath(manual) if manual else '')
    super()._download_and_prepare(
        dl_manager=dl_manager, download_config=download_config, **kwargs)
    report = self._report
    report['num_examples'] = sum(s['num_examples'] for s in report['splits'].values())
    report['num_skipped'] = len(report['skipped'])
    # self.data_dir is the temporary directory that becomes the prepared one.
    path = os.path.join(os.fspath(self.data_dir), REPORT_FILENAME)
    with open(path, 'w') as f:
      json.dump(report, f, indent=1)
    _log_report(report)

  # -- helpers for the subclasses ---------------------------------------------------

  def _manual_dir(self, dl_manager) -> str:
    """The manual dir the user passed, or TFDS' default (<data_dir>/downloads/manual)."""
    path = getattr(dl_manager, '_manual_dir', None)
    if path is None:
      path = os.path.join(os.fspath(self.data_dir_root), 'downloads', 'manual')
    return os.fspath(path)

  def _missing(self, manual_dir: str, what: str) -> MissingDataError:
    return MissingDataError(
        f'{self.name}: {what} in the manual dir {manual_dir!r}.\n'
        f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}\n'
        f'Put the files (extracted, or the downloaded .zip archive) anywhere below '
        f'{manual_dir!r}, or pass the folder that holds them as manual_dir.')

  def _workers(self, num_items: int) -> int:
    workers = (image_io.default_num_workers() if self._num_workers is None
               else self._num_workers)
    return workers if num_items >= 64 else 0  # a pool costs ~1 s to start

  def _process(self, fn: Callable[[Any], dict[str, Any]], entries: list[Entry],
               zip_reader: _ZipReader | None, options: dict[str, Any] | None = None
               ) -> Iterator[tuple[Entry, dict[str, Any]]]:
    """Runs an image_io task on each entry (in worker processes), in order."""
    options = options or {}

    def tasks():
      for entry in entries:
        if entry.disk_path is not None:
          source = entry.disk_path
        else:
          try:
            source = zip_reader.read(entry)
          except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            source = OSError(f'cannot read it from its zip archive: {e}')
        yield (entry.display, source, options)

    results = image_io.ordered_map(fn, tasks(), num_workers=self._workers(len(entries)))
    for entry, result in zip(entries, results):
      yield entry, result


def _log_report(report: dict[str, Any]):
  splits = ', '.join(f"{name}: {s['num_examples']} {s['per_class']}"
                     for name, s in report['splits'].items())
  log.info('Built %s: %s', report['dataset'], splits)
  skipped = report['skipped']
  if skipped:
    listed = '\n  '.join(f"{s['file']}: {s['reason']}" for s in skipped[:_MAX_LISTED])
    more = f'\n  ... and {len(skipped) - _MAX_LISTED} more' if len(
        skipped) > _MAX_LISTED else ''
    log.warning('%s: skipped %d unusable files (listed in %s):\n  %s%s',
                report['dataset'], len(skipped), REPORT_FILENAME, listed, more)
  for key, value in report.items():
    if key.startswith('num_') and key not in ('num_examples', 'num_skipped') and value:
      log.warning('%s: %s = %s (see %s)', report['dataset'], key, value,
                  REPORT_FILENAME)
