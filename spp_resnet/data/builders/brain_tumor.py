"""`brain_tumor`: the paper's dataset, Kaggle "Brain Tumor" by Jakesh Bohaju.

3762 240x240 slices derived from BraTS 2015, labelled in `Brain Tumor.csv`
(`Image`, `Class`: 1 = tumor, 0 = no tumor; 2079 / 1683), the images as
`Brain Tumor/Brain Tumor/ImageN.jpg`. The builder reads the CSV and the `ImageN.*` files
found anywhere below the manual dir (or inside a .zip of the Kaggle archive there).
A partial copy builds too: CSV rows without an image are counted and listed in the
build report (`missing_images`), not fatal. One TFDS split, `train` (the dataset has no
official split). No patient IDs (`patient_id` is '').
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import tensorflow_datasets as tfds

from spp_resnet.data import image_io
from spp_resnet.data.builders import _common

CLASS_NAMES = ['no_tumor', 'tumor']
CSV_NAME = 'Brain Tumor.csv'
KAGGLE_URL = 'https://www.kaggle.com/datasets/jakeshbohaju/brain-tumor'
_IMAGE_STEM = re.compile(r'^image(\d+)$', re.IGNORECASE)


def _image_number(name: str) -> int | None:
  match = _IMAGE_STEM.match(name.strip())
  return int(match.group(1)) if match else None


class BrainTumor(_common.ReportingBuilder):
  """Kaggle "Brain Tumor" (Bohaju): tumor / no tumor, the paper's dataset."""

  name = 'brain_tumor'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download the Kaggle dataset "Brain Tumor" by Jakesh Bohaju from
  {KAGGLE_URL} (needs a Kaggle account; or
  `kaggle datasets download -d jakeshbohaju/brain-tumor`). It holds
  `{CSV_NAME}` and `Brain Tumor/Brain Tumor/Image1.jpg` ... `Image3762.jpg`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=_common.common_features(CLASS_NAMES, np.uint8),
        supervised_keys=('image', 'label'),
        homepage=KAGGLE_URL,
    )

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    zip_reader = _common._ZipReader()  # pylint: disable=protected-access
    problems = []
    entries = _common.walk_files(manual_dir, zip_reader=zip_reader, problems=problems)
    for problem in problems:
      self._skip(problem['file'], problem['reason'])
    csv_entries = [e for e in entries if e.basename.lower() == CSV_NAME.lower()]
    if not csv_entries:
      raise self._missing(manual_dir, f'no {CSV_NAME!r} (the label file) found')
    csv_entry = _common.dedupe(csv_entries, key=lambda e: 0)[0]
    rows = self._read_csv(csv_entry, zip_reader)

    images = {}
    for entry in _common.dedupe(entries, key=lambda e: e.basename.lower()):
      number = _image_number(entry.basename.rsplit('.', 1)[0])
      if number is not None and entry.suffix in _common.IMAGE_EXTENSIONS:
        images.setdefault(number, entry)
    if not set(images) & set(rows):
      raise self._missing(
          manual_dir, f'found {csv_entry.display!r} but none of its {len(rows)} images '
          '(ImageN.jpg)')
    unlabelled = sorted(set(images) - set(rows))
    for number in unlabelled:
      self._skip(images[number].display, f'no row for it in {CSV_NAME}', 'train')
    missing = sorted(set(rows) - set(images))
    self._report.update(
        csv=csv_entry.display,
        num_csv_rows=len(rows),
        num_missing_images=len(missing),
        missing_images=[f'Image{n}' for n in missing],
    )
    labelled = [(images[n], rows[n]) for n in sorted(set(images) & set(rows))]
    return {'train': self._generate_examples(labelled, zip_reader)}

  def _read_csv(self, entry: _common.Entry, zip_reader) -> dict[int, int]:
    if entry.disk_path is not None:
      with open(entry.disk_path, 'rb') as f:
        data = f.read()
    else:
      data = zip_reader.read(entry)
    reader = csv.DictReader(io.StringIO(data.decode('utf-8-sig', errors='replace')))
    fields = {f.strip().lower(): f for f in reader.fieldnames or []}
    if 'image' not in fields or 'class' not in fields:
      raise _common.MissingDataError(
          f"{entry.display!r} has no 'Image' and 'Class' columns "
          f'(columns: {reader.fieldnames}); expected the CSV of {KAGGLE_URL}')
    rows, bad = {}, []
    for line, row in enumerate(reader, start=2):
      number = _image_number(row[fields['image']] or '')
      label = (row[fields['class']] or '').strip()
      if number is None or label not in ('0', '1'):
        bad.append(f'line {line}: {row[fields["image"]]!r}, class {label!r}')
        continue
      rows[number] = int(label)
    self._report['bad_csv_rows'] = bad
    self._report['num_bad_csv_rows'] = len(bad)
    return rows

  def _generate_examples(self, labelled, zip_reader):
    entries = [entry for entry, _ in labelled]
    labels = {entry: label for entry, label in labelled}
    results = self._process(image_io.image_task, entries, zip_reader,
                            {'sixteen_bit': 'scale'})
    for entry, result in results:
      if 'error' in result:
        self._skip(entry.display, result['error'], 'train')
        continue
      label = labels[entry]
      self._count('train', CLASS_NAMES[label])
      yield entry.relpath, {
          'image': result['png'],
          'label': label,
          'filename': entry.relpath,
          'patient_id': '',
          'sha256': result['sha256'],
          'phash': result['phash'],
      }
    self._check_nonempty('train', len(entries))
