"""The grain input pipeline: order, resumption, sharding, eval padding, real data."""

import os

import ml_collections
import numpy as np
import pytest

from configs import default
from spp_resnet.data import batching
from spp_resnet.data import pipeline
from spp_resnet.data import preprocess
from spp_resnet.data import sources

ROOT = os.path.join(os.path.dirname(__file__), '..')
REAL = os.path.join(ROOT, '..', 'shared', 'data', 'brain_tumor_classification_mri')
PHANTOM = 'phantom/size=16,train=44,test=10'  # 54 tiny images: ~0.1 s to generate


def data_config(**kwargs) -> ml_collections.ConfigDict:
  config = default.get_config().data
  config.dataset = PHANTOM
  config.image_size = 16
  config.split.protocol = 'original'
  for key, value in kwargs.items():
    target = config
    *path, last = key.split('.')
    for p in path:
      target = target[p]
    target[last] = value
  return config


def make(config=None, global_batch=8, eval_batch=4, seed=0, **kwargs):
  return pipeline.create_input_pipeline(config or data_config(), global_batch_size=global_batch,
                                        eval_batch_size=eval_batch, seed=seed, **kwargs)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def ids(batch, images):
  """Train-split positions of the images of a batch (by content)."""
  lookup = {img.tobytes(): i for i, img in enumerate(images)}
  return [lookup[img.tobytes()] for img in batch['image']]


# ---- train order --------------------------------------------------------------------------

def test_train_batches_order_and_epochs():
  ds = batching.TrainBatches(21, lambda pos: pos, global_batch_size=4, seed=3)
  epochs = [np.concatenate([ds[e * 5 + s] for s in range(5)]) for e in range(3)]
  for e in epochs:
    assert len(set(e.tolist())) == 20  # drop remainder: 5 steps x 4 of 21, no repeats
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
  assert len(set(np.concatenate(epochs).tolist())) == 21  # the remainder rotates
  again = batching.TrainBatches(21, lambda pos: pos, global_batch_size=4, seed=3)
  np.testing.assert_array_equal(again[7], ds[7])
  other = batching.TrainBatches(21, lambda pos: pos, global_batch_size=4, seed=4)
  assert not np.array_equal(np.concatenate([other[s] for s in range(5)]), epochs[0])
  # Two processes: disjoint halves that together are the single-process global batch.
  shards = [batching.TrainBatches(21, lambda pos: pos, global_batch_size=4, seed=3,
                                  process_index=p, process_count=2) for p in range(2)]
  for step in range(12):
    np.testing.assert_array_equal(np.concatenate([shards[0][step], shards[1][step]]),
                                  ds[step])
  with pytest.raises(ValueError):
    batching.TrainBatches(3, lambda pos: pos, global_batch_size=4, seed=0)


def test_pipeline_fields_and_batches():
  p = make(data_config(normalization='auto'), pretrained_source='imagenet_torchvision')
  assert (p.num_train, p.num_eval, p.steps_per_epoch) == (44, {'train': 44, 'test': 10}, 5)
  assert p.num_classes == 2 and p.class_names == ['no_tumor', 'tumor']
  assert p.normalization == 'imagenet'
  assert p.leakage['exact_groups'] == 0 and p.leakage['num_test'] == 10
  batch = next(p.train_iter)
  assert batch['image'].shape == (8, 16, 16, 1) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  assert batch['image'].max() > 200  # preprocessed: stretched to the full range
  p.close()


def test_determinism_reshuffle_and_cache_equivalence():
  a, b = make(), make()
  first = take(a.train_iter, 12)  # 2.4 epochs
  assert_batches_equal(first, take(b.train_iter, 12))
  images = batching.preprocess_split(
      sources.load_pooled(PHANTOM).source, a.split_indices['train'],
      preprocess.Preprocessor(16, (1.0, 99.0)))[0]
  epoch0 = sum((ids(x, images) for x in first[:5]), [])
  epoch1 = sum((ids(x, images) for x in first[5:10]), [])
  assert len(set(epoch0)) == len(set(epoch1)) == 40 and epoch0 != epoch1
  # Decoding on the fly gives the same batches as the cache; another seed another order.
  assert_batches_equal(first, take(make(data_config(cache=False)).train_iter, 12))
  other = take(make(seed=1).train_iter, 1)[0]
  assert not np.array_equal(other['label'], first[0]['label']) or not np.array_equal(
      other['image'], first[0]['image'])


def test_runs_in_one_process_reuse_the_preprocessed_images(monkeypatch):
  """Inside reuse_across_runs (an ablation, a sweep), a second run over the same images
  preprocesses none of them again and gets exactly the batches a fresh run gets."""
  alone = make(data_config(**{'split.protocol': 'stratified', 'split.seed': 1}))
  expected = take(alone.train_iter, 6) + list(alone.eval_batches('test'))
  preprocessed = []
  real = batching.preprocess_split
  monkeypatch.setattr(batching, 'preprocess_split', lambda source, indices, *a, **k: (
      preprocessed.append(len(indices)) or real(source, indices, *a, **k)))
  with pipeline.reuse_across_runs():
    first = make()  # the 'original' split: 44 train, 10 test images
    take(first.train_iter, 1), list(first.eval_batches('test'))
    assert sum(preprocessed) == 54
    second = make(data_config(**{'split.protocol': 'stratified', 'split.seed': 1}))
    got = take(second.train_iter, 6) + list(second.eval_batches('test'))
  assert sum(preprocessed) == 54  # every image was done by the first run
  assert_batches_equal(expected, got)
  # Outside the block nothing is kept.
  make()
  assert sum(preprocessed) == 54 + 44


