"""`brain_tumor_mri`: the 4-class Kaggle folder datasets (Training/ and Testing/).

Two public datasets share this layout, `Training/<class>/*.jpg` and
`Testing/<class>/*.jpg`:
- "Brain Tumor Classification (MRI)" by Sartaj Bhuvaji (3264 images), folders
  `glioma_tumor, meningioma_tumor, no_tumor, pituitary_tumor`;
- "Brain Tumor MRI Dataset" by Masoud Nickparvar (7023 images), folders
  `glioma, meningioma, notumor, pituitary`.
Both map to the canonical classes ['glioma', 'meningioma', 'no_tumor', 'pituitary']
(config `four_class`, the default) or to ['no_tumor', 'tumor'] (config `binary`).
TFDS splits: `train` (Training/) and `test` (Testing/). The Training/ and Testing/
folders may sit anywhere below the manual dir, or inside a .zip archive there. Folder
names match case-insensitively. No patient IDs (`patient_id` is '').
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from spp_resnet.data.builders import _common

FOUR_CLASS_NAMES = ['glioma', 'meningioma', 'no_tumor', 'pituitary']
BINARY_CLASS_NAMES = ['no_tumor', 'tumor']
SARTAJ_URL = 'https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri'
SARTAJ_GITHUB = 'https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet'
NICKPARVAR_URL = 'https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset'

# Folder name (lower case, spaces and '-' as '_') -> canonical class.
FOLDER_TO_CLASS = {
    'glioma_tumor': 'glioma', 'glioma': 'glioma',
    'meningioma_tumor': 'meningioma', 'meningioma': 'meningioma',
    'no_tumor': 'no_tumor', 'notumor': 'no_tumor',
    'pituitary_tumor': 'pituitary', 'pituitary': 'pituitary',
}
FOLDER_TO_SPLIT = {'training': 'train', 'train': 'train',
                   'testing': 'test', 'test': 'test'}


def _normalize(folder: str) -> str:
  return folder.strip().lower().replace(' ', '_').replace('-', '_')


def locate(parts: tuple[str, ...]) -> tuple[str, str] | None:
  """(split, canonical class) of a file at `parts`, or None if outside the layout."""
  for i in range(len(parts) - 3, -1, -1):
    split = FOLDER_TO_SPLIT.get(_normalize(parts[i]))
    label = FOLDER_TO_CLASS.get(_normalize(parts[i + 1]))
    if split and label:
      return split, label
  return None


@dataclasses.dataclass
class BrainTumorMriConfig(tfds.core.BuilderConfig):
  class_names: tuple[str, ...] = tuple(FOUR_CLASS_NAMES)

  def label(self, canonical: str) -> int:
    if len(self.class_names) == 2:
      return 0 if canonical == 'no_tumor' else 1
    return self.class_names.index(canonical)


class BrainTumorMri(_common.ReportingBuilder):
  """4-class brain MRI folders (Bhuvaji or Nickparvar), four-class or binary."""

  name = 'brain_tumor_mri'
  BUILDER_CONFIGS = [
      BrainTumorMriConfig(
          name='four_class', class_names=tuple(FOUR_CLASS_NAMES),
          description='glioma, meningioma, no_tumor, pituitary.'),
      BrainTumorMriConfig(
          name='binary', class_names=tuple(BINARY_CLASS_NAMES),
          description='no_tumor vs. tumor (any of glioma, meningioma, pituitary).'),
  ]
  DEFAULT_CONFIG_NAME = 'four_class'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download either Kaggle dataset (needs a Kaggle account):
  - "Brain Tumor Classification (MRI)" by Sartaj Bhuvaji, {SARTAJ_URL}
    (`kaggle datasets download -d sartajbhuvaji/brain-tumor-classification-mri`;
    also at {SARTAJ_GITHUB}), or
  - "Brain Tumor MRI Dataset" by Masoud Nickparvar, {NICKPARVAR_URL}
    (`kaggle datasets download -d masoudnickparvar/brain-tumor-mri-dataset`).
  Both hold `Training/` and `Testing/` with one folder per class.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=_common.common_features(list(self.builder_config.class_names),
                                         np.uint8),
        supervised_keys=('image', 'label'),
        homepage=SARTAJ_URL,
    )

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    entries = self._find_files(manual_dir)
    by_split = {'train': [], 'test': []}
    ignored = []
    for entry in _common.dedupe(entries, key=lambda e: e.relpath):
      where = locate(entry.parts)
      if where is None:
        ignored.append(entry.display)
        continue
      by_split[where[0]].append((entry, where[1]))
    self._report.update(num_ignored_files=len(ignored), ignored_files=ignored)
    empty = [folder for folder, split in (('Training', 'train'), ('Testing', 'test'))
             if not by_split[split]]
    if empty:
      raise self._missing(
          manual_dir, f'no images in {" or ".join(f"{f}/<class>/" for f in empty)} '
          f'(class folders: {sorted(set(FOLDER_TO_CLASS))})')
    for split, items in by_split.items():
      absent = sorted(set(FOUR_CLASS_NAMES) - {label for _, label in items})
      if absent:
        self._report.setdefault('missing_classes', {})[split] = absent
    config = self.builder_config
    labels = {entry: config.label(canonical)
              for items in by_split.values() for entry, canonical in items}
    return {split: self._generate_examples(split, [entry for entry, _ in items],
                                           lambda entry, _: labels[entry])
            for split, items in by_split.items()}
