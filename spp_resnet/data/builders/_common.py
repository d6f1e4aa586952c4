"""Shared machinery of the dataset builders: file discovery, parallel decoding, reports.

The builders write ArrayRecord files and are built and read without TensorFlow:
images reach TFDS as PNG bytes produced here with PIL (never NumPy arrays, which TFDS
would encode with TensorFlow), and reading goes through `as_data_source`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
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


class ZipReader:
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
    if entry.disk_path is not None:
      with open(entry.disk_path, 'rb') as f:
        return f.read()
    return self.archive(entry.zip_chain[:-1]).read(entry.zip_chain[-1])

  def close(self):
    for archive in self._open.values():
      archive.close()
    self._open.clear()


def _identity(path: str) -> tuple[int, int] | None:
  """What a path leads to, through any links (None: nowhere, or unknown: some network
  and FUSE file systems give every file inode 0)."""
  try:
    stat = os.stat(path)
  except OSError:
    return None
  return (stat.st_dev, stat.st_ino) if stat.st_ino else None


def walk_files(root: str | os.PathLike[str], *, into_zips: bool = True,
               zip_reader: ZipReader | None = None,
               problems: list[dict[str, str]] | None = None,
               repeats: list[dict[str, str]] | None = None) -> list[Entry]:
  """All files below `root` (sorted), descending into .zip archives if asked.

  Hidden files and directories, `__MACOSX` and OS thumbnail files are left out.
  Unreadable zip archives are appended to `problems` ({'file', 'reason'}).
  Symbolic links are followed, but nothing through them is read twice: a link to a
  folder that contains it (a loop such as `class/loop -> ..`, which would repeat the
  tree until the path is too long) is not followed, and a path through a link to a file
  listed already (or listed without links) is left out. Those left out are appended to
  `repeats` ({'file', 'reason'}).
  """
  root = os.fspath(root)
  repeats = repeats if repeats is not None else []
  # Per folder: the identities of the folders from the root down to it (a loop leads
  # back to one of them), and whether its path goes through a link.
  above = {root: frozenset({_identity(root)})}
  linked = {root: False}
  files = []  # (relpath, path, what it leads to), in walk order
  through_link = set()  # relpaths
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    kept = []
    for name in sorted(d for d in dirnames if not is_ignored_name(d)):
      path = os.path.join(dirpath, name)
      identity = _identity(path)
      if identity is not None and identity in above[dirpath]:
        repeats.append({'file': _relpath(path, root), 'reason': (
            f'a link to {_relpath(os.path.realpath(path), os.path.realpath(root))!r}, '
            'a folder that contains it: not followed')})
        continue
      above[path] = above[dirpath] | {identity}
      linked[path] = linked[dirpath] or os.path.islink(path)
      kept.append(name)
    dirnames[:] = kept
    for name in sorted(filenames):
      if is_ignored_name(name):
        continue
      path = os.path.join(dirpath, name)
      relpath = _relpath(path, root)
      files.append((relpath, path, _identity(path) or relpath))  # unknown: unique
      if linked[dirpath] or os.path.islink(path):
        through_link.add(relpath)
  # What a file leads to -> the path listed for it: the first path without links, else
  # the first through links.
  listed = {identity: relpath for relpath, _, identity in reversed(files)
            if relpath not in through_link}
  entries = []
  zips = []
  for relpath, path, identity in files:
    if relpath in through_link and listed.setdefault(identity, relpath) != relpath:
      repeats.append({'file': relpath, 'reason': (
          f'the same file as {listed[identity]!r} (a link): read once, as that')})
    elif into_zips and relpath.lower().endswith('.zip'):
      zips.append((relpath, path))
    else:
      entries.append(Entry(relpath=relpath, disk_path=path))
  if zips:
    reader = zip_reader or ZipReader()
    for relpath, path in zips:
      _walk_zip(reader, (path,), relpath, entries, problems)
  return entries


def _relpath(path: str, root: str) -> str:
  return os.path.relpath(path, root).replace(os.sep, '/')


def _walk_zip(reader: ZipReader, chain: tuple[str, ...], display: str,
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

  Besides the skipped files, the report lists what is used but suspect, each list
  with its count (`num_<list>`) and a console warning: `degenerate_images` (tiny or
  constant, `image_io.degenerate_reason`), `repeated_paths` (links to what is read
  already, read once, `walk_files`) and `empty_classes` (classes without a usable
  image; a build where classes are folders refuses them, `refuses_empty_classes`).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # Whether a class without a usable image stops the build. A class that exists because
  # a folder does is useless without images (it can be neither learned nor evaluated:
  # its ROC AUC is undefined); a partial copy of a dataset with fixed classes is fine.
  refuses_empty_classes = False

  def __init__(self, *, strict: bool = False, num_workers: int | None = None,
               **kwargs):
    self._strict = bool(strict)
    self._num_workers = num_workers
    self._report: dict[str, Any] = {}
    self._zip_reader = ZipReader()
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

  def _note(self, key: str, items: list):
    """Adds to the report's list `key` (and its count `num_<key>`, which is logged)."""
    self._report.setdefault(key, []).extend(items)
    self._report[f'num_{key}'] = len(self._report[key])

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
    raise BuildError(
        f'{self.name}: none of the {num_files} files of split {split!r} could be used'
        + (f' (e.g. {_listing(skipped, 3, "; ")})' if skipped else ''))

  def _check_classes(self, found: Iterable[str], what: str) -> list[str]:
    """The classes not in `found`; refused if `refuses_empty_classes`."""
    found = set(found)
    empty = [name for name in self.info.features['label'].names if name not in found]
    if empty and self.refuses_empty_classes:
      skipped = self._report['skipped']
      raise BuildError(
          f'{self.name}: {what} for class {", ".join(map(repr, empty))}: add its images, '
          'or build with allow_empty_classes=True'
          + (f' (skipped: {_listing(skipped, 3, "; ")})' if skipped else ''))
    return empty

  def _download_and_prepare(self, dl_manager, download_config, **kwargs):
    manual = download_config.manual_dir or getattr(dl_manager, '_manual_dir', None)
    self._reset_report(os.fspath(manual) if manual else '')
    try:
      super()._download_and_prepare(
          dl_manager=dl_manager, download_config=download_config, **kwargs)
    finally:
      self._zip_reader.close()
    report = self._report
    empty = self._check_classes((name for split in report['splits'].values()
                                 for name in split['per_class']), 'no usable image')
    if empty:
      self._note('empty_classes', empty)
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

  def _find_files(self, root: str, *, into_zips: bool = True) -> list[Entry]:
    """`walk_files` below `root`: unreadable archives skipped, repeated paths noted."""
    problems, repeats = [], []
    entries = walk_files(root, into_zips=into_zips, zip_reader=self._zip_reader,
                         problems=problems, repeats=repeats)
    for problem in problems:
      self._skip(problem['file'], problem['reason'])
    if repeats:
      self._note('repeated_paths', repeats)
    return entries

  def _read(self, entry: Entry) -> bytes:
    return self._zip_reader.read(entry)

  def _workers(self, num_items: int) -> int:
    workers = (image_io.default_num_workers() if self._num_workers is None
               else self._num_workers)
    return workers if num_items >= 64 else 0  # a pool costs ~1 s to start

  def _process(self, fn: Callable[[Any], dict[str, Any]], entries: Sequence[Entry]
               ) -> Iterator[tuple[Entry, dict[str, Any]]]:
    """Runs an image_io task on each entry (in worker processes), in order."""

    def tasks():
      for entry in entries:
        if entry.disk_path is not None:
          source = entry.disk_path  # read by the worker
        else:
          try:
            source = self._read(entry)
          except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            source = OSError(f'cannot read it from its zip archive: {e}')
        yield (entry.display, source, {})

    results = image_io.ordered_map(fn, tasks(), num_workers=self._workers(len(entries)))
    yield from zip(entries, results)

  def _generate_examples(self, split: str, entries: Sequence[Entry],
                         label: Callable[[Entry, dict[str, Any]], int], *,
                         task: Callable[[Any], dict[str, Any]] = image_io.image_task,
                         extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The examples of a split: each entry decoded by `task`, labelled by
    `label(entry, result)`; unusable files skipped, degenerate images noted."""
    label_feature = self.info.features['label']
    for entry, result in self._process(task, entries):
      if 'error' in result:
        self._skip(entry.display, result['error'], split)
        continue
      if 'degenerate' in result:
        self._note('degenerate_images', [
            {'file': entry.display, 'reason': result['degenerate'], 'split': split}])
      value = label(entry, result)
      self._count(split, label_feature.int2str(value))
      yield entry.relpath, {
          'image': result['png'],
          'label': value,
          'filename': entry.relpath,
          'patient_id': result.get('patient_id', ''),
          'sha256': result['sha256'],
          'phash': result['phash'],
          **(extra(result) if extra else {}),
      }
    self._check_nonempty(split, len(entries))


def _listing(items: list, limit: int, separator: str = '\n  ') -> str:
  """The first `limit` items of a report list ('file: reason'), for a message."""
  shown = [f"{i['file']}: {i['reason']}" if isinstance(i, dict) else str(i)
           for i in items[:limit]]
  if len(items) > limit:
    shown.append(f'... and {len(items) - limit} more')
  return separator.join(shown)


def _log_report(report: dict[str, Any]):
  splits = ', '.join(f"{name}: {s['num_examples']} {s['per_class']}"
                     for name, s in report['splits'].items())
  log.info('Built %s: %s', report['dataset'], splits)
  skipped = report['skipped']
  if skipped:
    log.warning('%s: skipped %d unusable files (listed in %s):\n  %s',
                report['dataset'], len(skipped), REPORT_FILENAME,
                _listing(skipped, _MAX_LISTED))
  # Every other counted list: ignored files, CSV rows without image, degenerate images...
  for key, value in report.items():
    name = key[len('num_'):]
    if (key.startswith('num_') and name != 'skipped' and value
        and isinstance(report.get(name), list)):
      log.warning('%s: %s %s (listed in %s):\n  %s', report['dataset'], value,
                  name.replace('_', ' '), REPORT_FILENAME, _listing(report[name], 5))
