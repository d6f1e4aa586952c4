"""Leakage report on real data: Bhuvaji's Testing/no_tumor duplicates Training/no_tumor."""

import collections
import hashlib
import os
import subprocess
import sys

import ml_collections
import pytest

from spp_resnet.data import leakage
from spp_resnet.data import sources
from spp_resnet.data import splits

ROOT = os.path.join(os.path.dirname(__file__), '..')
REAL = os.path.join(ROOT, '..', 'shared', 'data', 'brain_tumor_classification_mri')
pytestmark = pytest.mark.skipif(not os.path.isdir(REAL), reason='real data not available')


@pytest.fixture(scope='module')
def no_tumor(tmp_path_factory):
  """The no_tumor folders of both splits (500 images), built with the TFDS builder."""
  manual = tmp_path_factory.mktemp('manual')
  for split in ('Training', 'Testing'):
    os.makedirs(manual / split)
    os.symlink(os.path.abspath(os.path.join(REAL, split, 'no_tumor')),
               manual / split / 'no_tumor')
  data_dir = tmp_path_factory.mktemp('tfds')
  pooled = sources.load_pooled('brain_tumor_mri', data_dir=str(data_dir),
                                manual_dir=str(manual))
  return pooled, str(manual), str(data_dir)


def split_config(protocol):
  return ml_collections.ConfigDict(dict(
      protocol=protocol, per_class=1500, num_test=60, test_fraction=0.2, num_folds=0,
      fold=0, near_duplicate_threshold=6, seed=0))


def byte_identical_crossing_groups():
  """Groups of byte-identical files spanning Testing/no_tumor and Training/no_tumor."""
  by_digest = collections.defaultdict(set)
  for split in ('Training', 'Testing'):
    folder = os.path.join(REAL, split, 'no_tumor')
    for name in os.listdir(folder):
      with open(os.path.join(folder, name), 'rb') as f:
        by_digest[hashlib.sha256(f.read()).hexdigest()].add(f'{split}/no_tumor/{name}')
  return [g for g in by_digest.values()
          if {f.split('/')[0] for f in g} == {'Training', 'Testing'}]


@pytest.mark.slow
def test_original_split_leaks_no_tumor_duplicates(no_tumor):
  pooled, _, _ = no_tumor
  meta = pooled.metadata
  assert len(meta['label']) == 500
  s = splits.make_splits(meta, split_config('original'))
  report = leakage.find_leaks(meta, s)
  exact = [set(meta['filename'][g]) for g in report['groups']['exact']]
  # The README's 64 groups are byte-identical files; every one is found ...
  byte_groups = byte_identical_crossing_groups()
  assert len(byte_groups) == 64
  for group in byte_groups:
    assert any(group <= found for found in exact), group
  # ... plus 17 groups of files whose bytes differ but whose pixels are identical.
  assert report['summary']['exact_groups'] == len(exact) == 81
  for group in exact:
    assert {f.split('/')[0] for f in group} == {'Training', 'Testing'}
  # Near-duplicate groups (pHash) contain the exact ones (some merge several).
  near = [set(meta['filename'][g]) for g in report['groups']['near']]
  for group in exact:
    assert any(group <= found for found in near)
  text = leakage.format_report(meta, report, pooled.class_names, split_indices=s)
  assert 'crossing train/test: 81 groups' in text and 'Testing/no_tumor/' in text
  assert 'exact_groups=81' in text


def test_grouped_split_has_no_leaks(no_tumor):
  pooled, _, _ = no_tumor
  s = splits.make_splits(pooled.metadata, split_config('grouped'))
  summary = leakage.find_leaks(pooled.metadata, s)['summary']
  assert summary['exact_groups'] == summary['near_groups'] == summary['any_groups'] == 0
  assert 80 <= summary['num_test'] <= 120  # ~20% of 500
  # The paper's slice-level protocol does leak.
  s = splits.make_splits(pooled.metadata, split_config('stratified'))
  assert leakage.find_leaks(pooled.metadata, s)['summary']['exact_groups'] > 0


def test_command_line(no_tumor):
  _, manual, data_dir = no_tumor
  out = subprocess.run(
      [sys.executable, '-m', 'spp_resnet.data.leakage', '--dataset=brain_tumor_mri',
       f'--manual_dir={manual}', f'--data_dir={data_dir}', '--max_groups=3'],
      cwd=ROOT, capture_output=True, text=True, check=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}).stdout
  assert 'exact duplicates (identical pixels) crossing train/test: 81 groups' in out
  assert '... 78 more' in out and 'exact_groups=81' in out
