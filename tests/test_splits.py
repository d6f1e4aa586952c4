"""Split protocols, duplicate/patient groups and the near-duplicate threshold."""

import io
import itertools
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from spp_resnet.data import hashing
from spp_resnet.data import splits

REAL = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data',
                    'brain_tumor_classification_mri')


def hamming_distance(a: int, b: int) -> int:
  return int(a ^ b).bit_count()


def split_config(**kwargs):
  base = dict(protocol='paper', per_class=1500, num_test=60, test_fraction=0.2,
              num_folds=0, fold=0, near_duplicate_threshold=6, seed=0)
  return ml_collections.ConfigDict({**base, **kwargs})


def random_metadata(n=300, num_classes=3, seed=0, patients=0):
  rng = np.random.default_rng(seed)
  hashes = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
  meta = {
      'label': rng.integers(0, num_classes, n),
      'sha256': np.array([f'{i:064x}' for i in range(n)]),
      'phash': np.array([f'{h:016x}' for h in hashes]),
      'patient_id': np.array([f'p{rng.integers(patients)}' if patients else ''
                              for _ in range(n)]),
      'filename': np.array([f'f{i}' for i in range(n)]),
  }
  return meta


def assert_partition(s, n=None):
  assert not np.intersect1d(s['train'], s['test']).size
  for idx in s.values():
    assert np.all(np.diff(idx) > 0)  # sorted, unique
  if n is not None:
    np.testing.assert_array_equal(np.union1d(s['train'], s['test']), np.arange(n))


# ---- hashes and groups --------------------------------------------------------------------

def test_near_duplicate_pairs_match_brute_force():
  rng = np.random.default_rng(0)
  base = rng.integers(0, 2**64 - 1, 40, dtype=np.uint64)
  # Copies with a few flipped bits, so that some pairs are close.
  flips = [np.uint64(1) << np.uint64(b) for b in rng.integers(0, 64, 60)]
  hashes = np.concatenate([base, base[:30] ^ np.array(flips[:30], np.uint64)])
  i, j = splits.near_duplicate_pairs(hashes, 4, block=7)
  brute = {(a, b) for a in range(len(hashes)) for b in range(a + 1, len(hashes))
           if hamming_distance(int(hashes[a]), int(hashes[b])) <= 4}
  assert set(zip(i.tolist(), j.tolist())) == brute and len(brute) >= 30
  assert np.all(splits._popcount(np.array([2**64 - 1, 0, 5], np.uint64)) == [64, 0, 2])


def test_group_ids_exact_near_patient_transitive():
  h = ['0000000000000000', '0000000000000007', '000000000000003f',  # 0-1: 3, 1-2: 3, 0-2: 6
       'ffffffffffffffff', 'f0f0f0f0f0f0f0f0', '0f0f0f0f0f0f0f0f']
  meta = {'label': np.zeros(6, int), 'phash': np.array(h),
          'sha256': np.array(['a', 'b', 'c', 'd', 'e', 'd']),
          'patient_id': np.array(['', '', '', '', 'P', 'P'])}
  ids = splits.group_ids(meta, near_duplicate_threshold=3)
  np.testing.assert_array_equal(ids, [0, 0, 0, 3, 3, 3])  # transitive 0~1~2; 3=5 exact; 4,5 P
  np.testing.assert_array_equal(splits.group_ids(meta, kinds=('exact',)), [0, 1, 2, 3, 4, 3])
  np.testing.assert_array_equal(splits.group_ids(meta, kinds=('patient',)), [0, 1, 2, 3, 4, 4])
  np.testing.assert_array_equal(
      splits.group_ids(meta, near_duplicate_threshold=2, kinds=('near',)), np.arange(6))
  assert [g.tolist() for g in splits.groups_from_ids(ids)] == [[0, 1, 2], [3, 4, 5]]


def _real_images():
  files = []
  for split in ('Training', 'Testing'):
    for c in sorted(os.listdir(os.path.join(REAL, split))):
      names = sorted(os.listdir(os.path.join(REAL, split, c)))[:3]
      files += [(c, os.path.join(REAL, split, c, f)) for f in names]
  return [(c, np.asarray(Image.open(f).convert('L'))) for c, f in files]


