"""`brain_tumor`: the paper's dataset, Kaggle "Brain Tumor" by Jakesh Bohaju.

3762 240x240 slices derived from BraTS 2015, labelled in `Brain Tumor.csv`
(`Image`, `Class`: 1 = tumor, 0 = no tumor; 2079 / 1683), the images as
`Brain Tumor/Brain Tumor/ImageN.jpg`. The builder reads the CSV and the `ImageN.*` files
found anywhere below the manual dir (or inside a .zip of the Kaggle archive there).
A partial copy builds too: CSV rows without an image are counted and listed in the
build report (`missing_images`), not fatal. An image the CSV lists twice with different
classes is left out (listed in `skipped` and `conflicting_csv_rows`; strict=True stops
the build instead): neither row can be trusted over the other. One TFDS split, `train`
(the dataset has no official split). No patient IDs (`patient_id` is '').
"""

from __future__ import annotations

import collections
import csv
import io
import re

import numpy as np
import tensorflow_datasets as tfds

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
    entries = self._find_files(manual_dir)
    csv_entries = [e for e in entries if e.basename.lower() == CSV_NAME.lower()]
    if not csv_entries:
      raise self._missing(manual_dir, f'no {CSV_NAME!r} (the label file) found')
    csv_entry = _common.dedupe(csv_entries, key=lambda e: 0)[0]
    rows, conflicts = self._read_csv(csv_entry)

    images = {}
    for entry in _common.dedupe(entries, key=lambda e: e.basename.lower()):
      number = _image_number(entry.basename.rsplit('.', 1)[0])
      if number is not None and entry.suffix in _common.IMAGE_EXTENSIONS:
        images.setdefault(number, entry)
    if not set(images) & (set(rows) | set(conflicts)):
      raise self._missing(
          manual_dir, f'found {csv_entry.display!r} but none of its '
          f'{len(rows) + len(conflicts)} images (ImageN.jpg)')
    for number in sorted(set(images) - set(rows)):
      reason = (f'{CSV_NAME} gives it {conflicts[number]}: left out' if number in conflicts
                else f'no row for it in {CSV_NAME}')
      self._skip(images[number].display, reason, 'train')
    missing = sorted(set(rows) - set(images))
    self._report.update(
        csv=csv_entry.display,
        num_csv_rows=len(rows),
        num_missing_images=len(missing),
        missing_images=[f'Image{n}' for n in missing],
    )
    labels = {images[n]: rows[n] for n in sorted(set(images) & set(rows))}
    return {'train': self._generate_examples('train', list(labels),
                                             lambda entry, _: labels[entry])}

  def _read_csv(self, entry: _common.Entry) -> tuple[dict[int, int], dict[int, str]]:
    """({image number: label}, {image number: its conflicting labels}) of the CSV.

    An image listed twice with different classes has no trustworthy label: it is left
    out (reported), not labelled by whichever row comes last.
    """
    data = self._read(entry)
    reader = csv.DictReader(io.StringIO(data.decode('utf-8-sig', errors='replace')))
    fields = {f.strip().lower(): f for f in reader.fieldnames or []}
    if 'image' not in fields or 'class' not in fields:
      raise _common.MissingDataError(
          f"{entry.display!r} has no 'Image' and 'Class' columns "
          f'(columns: {reader.fieldnames}); expected the CSV of {KAGGLE_URL}')
    seen, bad = collections.defaultdict(dict), []  # number -> {label: first line}
    for line, row in enumerate(reader, start=2):
      number = _image_number(row[fields['image']] or '')
      label = (row[fields['class']] or '').strip()
      if number is None or label not in ('0', '1'):
        bad.append(f'line {line}: {row[fields["image"]]!r}, class {label!r}')
        continue
      seen[number].setdefault(int(label), line)
    conflicts = {number: ' and '.join(f'class {label} (line {line})'
                                      for label, line in sorted(by_label.items()))
                 for number, by_label in seen.items() if len(by_label) > 1}
    self._report['bad_csv_rows'] = bad
    self._report['num_bad_csv_rows'] = len(bad)
    if conflicts:
      self._note('conflicting_csv_rows', [f'Image{number}: {conflicts[number]}'
                                          for number in sorted(conflicts)])
    rows = {number: next(iter(by_label)) for number, by_label in seen.items()
            if number not in conflicts}
    return rows, conflicts
