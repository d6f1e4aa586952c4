"""The input pipeline: config.data -> split, cached, batched train and eval data (grain).

    pipeline = create_input_pipeline(config.data, global_batch_size=config.batch_size,
                                      eval_batch_size=config.eval_batch_size,
                                      seed=config.seed,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      pretrained_source=config.pretrained.source)
    batch = next(pipeline.train_iter)   # {'image': uint8 [B,S,S,1], 'label': int32 [B]}
    x = to_model_input(augment_batch(batch['image'], rng, ...), pipeline.normalization)

Flow: registry name -> one pooled random-access source (`sources.py`: all TFDS splits
concatenated; metadata gets `origin`) -> `splits.make_splits` -> index lists -> host
preprocessing (`preprocess.Preprocessor`, uint8) -> with `data.cache` the whole split is
preprocessed once into a uint8 array [N,S,S,1] held in memory (batches are then a memory
gather) -> batches (`batching.py`) -> grain iterators. This module assembles them.

Train order (`batching.TrainBatches`): every epoch a fresh permutation of the train split from
(`seed`, epoch), cut to `steps_per_epoch * global_batch_size` (drop remainder, a
different remainder each epoch), repeated forever; process p of P reads the p-th
slice of every global batch (disjoint; together exactly the single-process global
batch). The order depends only on (seed, split, global batch size), not on the number
of worker processes or threads or on caching, so the checkpointed iterator state
(`get_state`/`set_state`: a batch counter) resumes bit-exactly.

`data.num_workers` > 0: grain worker processes (`mp_prefetch`) decode the uncached
batches and build the cache; the cached train iterator itself stays in-process (a
memory gather per batch). mp_prefetch needs absl flags parsed (absl.app.run).
"""

import contextlib
import dataclasses
import logging
import math
import time
from typing import Callable, Iterable, Iterator

import grain
import numpy as np
import psutil

from spp_resnet.config_validation import ConfigError
from spp_resnet.data import batching
from spp_resnet.data import leakage as leakage_lib
from spp_resnet.data import preprocess
from spp_resnet.data import sources
from spp_resnet.data import splits as splits_lib


# ---- Reuse across the runs of one process -------------------------------------------------

# None outside `reuse_across_runs`; inside it, what later runs may reuse: the pooled
# datasets by config identity, and a preprocessed copy of each (every image preprocessed
# at most once per preprocessing).
_reused: dict | None = None


@contextlib.contextmanager
def reuse_across_runs():
  """Runs started inside this block, in this process, share their pooled datasets and
  preprocessed images: an ablation or a sweep trains many configs on the same images,
  and each would otherwise load and preprocess them again. It holds one uint8 copy of
  each dataset at its newest image size (0.14 GiB for 3,000 images at 224 px), beside
  each run's own. Only for the duration of the block: a dataset changed on disk
  afterwards is read afresh."""
  global _reused
  outer = _reused
  _reused = {} if outer is None else outer
  try:
    yield
  finally:
    _reused = outer


def _data_identity(data_config) -> tuple:
  return (data_config.dataset, data_config.data_dir, data_config.manual_dir,
          data_config.get('mix', ''))


def _pooled(data_config) -> sources.PooledDataset:
  if _reused is None:
    return sources.pooled_from_config(data_config)
  key = ('pooled', _data_identity(data_config))
  if key not in _reused:
    _reused[key] = sources.pooled_from_config(data_config)
  return _reused[key]


