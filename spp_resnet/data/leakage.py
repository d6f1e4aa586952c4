r"""Train/test leakage report: duplicate groups and patients that straddle a split.

  python -m spp_resnet.data.leakage --dataset=brain_tumor_mri \
      --manual_dir=../shared/data/brain_tumor_classification_mri --protocol=original

Lists every group that has members on both sides of the split, with file names:
  exact    identical decoded pixels (same sha256 of the pixels, whatever the file bytes);
  near     pHash Hamming distance <= threshold (connected components; includes exact);
  patient  the same non-empty patient id;
  any      the union of the three (the groups the 'grouped' protocol keeps together).
and a summary count. Records in neither train nor test (e.g. outside the 'paper'
subset) are ignored.
"""

from typing import Mapping, Sequence

from absl import app, flags
import ml_collections
import numpy as np

from spp_resnet.data import sources
from spp_resnet.data import splits as splits_lib

KINDS = {
    'exact': ('exact',),
    'near': ('near',),
    'patient': ('patient',),
    'any': ('exact', 'near', 'patient'),
}


def find_leaks(metadata: Mapping[str, np.ndarray], split_indices: Mapping[str, np.ndarray],
               *, near_duplicate_threshold: int = splits_lib.DEFAULT_NEAR_DUPLICATE_THRESHOLD,
               train: str = 'train', test: str = 'test') -> dict:
  """Groups crossing train/test, per kind -> {'groups': {kind: [idx arrays]}, 'summary'}."""
  n = len(metadata['label'])
  side = np.full(n, -1, np.int8)
  side[np.asarray(split_indices[train], np.int64)] = 0
  side[np.asarray(split_indices[test], np.int64)] = 1
  has_patients = 'patient_id' in metadata and np.any(np.asarray(metadata['patient_id']) != '')
  groups, summary = {}, {}
  for kind, relations in KINDS.items():
    if kind == 'patient' and not has_patients:
      continue
    ids = splits_lib.group_ids(metadata, near_duplicate_threshold=near_duplicate_threshold,
                               kinds=relations)
    crossing = []
    for members in splits_lib.groups_from_ids(ids):
      members = members[side[members] >= 0]
      if np.any(side[members] == 0) and np.any(side[members] == 1):
        crossing.append(members)
    groups[kind] = crossing
    leaked_test = sum(int(np.sum(side[g] == 1)) for g in crossing)
    summary[f'{kind}_groups'] = len(crossing)
    summary[f'{kind}_test_images'] = leaked_test
  summary['num_train'] = int(np.sum(side == 0))
  summary['num_test'] = int(np.sum(side == 1))
  return {'groups': groups, 'summary': summary}


def format_report(metadata: Mapping[str, np.ndarray], report: dict,
                  class_names: Sequence[str] | None = None, *, train: str = 'train',
                  test: str = 'test', split_indices: Mapping[str, np.ndarray] | None = None,
                  max_groups: int = 0) -> str:
  """Human-readable listing of the crossing groups (max_groups > 0: per kind)."""
  filenames = np.asarray(metadata['filename']).astype(str)
  labels = np.asarray(metadata['label'])
  patients = np.asarray(metadata.get('patient_id', np.full(len(labels), ''))).astype(str)
  in_test = np.zeros(len(labels), bool)
  if split_indices is not None:
    in_test[np.asarray(split_indices[test], np.int64)] = True
  titles = {'exact': 'exact duplicates (identical pixels)',
            'near': 'near duplicates (pHash)',
            'patient': 'shared patients',
            'any': 'any relation (exact | near | patient)'}
  lines = []
  for kind, groups in report['groups'].items():
    lines.append(f'== {titles[kind]} crossing {train}/{test}: {len(groups)} groups')
    shown = groups if max_groups <= 0 else groups[:max_groups]
    for k, members in enumerate(shown):
      lines.append(f'[{kind} {k + 1}] {len(members)} images')
      for i in members:
        label = class_names[labels[i]] if class_names is not None else str(labels[i])
        side = test if in_test[i] else train
        patient = f'  patient={patients[i]}' if patients[i] else ''
        lines.append(f'    {side:5s} {filenames[i]}  ({label}){patient}')
    if len(shown) < len(groups):
      lines.append(f'    ... {len(groups) - len(shown)} more')
  summary = report['summary']
  lines.append('== Summary: ' + ', '.join(f'{k}={v}' for k, v in summary.items()))
  return '\n'.join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  split_config = ml_collections.ConfigDict(dict(
      protocol=f.protocol, per_class=f.per_class, num_test=f.num_test,
      test_fraction=f.test_fraction, num_folds=f.num_folds, fold=f.fold, seed=f.seed,
      near_duplicate_threshold=f.threshold))
  pooled = sources.load_pooled(f.dataset, data_dir=f.data_dir, manual_dir=f.manual_dir)
  split_indices = splits_lib.make_splits(pooled.metadata, split_config)
  report = find_leaks(pooled.metadata, split_indices, near_duplicate_threshold=f.threshold)
  counts = splits_lib.describe(pooled.metadata, split_indices, pooled.class_names)
  print(f'Leakage report: dataset={f.dataset} protocol={f.protocol} records='
        f'{len(pooled.source)} split={counts} near_duplicate_threshold={f.threshold}')
  print(format_report(pooled.metadata, report, pooled.class_names,
                      split_indices=split_indices, max_groups=f.max_groups))


def _define_flags():
  flags.DEFINE_string('dataset', 'brain_tumor', 'Registry name (see sources.load_dataset).')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir ("" = default).')
  flags.DEFINE_string('manual_dir', '', 'Where the downloaded archive was unpacked.')
  flags.DEFINE_enum('protocol', 'original', list(splits_lib.PROTOCOLS), 'Split protocol.')
  flags.DEFINE_integer('per_class', 1500, "'paper': images per class.")
  flags.DEFINE_integer('num_test', 60, "'paper': test images.")
  flags.DEFINE_float('test_fraction', 0.2, "'stratified'/'grouped' holdout fraction.")
  flags.DEFINE_integer('num_folds', 0, '> 0: k-fold.')
  flags.DEFINE_integer('fold', 0, 'Test fold (k-fold).')
  flags.DEFINE_integer('seed', 0, 'Split seed.')
  flags.DEFINE_integer('threshold', splits_lib.DEFAULT_NEAR_DUPLICATE_THRESHOLD,
                       'Near-duplicate threshold: max pHash Hamming distance.')
  flags.DEFINE_integer('max_groups', 0, 'List at most this many groups per kind (0 = all).')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
