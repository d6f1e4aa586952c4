"""Grain input pipeline: dataset registry, pooled splits, cached preprocessing, batches.

    pipeline = create_input_pipeline(config.data, global_batch_size=config.batch_size,
                                      eval_batch_size=config.eval_batch_size,
                                      seed=config.seed,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      pretrained_source=config.pretrained.source)
    batch = next(pipeline.train_iter)   # {'image': uint8 [B,S,S,1], 'label': int32 [B]}
    x = to_model_input(augment_batch(batch['image'], rng, ...), pipeline.normalization)

Flow: registry name -> sources per TFDS split -> pooled into one random-access source
(all splits concatenated; metadata gets `origin`) -> `splits.make_splits` -> index lists
-> host preprocessing (`preprocess.preprocess_image`, uint8) -> with `data.cache` the
whole split is preprocessed once into a uint8 array [N,S,S,1] held in memory (batches are
then a memory gather) -> grain.

Train order (`TrainBatches`): every epoch a fresh permutation of the train split from
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

import dataclasses
import logging
import math
import os
import sys
import time
from typing import Callable, Iterable, Iterator, Sequence

import grain
import numpy as np
import psutil

from spp_resnet.config_validation import ConfigError
from spp_resnet.data import leakage as leakage_lib
from spp_resnet.data import mix as mix_lib
from spp_resnet.data import phantom
from spp_resnet.data import preprocess
from spp_resnet.data import splits as splits_lib

# ---- Registry and pooling ----------------------------------------------------------------

def load_dataset(name: str, *, data_dir: str = '', manual_dir: str = '', mix: str = ''):
  """Registry: 'phantom[/opts]' -> the SYNTHETIC phantom; 'mix' -> the datasets listed in
  `mix` pooled into one (`mix.py`; manual_dir unused); anything else -> builders.load.

  Returns an object with `sources` (split name -> random-access source of record dicts),
  `class_names` and `build_report`.
  """
  if name == 'phantom' or name.startswith('phantom/'):
    return phantom.load(name)
  if name == 'mix':
    return mix_lib.load(mix, data_dir=data_dir)
  from spp_resnet.data import builders  # pylint: disable=g-import-not-at-top  # TFDS: slow
  return builders.load(name, data_dir=data_dir, manual_dir=manual_dir)


def check_dataset_name(name: str) -> None:
  """ValueError, naming the known datasets, for a name `load_dataset` does not know."""
  if name == 'phantom' or name.startswith('phantom/'):
    phantom.parse_name(name)
    return
  from spp_resnet.data import builders  # pylint: disable=g-import-not-at-top
  if name != 'mix' and name not in builders.names():
    raise ValueError(f'unknown dataset {name!r}; known: {", ".join(builders.names())}, '
                     "mix, phantom (or 'phantom/size=64,train=200,...')")


def read_metadata(source) -> dict[str, np.ndarray]:
  """Metadata arrays of a source (label, filename, patient_id, sha256, phash)."""
  if hasattr(source, 'read_metadata'):  # the phantom
    return source.read_metadata()
  from spp_resnet.data import builders  # pylint: disable=g-import-not-at-top
  return builders.read_metadata(source)


class ConcatSource:
  """Random-access concatenation of sources (picklable if the parts are)."""

  def __init__(self, parts: Sequence):
    self._parts = list(parts)
    self._offsets = np.cumsum([0] + [len(p) for p in self._parts])

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, index: int):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range [0, {len(self)})')
    part = int(np.searchsorted(self._offsets, index, side='right')) - 1
    return self._parts[part][index - int(self._offsets[part])]

  def __repr__(self) -> str:
    return f'ConcatSource({self._parts!r})'


@dataclasses.dataclass
class PooledDataset:
  source: ConcatSource
  # The builders' keys + 'origin' (TFDS split name); a mix adds 'dataset' (mix.py).
  metadata: dict[str, np.ndarray]
  class_names: list[str]
  build_report: dict


def _split_order(names: Iterable[str]) -> list[str]:
  names = list(names)
  head = [n for n in ('train', 'test') if n in names]
  return head + sorted(n for n in names if n not in head)


def pool(loaded) -> PooledDataset:
  """All TFDS splits of a loaded dataset, concatenated (train, test, then the rest)."""
  names = _split_order(loaded.sources)
  parts = [loaded.sources[n] for n in names]
  metas = [read_metadata(p) for p in parts]
  metadata = {}
  for key in metas[0]:
    metadata[key] = np.concatenate([np.asarray(m[key]) for m in metas])
  metadata['label'] = metadata['label'].astype(np.int64)
  metadata['origin'] = np.concatenate(
      [np.full(len(p), n, dtype=object) for p, n in zip(parts, names)]).astype(str)
  return PooledDataset(ConcatSource(parts), metadata, list(loaded.class_names),
                       dict(getattr(loaded, 'build_report', {}) or {}))


def load_pooled(name: str, *, data_dir: str = '', manual_dir: str = '',
                mix: str = '') -> PooledDataset:
  return pool(load_dataset(name, data_dir=data_dir, manual_dir=manual_dir, mix=mix))


def pooled_from_config(data_config) -> PooledDataset:
  """The pooled dataset of a `config.data` (dataset, data_dir, manual_dir, mix)."""
  return load_pooled(data_config.dataset, data_dir=data_config.data_dir,
                     manual_dir=data_config.manual_dir, mix=data_config.get('mix', ''))


# ---- Host preprocessing ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Preprocessor:
  """record -> uint8 [S,S,1] (picklable, for grain worker processes)."""
  image_size: int
  contrast_percentiles: tuple[float, float]
  crop_foreground: bool = False

  @classmethod
  def from_config(cls, data_config) -> 'Preprocessor':
    """The preprocessing of `config.data` (runs saved before a field existed: its default)."""
    return cls(int(data_config.image_size),
               tuple(float(p) for p in data_config.contrast_percentiles),
               bool(data_config.get('crop_foreground', False)))

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return preprocess.preprocess_image(image, self.image_size, self.contrast_percentiles,
                                       self.crop_foreground)


def _num_threads() -> int:
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  return max(1, min(16, cpus))


@dataclasses.dataclass(frozen=True)
class _LoadRecord:
  source: object
  indices: np.ndarray
  prep: Preprocessor

  def __call__(self, position: int) -> tuple[np.ndarray, int]:
    record = self.source[int(self.indices[position])]
    return self.prep(record['image']), int(record['label'])


def preprocess_split(source, indices: np.ndarray, prep: Preprocessor, *,
                     num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Decode + preprocess records `indices` of `source` -> (uint8 [N,S,S,1], int32 [N]).

  Threads (PIL and the decoders release the GIL), or `num_workers` grain processes.
  """
  n = len(indices)
  images = np.zeros((n, prep.image_size, prep.image_size, 1), np.uint8)
  labels = np.zeros((n,), np.int32)
  if n == 0:
    return images, labels
  threads = _num_threads()
  ds = grain.MapDataset.range(n).map(_LoadRecord(source, np.asarray(indices), prep))
  ds = ds.map_with_index(lambda i, x: (i, x))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                               prefetch_buffer_size=4 * threads))
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                           per_worker_buffer_size=16))
  it = iter(it_ds)
  for i, (image, label) in it:
    images[i] = image
    labels[i] = label
  if hasattr(it, 'close'):
    it.close()
  return images, labels


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