@pytest.mark.skipif(not os.path.isdir(REAL), reason='real data not available')
def test_near_duplicate_threshold_on_real_images():
  """Copies are within the default threshold, different scans are not.

  The distributions behind the default (measured on all 3264 slices) are in the
  docstring of splits.py.
  """
  t = splits.DEFAULT_NEAR_DUPLICATE_THRESHOLD
  images = _real_images()  # 24 slices: the first 3 files of each class folder
  phash = [hashing.perceptual_hash(a) for _, a in images]
  shifted_within = []
  for (_, a), h in zip(images, phash):
    buf = io.BytesIO()  # resized to 224 and re-encoded as JPEG (quality 75)
    Image.fromarray(a).resize((224, 224), Image.Resampling.BILINEAR).save(
        buf, 'JPEG', quality=75)
    assert hamming_distance(h, hashing.perceptual_hash(Image.open(buf))) <= 2
    gamma = (255 * (a / 255.0) ** 0.9).astype(np.uint8)
    assert hamming_distance(h, hashing.perceptual_hash(gamma)) <= t
    p = max(1, a.shape[0] // 200)  # shifted by 0.5% (2-3 px)
    shifted = np.zeros_like(a)
    shifted[p:, p:] = a[:-p, :-p]
    shifted_within.append(hamming_distance(h, hashing.perceptual_hash(shifted)) <= t)
  assert np.mean(shifted_within) >= 0.8
  # Different scans (different classes) are all further apart than the threshold.
  for (i, (ca, _)), (j, (cb, _)) in itertools.combinations(enumerate(images), 2):
    if ca != cb:
      assert hamming_distance(phash[i], phash[j]) > t, (i, j)


# ---- protocols ----------------------------------------------------------------------------

def test_paper_protocol(caplog):
  meta = random_metadata(n=400, num_classes=2)
  counts = np.bincount(meta['label'])
  s = splits.make_splits(meta, split_config(protocol='paper', per_class=150, num_test=31))
  assert_partition(s)
  assert len(s['train']) + len(s['test']) == 300 and len(s['test']) == 31
  assert sorted(np.bincount(meta['label'][s['test']]).tolist()) == [15, 16]
  assert np.all(np.bincount(meta['label'][np.union1d(s['train'], s['test'])]) == 150)
  again = splits.make_splits(meta, split_config(protocol='paper', per_class=150, num_test=31))
  np.testing.assert_array_equal(s['test'], again['test'])
  other = splits.make_splits(meta, split_config(protocol='paper', per_class=150, num_test=31,
                                                seed=1))
  assert not np.array_equal(s['test'], other['test'])
  # Capped at availability, with a warning.
  s = splits.make_splits(meta, split_config(protocol='paper', per_class=10_000, num_test=10))
  assert len(s['train']) + len(s['test']) == 400 and 'fewer than per_class' in caplog.text
  assert counts.min() > 0


def test_stratified_holdout_and_kfold():
  meta = random_metadata(n=500, num_classes=3)
  labels = meta['label']
  s = splits.make_splits(meta, split_config(protocol='stratified', test_fraction=0.2))
  assert_partition(s, 500)
  np.testing.assert_allclose(np.bincount(labels[s['test']]) / np.bincount(labels), 0.2,
                             atol=0.01)
  tests = []
  for fold in range(5):
    s = splits.make_splits(meta, split_config(protocol='stratified', num_folds=5, fold=fold))
    assert_partition(s, 500)
    np.testing.assert_allclose(np.bincount(labels[s['test']], minlength=3),
                               np.bincount(labels) / 5, atol=1)
    tests.append(s['test'])
  np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(500))
  with pytest.raises(ValueError):
    splits.make_splits(meta, split_config(protocol='stratified', num_folds=5, fold=5))


def test_grouped_keeps_groups_together():
  meta = random_metadata(n=400, num_classes=2, patients=40)
  # Add exact and near duplicates (different patients) to join groups across patients.
  meta['sha256'][1::50] = meta['sha256'][0]
  meta['phash'][3::40] = '%016x' % (int(meta['phash'][2], 16) ^ 3)
  ids = splits.group_ids(meta)
  tests = []
  for fold in range(4):
    s = splits.make_splits(meta, split_config(protocol='grouped', num_folds=4, fold=fold))
    assert_partition(s, 400)
    assert not np.intersect1d(ids[s['train']], ids[s['test']]).size
    tests.append(s['test'])
    assert 60 < len(s['test']) < 140
  np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(400))
  s = splits.make_splits(meta, split_config(protocol='grouped', test_fraction=0.25))
  assert not np.intersect1d(ids[s['train']], ids[s['test']]).size
  frac = np.bincount(meta['label'][s['test']]) / np.bincount(meta['label'])
  assert np.all(np.abs(frac - 0.25) < 0.1)


def test_grouped_without_duplicates_is_stratified():
  meta = random_metadata(n=300, num_classes=3)
  s = splits.make_splits(meta, split_config(protocol='grouped', test_fraction=0.2))
  assert_partition(s, 300)
  np.testing.assert_allclose(np.bincount(meta['label'][s['test']]),
                             np.bincount(meta['label']) * 0.2, atol=1)


def test_original_protocol():
  meta = random_metadata(n=10)
  meta['origin'] = np.array(['train'] * 7 + ['test'] * 3)
  s = splits.make_splits(meta, split_config(protocol='original'))
  np.testing.assert_array_equal(s['test'], [7, 8, 9])
  meta['origin'] = np.array(['train'] * 10)
  with pytest.raises(ValueError, match='original'):
    splits.make_splits(meta, split_config(protocol='original'))
  with pytest.raises(ValueError, match='protocol'):
    splits.make_splits(meta, split_config(protocol='random'))