def _preprocessed(pooled: sources.PooledDataset, data_config, indices: np.ndarray,
                  prep: preprocess.Preprocessor, num_workers: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images, labels) of `indices`; inside `reuse_across_runs` only the images not
  preprocessed before (with the same preprocessing) are."""
  if _reused is None:
    return batching.preprocess_split(pooled.source, indices, prep, num_workers=num_workers)
  key = ('images', _data_identity(data_config), prep)
  if key not in _reused:
    # Only the newest preprocessing of a dataset is kept (a sweep over image sizes).
    for old in [k for k in _reused if k[:2] == key[:2]]:
      del _reused[old]
    n, size = len(pooled.source), prep.image_size
    _reused[key] = (np.zeros((n, size, size, 1), np.uint8), np.zeros((n,), np.int32),
                    np.zeros((n,), bool))
  images, labels, done = _reused[key]
  indices = np.asarray(indices, np.int64)
  todo = np.unique(indices[~done[indices]])
  if len(todo):
    images[todo], labels[todo] = batching.preprocess_split(pooled.source, todo, prep,
                                                           num_workers=num_workers)
    done[todo] = True
  return images[indices], labels[indices]


def check_memory(data_config, num_images: int, global_batch_size: int) -> None:
  """Refuses, before anything is allocated, an image size whose preprocessed images do not
  fit in this host's available memory: every split's with `data.cache`, else a batch's.

  ConfigError naming data.image_size and data.cache, with the estimate and what is free.
  """
  size = int(data_config.image_size)
  held = num_images if data_config.cache else global_batch_size
  need = held * size * size  # uint8, one channel
  available = psutil.virtual_memory().available
  if need > available:
    what = (f'caching the {num_images} images of the splits (data.cache=True)'
            if data_config.cache else f'one batch of {held} images (data.cache=False)')
    raise ConfigError(
        f'config.data.image_size={size}: {what} needs {need / 2**30:,.1f} GiB of memory, '
        f'{available / 2**30:,.1f} GiB is available: lower data.image_size'
        + (' or set data.cache=False' if data_config.cache else ''))


@dataclasses.dataclass
class InputPipeline:
  # Infinite; {'image': uint8 [local_batch,S,S,1], 'label': int32 [local_batch]};
  # get_state()/set_state() for grain.checkpoint.CheckpointSave/Restore.
  train_iter: grain.DatasetIterator
  # split name ('test', 'train') -> finite local batches {'image','label','mask'}, fixed
  # batch size, padding with mask=False at the end; same order on every call; every
  # process yields the same number of batches.
  eval_batches: Callable[[str], Iterable[dict]]
  num_classes: int
  class_names: list[str]
  num_train: int
  num_eval: dict[str, int]
  steps_per_epoch: int
  normalization: str
  # Pooled-source indices of each split, in the order eval_batches visits them on one
  # process; the pooled metadata (filename, label, patient_id, sha256, phash, origin);
  # leakage counts of the split; the dataset's build report.
  split_indices: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  metadata: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  leakage: dict = dataclasses.field(default_factory=dict)
  build_report: dict = dataclasses.field(default_factory=dict)
  num_records: int = 0  # images in the pooled dataset

  def split_summary(self) -> dict:
    """Class counts, sizes and leakage summary of the split (what the pipeline logs)."""
    info = {'counts': splits_lib.describe(self.metadata, self.split_indices,
                                          self.class_names),
            'num_train': int(len(self.split_indices['train'])),
            'num_test': int(len(self.split_indices['test'])),
            'num_records': int(self.num_records)}
    if 'val' in self.split_indices:
      info['num_val'] = int(len(self.split_indices['val']))
    if self.leakage:
      info['leakage'] = self.leakage
    return info

  def close(self):
    """Stops the train iterator's background threads / worker processes."""
    close = getattr(self.train_iter, 'close', None)
    if close is not None:
      close()