# ---- Batch functions ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _CachedBatch:
  """positions in the split -> batch, from the in-memory uint8 cache."""
  images: np.ndarray
  labels: np.ndarray

  def __call__(self, positions: np.ndarray) -> dict:
    positions = np.asarray(positions)
    return {'image': self.images[positions], 'label': self.labels[positions]}


@dataclasses.dataclass(frozen=True)
class _DecodedBatch:
  """positions in the split -> batch, decoding and preprocessing on the fly."""
  load: _LoadRecord

  def __call__(self, positions: np.ndarray) -> dict:
    size = self.load.prep.image_size
    images = np.empty((len(positions), size, size, 1), np.uint8)
    labels = np.empty((len(positions),), np.int32)
    for k, pos in enumerate(np.asarray(positions)):
      images[k], labels[k] = self.load(int(pos))
    return {'image': images, 'label': labels}


@dataclasses.dataclass(frozen=True)
class EvalBatch:
  """eval batch number -> padded local batch with mask."""
  batch_fn: Callable[[np.ndarray], dict]
  num_examples: int
  global_batch: int
  local_batch: int
  process_index: int
  image_size: int

  def __call__(self, b: int) -> dict:
    start = int(b) * self.global_batch + self.process_index * self.local_batch
    positions = np.arange(start, start + self.local_batch)
    mask = positions < self.num_examples
    batch = {'image': np.zeros((self.local_batch, self.image_size, self.image_size, 1),
                               np.uint8),
             'label': np.zeros((self.local_batch,), np.int32)}
    if mask.any():
      valid = self.batch_fn(positions[mask])
      batch['image'][mask] = valid['image']
      batch['label'][mask] = valid['label']
    batch['mask'] = mask
    return batch


