"""From positions in a split to batches: decoding, the in-memory cache, train and eval
batches.

`preprocess_split` decodes and preprocesses a split once (threads, or grain worker
processes) into the uint8 array the cached batches gather from. `TrainBatches` is the
infinite, resumable, multi-process train order; `EvalBatch` pads the last eval batch and
marks the padding with `mask`.
"""

import dataclasses
import os
import sys
from typing import Callable

import grain
import numpy as np

from spp_resnet.data import preprocess


def num_threads() -> int:
  """Host threads for decoding: the CPUs this process may use, at most 16."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  return max(1, min(16, cpus))


@dataclasses.dataclass(frozen=True)
class LoadRecord:
  """position in a split -> (preprocessed uint8 image, label), picklable."""
  source: object
  indices: np.ndarray
  prep: preprocess.Preprocessor

  def __call__(self, position: int) -> tuple[np.ndarray, int]:
    record = self.source[int(self.indices[position])]
    return self.prep(record['image']), int(record['label'])


def preprocess_split(source, indices: np.ndarray, prep: preprocess.Preprocessor, *,
                     num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Decode + preprocess records `indices` of `source` -> (uint8 [N,S,S,1], int32 [N]).

  Threads (PIL and the decoders release the GIL), or `num_workers` grain processes.
  """
  n = len(indices)
  images = np.zeros((n, prep.image_size, prep.image_size, 1), np.uint8)
  labels = np.zeros((n,), np.int32)
  if n == 0:
    return images, labels
  threads = num_threads()
  ds = grain.MapDataset.range(n).map(LoadRecord(source, np.asarray(indices), prep))
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


@dataclasses.dataclass(frozen=True)
class CachedBatch:
  """positions in the split -> batch, from the in-memory uint8 cache."""
  images: np.ndarray
  labels: np.ndarray

  def __call__(self, positions: np.ndarray) -> dict:
    positions = np.asarray(positions)
    return {'image': self.images[positions], 'label': self.labels[positions]}


@dataclasses.dataclass(frozen=True)
class DecodedBatch:
  """positions in the split -> batch, decoding and preprocessing on the fly."""
  load: LoadRecord

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