def create_input_pipeline(data_config, *, global_batch_size: int, eval_batch_size: int,
                          seed: int, process_index: int = 0, process_count: int = 1,
                          pretrained_source: str = '') -> InputPipeline:
  """config.data -> InputPipeline (see module docstring)."""
  if eval_batch_size % process_count:
    raise ValueError(f'eval batch size {eval_batch_size} is not divisible by the process '
                     f'count {process_count}.')
  normalization = preprocess.resolve_normalization(data_config.normalization,
                                                   pretrained_source)
  pooled = _pooled(data_config)
  try:
    split_indices = splits_lib.make_splits(pooled.metadata, data_config.split)
  except splits_lib.SplitError as e:
    raise ConfigError(f'config.data.split.{e.field}={e.value!r}: {e} (dataset '
                      f'{data_config.dataset!r}: {len(pooled.source)} images)') from None
  num_train = len(split_indices['train'])
  if num_train < global_batch_size:
    raise ConfigError(
        f'config.batch_size={global_batch_size}: the train split of '
        f'{data_config.dataset!r} ({data_config.split.protocol}) has {num_train} images, '
        'fewer than one batch')
  check_memory(data_config, sum(map(len, split_indices.values())), global_batch_size)
  logging.info('Dataset %s (%d records), split %s: %s', data_config.dataset,
               len(pooled.source), data_config.split.protocol,
               splits_lib.describe(pooled.metadata, split_indices, pooled.class_names))
  leakage = {}
  if all(k in pooled.metadata for k in ('sha256', 'phash')):
    leakage = leakage_lib.find_leaks(
        pooled.metadata, split_indices,
        near_duplicate_threshold=int(data_config.split.near_duplicate_threshold))['summary']
    logging.info('Train/test leakage of this split: %s', leakage)

  prep = preprocess.Preprocessor.from_config(data_config)
  num_workers = int(data_config.num_workers)
  prefetch = max(0, int(data_config.prefetch_buffer))  # batches; 0 = synchronous
  caches: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def batch_fn(split: str) -> Callable[[np.ndarray], dict]:
    if data_config.cache:
      if split not in caches:
        start = time.perf_counter()
        caches[split] = _preprocessed(pooled, data_config, split_indices[split], prep,
                                      num_workers)
        logging.info('Cached %s split: %d images %dx%d in %.1f s (%.0f MB).', split,
                     len(split_indices[split]), prep.image_size, prep.image_size,
                     time.perf_counter() - start, caches[split][0].nbytes / 2**20)
      return batching.CachedBatch(*caches[split])
    return batching.DecodedBatch(batching.LoadRecord(pooled.source, split_indices[split], prep))

  train_ds = batching.TrainBatches(num_train, batch_fn('train'),
                                   global_batch_size=global_batch_size, seed=seed,
                                   process_index=process_index, process_count=process_count)
  if data_config.cache:
    # Batches are a memory gather (~0.15 ms for 32x224x224): one background thread keeps
    # `prefetch` batches ready. Worker processes would only add IPC here (and a pickled
    # copy of the cache each), so num_workers only speeds up building the cache.
    train_iter_ds = train_ds.to_iter_dataset(
        grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch))
  else:
    # Threads decode whole batches in parallel (PIL releases the GIL); with worker
    # processes, each gets its share of the cores.
    threads = max(1, batching.num_threads() // max(1, num_workers))
    train_iter_ds = train_ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads,
                          prefetch_buffer_size=max(prefetch, threads)))
    if num_workers > 0:  # needs absl flags parsed (main.py runs under absl.app.run)
      train_iter_ds = train_iter_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)))
  train_iter = iter(train_iter_ds)

  local_eval = eval_batch_size // process_count

  def eval_batches(split: str) -> Iterator[dict]:
    if split not in split_indices:
      raise ValueError(f'Unknown split {split!r}; have {sorted(split_indices)}.')
    n = len(split_indices[split])
    num_batches = math.ceil(n / eval_batch_size)
    ds = grain.MapDataset.range(num_batches).map(batching.EvalBatch(
        batch_fn(split), n, eval_batch_size, local_eval, process_index, prep.image_size))
    threads = 1 if data_config.cache else batching.num_threads()
    return iter(ds.to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(prefetch, threads))))

  return InputPipeline(
      train_iter=train_iter,
      eval_batches=eval_batches,
      num_classes=len(pooled.class_names),
      class_names=list(pooled.class_names),
      num_train=num_train,
      num_eval={name: len(idx) for name, idx in split_indices.items()},
      steps_per_epoch=num_train // global_batch_size,
      normalization=normalization,
      split_indices=split_indices,
      metadata=pooled.metadata,
      leakage=leakage,
      build_report=pooled.build_report,
      num_records=len(pooled.source),
  )