@pytest.mark.parametrize('cache', [True, False])
def test_checkpoint_state_resumes_exactly(cache):
  p = make(data_config(cache=cache))
  take(p.train_iter, 3)
  state = p.train_iter.get_state()
  expected = take(p.train_iter, 6)  # crosses the epoch boundary at step 5
  fresh = make(data_config(cache=cache))
  fresh.train_iter.set_state(state)
  assert_batches_equal(take(fresh.train_iter, 6), expected)


def test_two_process_sharding():
  single = take(make(global_batch=8).train_iter, 7)
  shards = [take(make(global_batch=8, process_index=i, process_count=2).train_iter, 7)
            for i in range(2)]
  for step, batch in enumerate(single):
    halves = [shards[0][step], shards[1][step]]
    assert halves[0]['image'].shape[0] == 4
    for k in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), batch[k])


# ---- eval ---------------------------------------------------------------------------------

def test_eval_batches_padding_and_order():
  p = make(eval_batch=4)
  batches = list(p.eval_batches('test'))
  assert len(batches) == 3  # 10 examples -> 4 + 4 + 2 (+2 padding)
  for b in batches:
    assert b['image'].shape == (4, 16, 16, 1) and b['mask'].dtype == bool
  np.testing.assert_array_equal(batches[-1]['mask'], [True, True, False, False])
  assert not batches[-1]['image'][2:].any() and not batches[-1]['label'][2:].any()
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(labels, p.metadata['label'][p.split_indices['test']])
  assert_batches_equal(batches, list(p.eval_batches('test')))  # same order every call
  assert_batches_equal(batches, list(make(data_config(cache=False)).eval_batches('test')))
  assert sum(b['mask'].sum() for b in p.eval_batches('train')) == 44
  with pytest.raises(ValueError):
    p.eval_batches('validation')
  # Two processes: same number of batches, disjoint examples, together everything.
  shards = [list(make(eval_batch=4, process_index=i, process_count=2).eval_batches('test'))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 3
  for step, batch in enumerate(batches):
    joined = {k: np.concatenate([s[step][k] for s in shards]) for k in batch}
    for k in batch:
      np.testing.assert_array_equal(joined[k], batch[k])


def test_split_protocols_in_pipeline():
  p = make(data_config(**{'split.protocol': 'grouped', 'split.test_fraction': 0.25}))
  assert p.num_eval['test'] in range(12, 16) and p.num_train + p.num_eval['test'] == 54
  assert p.leakage['any_groups'] == 0
  p = make(data_config(**{'split.protocol': 'paper', 'split.per_class': 20,
                          'split.num_test': 6}))
  assert (p.num_train, p.num_eval['test']) == (34, 6)


# ---- real data ----------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir(REAL), reason='real data not available')
def test_real_data_smoke(tmp_path):
  """Bhuvaji's 4-class MRI set, 4 training + 2 test files per class, via its builder."""
  for split, count in (('Training', 4), ('Testing', 2)):
    for cls in sorted(os.listdir(os.path.join(REAL, split))):
      os.makedirs(tmp_path / 'manual' / split / cls)
      for name in sorted(os.listdir(os.path.join(REAL, split, cls)))[:count]:
        os.symlink(os.path.abspath(os.path.join(REAL, split, cls, name)),
                   tmp_path / 'manual' / split / cls / name)
  config = data_config(dataset='brain_tumor_mri', manual_dir=str(tmp_path / 'manual'),
                       data_dir=str(tmp_path / 'tfds'), image_size=32)
  p = make(config, global_batch=8, eval_batch=8, pretrained_source='imagenet_keras')
  assert p.class_names == ['glioma', 'meningioma', 'no_tumor', 'pituitary']
  assert (p.num_train, p.num_eval['test'], p.normalization) == (16, 8, 'caffe')
  batch = next(p.train_iter)
  assert batch['image'].shape == (8, 32, 32, 1)
  assert batch['image'].min() == 0 and batch['image'].max() > 200  # stretched
  (test,) = list(p.eval_batches('test'))
  assert test['mask'].all() and sorted(test['label'].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_worker_processes_give_the_same_batches():
  """num_workers > 0: grain worker processes (mp_prefetch), same order as in-process."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # main.py runs under absl.app.run, which parses them
  expected = take(make().train_iter, 7)
  decoded = make(data_config(num_workers=2, cache=False))  # workers decode every batch
  got = take(decoded.train_iter, 3)
  state = decoded.train_iter.get_state()
  got += take(decoded.train_iter, 4)
  assert_batches_equal(got, expected)
  decoded.train_iter.set_state(state)
  assert_batches_equal(take(decoded.train_iter, 4), expected[3:])
  decoded.close()
