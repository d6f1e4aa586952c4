"""The SYNTHETIC phantom dataset: deterministic, random access, builder-shaped records."""

import numpy as np
import pytest

from spp_resnet.data import hashing
from spp_resnet.data import phantom


def test_records_and_determinism():
  loaded = phantom.load('phantom/size=32,train=6,test=3,seed=5')
  assert loaded.class_names == ['no_tumor', 'tumor']
  assert loaded.build_report['synthetic'] is True
  train, test = loaded.sources['train'], loaded.sources['test']
  assert (len(train), len(test)) == (6, 3)
  r = train[4]
  assert set(r) == {'image', 'label', 'filename', 'patient_id', 'sha256', 'phash'}
  assert r['image'].shape == (32, 32, 1) and r['image'].dtype == np.uint8
  assert r['label'] in (0, 1) and r['patient_id'] == '' and r['filename'] == 'phantom/00004'
  assert r['sha256'] == hashing.content_hash(r['image'])
  assert int(r['phash'], 16) == hashing.perceptual_hash(r['image']) and len(r['phash']) == 16
  # Test indices follow the train ones: unique file names over the pooled splits.
  assert test[0]['filename'] == 'phantom/00006'
  # Pure function of (seed, index): same bytes again, from a fresh source too.
  again = phantom.load('phantom/size=32,train=6,test=3,seed=5').sources['train'][4]
  np.testing.assert_array_equal(again['image'], r['image'])
  other_seed = phantom.load('phantom/size=32,train=6,test=3,seed=6').sources['train'][4]
  assert other_seed['sha256'] != r['sha256']
  assert len({train[i]['sha256'] for i in range(6)}) == 6
  with pytest.raises(IndexError):
    train[6]
  meta = train.read_metadata()
  assert list(meta['filename']) == [f'phantom/{i:05d}' for i in range(6)]
  assert meta['label'].dtype == np.int64


def test_names():
  assert phantom.parse_name('phantom') == phantom.PhantomConfig(128, 400, 100, 0, 0)
  assert phantom.parse_name('phantom/size=64,test=7') == phantom.PhantomConfig(64, 400, 7)
  assert phantom.parse_name('phantom/easy=1').easy == 1
  for bad in ('phantom/size', 'phantom/colour=3', 'brain_tumor', 'phantom/easy=2'):
    with pytest.raises(ValueError):
      phantom.parse_name(bad)


def test_classes_balanced_and_not_trivial():
  images, labels = zip(*(phantom.generate(0, i, 32) for i in range(160)))
  images, labels = np.stack(images).astype(np.float32), np.array(labels)
  assert 0.35 < labels.mean() < 0.65
  # Whole-image statistics do not give the class away: the best threshold on the mean
  # or on the maximum intensity is far from perfect.
  for feature in (images.mean(axis=(1, 2, 3)), images.max(axis=(1, 2, 3))):
    order = np.argsort(feature)
    sorted_labels = labels[order]
    # accuracy of "class 1 above the k-th value" for every k, and of the reverse rule
    above = np.concatenate([[0], np.cumsum(sorted_labels)])
    acc = (np.arange(len(labels) + 1) - above + (labels.sum() - above)) / len(labels)
    assert max(acc.max(), 1 - acc.min()) < 0.75