class TrainBatches(grain.MapDataset):
  """Infinite random-access dataset of this process's local train batches.

  Element k is local batch k: epoch e = k // steps_per_epoch uses the permutation
  `default_rng((seed, e)).permutation(num_examples)` of the train positions, cut to
  steps_per_epoch * global_batch (drop remainder, a different remainder each epoch);
  global batch s of the epoch is perm[s*G:(s+1)*G] and this process reads its slice
  [p*L:(p+1)*L] (L = G / process_count): disjoint over processes, together exactly the
  single-process global batch. A pure function of (seed, k): grain's iterator state (a
  batch counter) resumes bit-exactly, with or without worker processes.

  Equivalent to MapDataset.range(n).shuffle(seed)[:steps*G].repeat().batch(L)[p::P]
  but computes a batch's indices with one numpy slice: grain's per-element index
  shuffle costs ~25 us per example (0.8 ms per batch of 32, holding the GIL), which
  capped the cached path at ~30k images/s on a 2-core machine.
  """

  def __init__(self, num_examples: int, batch_fn: Callable[[np.ndarray], dict], *,
               global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    super().__init__()
    if global_batch_size % process_count:
      raise ValueError(f'global batch size {global_batch_size} is not divisible by the '
                       f'process count {process_count}.')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
    self._n = int(num_examples)
    self._global = int(global_batch_size)
    self._local = self._global // process_count
    self._offset = process_index * self._local
    self._steps = self._n // self._global
    if self._steps == 0:
      raise ValueError(f'The train split has {num_examples} examples, fewer than one '
                       f'global batch ({global_batch_size}).')
    self._seed = int(seed)
    self._batch_fn = batch_fn
    self._permutations: dict[int, np.ndarray] = {}

  @property
  def steps_per_epoch(self) -> int:
    return self._steps

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return (f'TrainBatches(n={self._n}, global_batch={self._global}, '
            f'local_batch={self._local}, seed={self._seed})')

  def permutation(self, epoch: int) -> np.ndarray:
    perm = self._permutations.get(epoch)
    if perm is None:
      rng = np.random.default_rng(np.random.SeedSequence([self._seed, 0x7EA1, epoch]))
      perm = rng.permutation(self._n)
      if len(self._permutations) > 4:  # iterators move forward: keep the last few
        self._permutations.pop(min(self._permutations, default=None), None)
      self._permutations[epoch] = perm
    return perm

  def positions(self, index: int) -> np.ndarray:
    """Train-split positions of local batch `index`."""
    epoch, step = divmod(int(index), self._steps)
    start = step * self._global + self._offset
    return self.permutation(epoch)[start:start + self._local]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._batch_fn(self.positions(index))

  def __getstate__(self):  # pickled to grain workers without the permutation cache
    state = self.__dict__.copy()
    state['_permutations'] = {}
    return state


# ---- The pipeline ------------------------------------------------------------------------

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
  # Extras (not in the original contract): pooled-source indices of each split, in the
  # order eval_batches visits them on one process; the pooled metadata (filename, label,
  # patient_id, sha256, phash, origin); leakage counts of the split; dataset report.
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
  pooled = pooled_from_config(data_config)
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

  prep = Preprocessor.from_config(data_config)
  num_workers = int(data_config.num_workers)
  prefetch = max(0, int(data_config.prefetch_buffer))  # batches; 0 = synchronous
  caches: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def batch_fn(split: str) -> Callable[[np.ndarray], dict]:
    if data_config.cache:
      if split not in caches:
        start = time.perf_counter()
        caches[split] = preprocess_split(pooled.source, split_indices[split], prep,
                                         num_workers=num_workers)
        logging.info('Cached %s split: %d images %dx%d in %.1f s (%.0f MB).', split,
                     len(split_indices[split]), prep.image_size, prep.image_size,
                     time.perf_counter() - start, caches[split][0].nbytes / 2**20)
      return _CachedBatch(*caches[split])
    return _DecodedBatch(_LoadRecord(pooled.source, split_indices[split], prep))

  train_ds = TrainBatches(num_train, batch_fn('train'), global_batch_size=global_batch_size,
                          seed=seed, process_index=process_index,
                          process_count=process_count)
  if data_config.cache:
    # Batches are a memory gather (~0.15 ms for 32x224x224): one background thread keeps
    # `prefetch` batches ready. Worker processes would only add IPC here (and a pickled
    # copy of the cache each), so num_workers only speeds up building the cache.
    train_iter_ds = train_ds.to_iter_dataset(
        grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch))
  else:
    # Threads decode whole batches in parallel (PIL releases the GIL); with worker
    # processes, each gets its share of the cores.
    threads = max(1, _num_threads() // max(1, num_workers))
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
    ds = grain.MapDataset.range(num_batches).map(EvalBatch(
        batch_fn(split), n, eval_batch_size, local_eval, process_index, prep.image_size))
    threads = 1 if data_config.cache else _num_threads()
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
