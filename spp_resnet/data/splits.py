"""Train/test splits of a pooled dataset, with and without leakage control.

Input is the metadata of the pooled records (all TFDS splits concatenated, because the
datasets' own Training/Testing splits leak): numpy arrays `label`, `sha256`, `phash`
(16 hex chars, 64-bit pHash; or integers), `patient_id` ('' = unknown); for protocol
'original' also `origin`, the TFDS split each record came from. Output: sorted index
arrays {'train': ..., 'test': ...} (and 'val' with `val_fraction` > 0, carved from
train, always leakage-safe) into the pooled source. Deterministic given
`split.seed`.

Protocols (config.data.split.protocol):
  'original'   the dataset's own train/test splits, as they are (often leaky).
  'paper'      the paper's: a class-balanced random subset of `per_class` images per
               class, `num_test` of them (balanced over classes) held out; random at the
               slice level. Deliberately NOT group aware: that is the protocol we
               reproduce, and its leakage is measured by `leakage.py`.
  'stratified' holdout (`test_fraction`) or k-fold (`num_folds`, `fold`), stratified by
               class; not group aware.
  'grouped'    leakage-safe: like 'stratified' but whole groups go to one side, a group
               being the connected component of "same pixels (sha256)", "near-duplicate
               (pHash Hamming distance <= near_duplicate_threshold)" and "same patient".
               `max_per_class` > 0 first draws a random subset of whole groups with
               about that many images per class (e.g. to match the 'paper' subset).

Near-duplicate threshold (default 6 of 64 bits), measured with `hashing.perceptual_hash`
on the 3264 slices of brain_tumor_classification_mri (grayscale):
  * copies that are resized (to 224 or 128 px), JPEG re-encoded (quality 75 or 30) or
    gamma-adjusted (0.8): distance 0-2 for 99%, max 4 (one gamma case: 8);
  * small geometric changes spread wider: 2-degree rotation median 4 (94% <= 6), 1%
    shift median 6 (70% <= 6, 87% <= 8), 2% shift median 10, 5% shift median 20;
  * distinct images: the nearest other image is at 0-6 for half the slices, nearly
    always the adjacent slice of the same scan (leakage too in a dataset without
    patient ids), but from 8 on the union-find graph percolates: at 6 the largest
    group has 61 images (658 groups), at 8 one group swallows 835 of 3264, at 10 2135.
  pHash distances are always even here (32 of the 64 bits are set by construction), so
  6 is the largest threshold below percolation: it catches every re-encoded/resized
  copy and most slightly moved copies and adjacent slices, and over-grouping only costs
  split balance, never leakage.
"""

import collections
import logging
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

PROTOCOLS = ('original', 'paper', 'stratified', 'grouped')
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 6


class SplitError(ValueError):
  """A split the dataset cannot give; `field` (of config.data.split) and `value` say which
  setting asks for it."""

  def __init__(self, field: str, value, message: str):
    super().__init__(message)
    self.field = field
    self.value = value


# ---- Hashes and groups -------------------------------------------------------------------

def parse_phash(phash) -> np.ndarray:
  """Array of 16-hex-char strings (or ints) -> uint64 array."""
  phash = np.asarray(phash)
  if phash.dtype.kind in 'iu':
    return phash.astype(np.uint64)
  return np.array([int(str(h), 16) for h in phash], dtype=np.uint64)


if hasattr(np, 'bitwise_count'):  # numpy >= 2
  def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)
else:
  _POP8 = np.array([bin(i).count('1') for i in range(256)], np.uint8)

  def _popcount(x: np.ndarray) -> np.ndarray:
    b = x[..., None].view(np.uint8)
    return _POP8[b].sum(axis=-1, dtype=np.uint8)


def near_duplicate_pairs(hashes: np.ndarray, threshold: int,
                         block: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """All pairs i < j with Hamming(hashes[i], hashes[j]) <= threshold.

  Vectorized popcount over all pairs in row blocks: O(N^2 / 2) 64-bit ops, about 0.3 s
  for 10k hashes, O(block * N) memory.
  """
  hashes = np.asarray(hashes, np.uint64)
  n = len(hashes)
  rows, cols = [], []
  for start in range(0, n, block):
    stop = min(start + block, n)
    dist = _popcount(hashes[start:stop, None] ^ hashes[None, start:])
    i, j = np.nonzero(dist <= threshold)
    keep = j > i  # j is relative to `start`: strict upper triangle
    rows.append(i[keep] + start)
    cols.append(j[keep] + start)
  if not rows:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def _same_value_edges(values: np.ndarray, skip_empty: bool = False):
  """Edges linking every record to the first record with the same value."""
  values = np.asarray(values)
  _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
  inverse = inverse.reshape(-1)
  rows = np.arange(len(values))
  cols = first[inverse]
  keep = rows != cols
  if skip_empty:
    keep &= values != ''
  return rows[keep], cols[keep]


def _components(n: int, edges: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
  """Connected components (union-find equivalent) -> group id = smallest member index."""
  rows = np.concatenate([np.asarray(e[0], np.int64) for e in edges] + [np.zeros(0, np.int64)])
  cols = np.concatenate([np.asarray(e[1], np.int64) for e in edges] + [np.zeros(0, np.int64)])
  graph = scipy.sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
  _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
  # Canonical ids: the smallest index of each component.
  smallest = np.full(labels.max() + 1 if n else 0, n, np.int64)
  np.minimum.at(smallest, labels, np.arange(n))
  return smallest[labels]


def group_ids(metadata: Mapping[str, np.ndarray], *,
              near_duplicate_threshold: int = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
              kinds: Sequence[str] = ('exact', 'near', 'patient')) -> np.ndarray:
  """Group id per record (smallest member index) joining the relations in `kinds`.

  'exact': same sha256; 'near': pHash Hamming distance <= threshold (negative
  threshold: off); 'patient': same non-empty patient_id.
  """
  n = len(metadata['label'])
  edges = []
  if 'exact' in kinds:
    edges.append(_same_value_edges(metadata['sha256']))
  if 'near' in kinds and near_duplicate_threshold >= 0:
    edges.append(near_duplicate_pairs(parse_phash(metadata['phash']),
                                      near_duplicate_threshold))
  if 'patient' in kinds and 'patient_id' in metadata:
    edges.append(_same_value_edges(np.asarray(metadata['patient_id']).astype(str),
                                   skip_empty=True))
  return _components(n, edges)


def groups_from_ids(ids: np.ndarray, min_size: int = 2) -> list[np.ndarray]:
  """Group id array -> list of member index arrays (size >= min_size), by first member."""
  order = np.argsort(ids, kind='stable')
  uniq, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
  return [order[s:s + c] for s, c in zip(starts, counts) if c >= min_size]


# ---- Protocols ---------------------------------------------------------------------------

def _rng(seed: int, tag: str) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed), *tag.encode()]))


def _finish(train, test) -> dict[str, np.ndarray]:
  train, test = np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(test, np.int64))
  assert not np.intersect1d(train, test).size
  return {'train': train, 'test': test}


def _check_folds(num_folds: int, fold: int):
  if num_folds == 1 or num_folds < 0:
    raise ValueError(f'num_folds must be 0 (holdout) or >= 2, got {num_folds}.')
  if num_folds and not 0 <= fold < num_folds:
    raise ValueError(f'fold must be in [0, {num_folds}), got {fold}.')


def paper_split(labels: np.ndarray, *, per_class: int, num_test: int,
                seed: int) -> dict[str, np.ndarray]:
  """Balanced subset of `per_class` per class; `num_test` of it, balanced, to test."""
  labels = np.asarray(labels)
  rng = _rng(seed, 'paper')
  classes = np.unique(labels)
  quota = np.full(len(classes), num_test // len(classes))
  quota[rng.permutation(len(classes))[:num_test % len(classes)]] += 1
  train, test = [], []
  for c, q in zip(classes, quota):
    idx = rng.permutation(np.nonzero(labels == c)[0])
    take = len(idx) if per_class <= 0 else min(per_class, len(idx))
    if per_class > 0 and take < per_class:
      logging.warning("split 'paper': class %s has only %d images, fewer than "
                      'per_class=%d; using all of them.', c, len(idx), per_class)
    if q >= take:  # every class needs test images and training images
      raise SplitError('num_test', num_test, (
          f"the 'paper' split holds out {q} test images of class {c}, which has {take}, "
          'leaving none to train on: lower data.split.num_test, or use '
          "data.split.protocol='stratified' or 'grouped'"))
    test.append(idx[:q])
    train.append(idx[q:take])
  return _finish(np.concatenate(train), np.concatenate(test))


def stratified_split(labels: np.ndarray, *, test_fraction: float, num_folds: int,
                     fold: int, seed: int) -> dict[str, np.ndarray]:
  """Class-stratified holdout (num_folds == 0) or k-fold, at the record level."""
  _check_folds(num_folds, fold)
  labels = np.asarray(labels)
  rng = _rng(seed, 'stratified')
  train, test = [], []
  if num_folds:
    # Classes one after another, each shuffled; dealing positions round-robin to the
    # folds spreads every class (and the total) evenly over the folds.
    order = np.concatenate([rng.permutation(np.nonzero(labels == c)[0])
                            for c in np.unique(labels)])
    fold_of = np.arange(len(order)) % num_folds
    return _finish(order[fold_of != fold], order[fold_of == fold])
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
  for c in np.unique(labels):
    idx = rng.permutation(np.nonzero(labels == c)[0])
    k = int(round(test_fraction * len(idx)))
    test.append(idx[:k])
    train.append(idx[k:])
  return _finish(np.concatenate(train), np.concatenate(test))


def assign_groups(groups: np.ndarray, labels: np.ndarray, fractions: Sequence[float],
                  rng: np.random.Generator) -> np.ndarray:
  """Assign whole groups to bins so each bin gets ~fraction of every class.

  Greedy, largest groups first (random order among equal sizes): each group goes to the
  bin where it most reduces the squared deviation of the per-class counts from their
  targets. Returns the bin of every record.
  """
  labels = np.asarray(labels)
  classes, label_idx = np.unique(labels, return_inverse=True)
  group_uniq, group_idx = np.unique(groups, return_inverse=True)
  counts = np.zeros((len(group_uniq), len(classes)), np.int64)
  np.add.at(counts, (group_idx.reshape(-1), label_idx.reshape(-1)), 1)
  fractions = np.asarray(fractions, np.float64) / np.sum(fractions)
  target = fractions[:, None] * counts.sum(0)[None, :]  # [bins, classes]
  current = np.zeros_like(target)
  order = rng.permutation(len(group_uniq))
  order = order[np.argsort(-counts.sum(1)[order], kind='stable')]
  bin_of_group = np.zeros(len(group_uniq), np.int64)
  # Scale per class so small classes matter as much as large ones.
  scale = 1.0 / np.maximum(counts.sum(0), 1)
  for g in order:
    c = counts[g]
    gain = (((current + c - target) ** 2 - (current - target) ** 2) * scale).sum(1)
    b = int(np.argmin(gain))
    bin_of_group[g] = b
    current[b] += c
  return bin_of_group[group_idx.reshape(-1)]


def subsample_groups(groups: np.ndarray, labels: np.ndarray, max_per_class: int,
                     rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of a random subset of whole groups, about `max_per_class` per class.

  Groups are visited in random order and one is taken while every class it holds is
  still below the cap (a class can overshoot by less than one group).
  """
  _, label_idx = np.unique(np.asarray(labels), return_inverse=True)
  label_idx = label_idx.reshape(-1)
  members = groups_from_ids(np.asarray(groups), min_size=1)
  counts = np.zeros(label_idx.max() + 1 if label_idx.size else 0, np.int64)
  keep = []
  for g in rng.permutation(len(members)):
    m = members[g]
    if np.all(counts[label_idx[m]] < max_per_class):
      np.add.at(counts, label_idx[m], 1)
      keep.append(m)
  return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def grouped_split(metadata: Mapping[str, np.ndarray], *, test_fraction: float,
                  num_folds: int, fold: int, seed: int,
                  near_duplicate_threshold: int = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
                  max_per_class: int = 0) -> dict[str, np.ndarray]:
  """Leakage-safe stratified holdout / k-fold: groups never straddle train and test.

  `max_per_class` > 0: split only a random subset of whole groups with about that many
  images per class (the same subset for every fold of a seed).
  """
  _check_folds(num_folds, fold)
  ids = group_ids(metadata, near_duplicate_threshold=near_duplicate_threshold)
  idx = np.arange(len(ids))
  if max_per_class > 0:
    idx = subsample_groups(ids, metadata['label'], max_per_class, _rng(seed, 'subsample'))
  ids, labels = ids[idx], np.asarray(metadata['label'])[idx]
  rng = _rng(seed, 'grouped')
  if num_folds:
    bins = assign_groups(ids, labels, [1.0] * num_folds, rng)
    is_test = bins == fold
  else:
    if not 0.0 < test_fraction < 1.0:
      raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
    bins = assign_groups(ids, labels, [1.0 - test_fraction, test_fraction], rng)
    is_test = bins == 1
  return _finish(idx[~is_test], idx[is_test])


def original_split(origin: np.ndarray) -> dict[str, np.ndarray]:
  origin = np.asarray(origin).astype(str)
  present = sorted(set(origin))
  if 'train' not in present or 'test' not in present:
    raise SplitError('protocol', 'original', (
        f"protocol 'original' needs the dataset's own 'train' and 'test' splits; this "
        f"dataset has {present}: use 'paper', 'stratified' or 'grouped'"))
  idx = np.arange(len(origin))
  return _finish(idx[origin == 'train'], idx[origin == 'test'])


def carve_validation(metadata: Mapping[str, np.ndarray], train: np.ndarray, *,
                     val_fraction: float, seed: int,
                     near_duplicate_threshold: int = DEFAULT_NEAR_DUPLICATE_THRESHOLD
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Splits the train indices into (train, val), leakage-safe whatever the protocol.

  Validation chooses the checkpoint and the decision threshold, so a near-duplicate of a
  validation slice in training would make it optimistic exactly like a leaky test set:
  whole groups (same pixels, near duplicates, same patient) go to one side, with every
  class split in the same proportion (`assign_groups`). Without image hashes (e.g. a
  source that has none) only patients are grouped.
  """
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}.')
  train = np.asarray(train, np.int64)
  sub = {k: np.asarray(v)[train] for k, v in metadata.items()
         if k in ('label', 'sha256', 'phash', 'patient_id')}
  kinds = ('exact', 'near', 'patient') if 'phash' in sub and 'sha256' in sub else ('patient',)
  ids = group_ids(sub, near_duplicate_threshold=near_duplicate_threshold, kinds=kinds)
  bins = assign_groups(ids, sub['label'], [1.0 - val_fraction, val_fraction],
                       _rng(seed, 'validation'))
  return np.sort(train[bins == 0]), np.sort(train[bins == 1])


def make_splits(metadata: Mapping[str, np.ndarray], split_config) -> dict[str, np.ndarray]:
  """config.data.split + pooled metadata -> {'train', 'test'[, 'val']: sorted indices}.

  `val_fraction` > 0 carves a validation split out of the protocol's train split
  (`carve_validation`); the test split is the same with or without it.
  `val_dataset` names a part of a 'mix' whose images are ALL the validation split (an
  external validation set: a source the model is not trained on, so the kept checkpoint
  and threshold are chosen for transfer, not for the training source); the protocol
  splits the other parts.
  """
  val_dataset = str(split_config.get('val_dataset', '') or '')
  if val_dataset:
    if 'dataset' not in metadata:
      raise SplitError('val_dataset', val_dataset, "names a part of a 'mix' dataset")
    is_val = np.asarray(metadata['dataset']).astype(str) == val_dataset
    if not is_val.any() or is_val.all():
      raise SplitError('val_dataset', val_dataset, (
          'must name one part of the mix, not all of it (parts: '
          f'{", ".join(sorted(set(np.asarray(metadata["dataset"]).astype(str).tolist())))})'))
    rest = np.nonzero(~is_val)[0]
    split = _protocol_split({k: np.asarray(v)[rest] for k, v in metadata.items()},
                            split_config)
    split = {name: rest[idx] for name, idx in split.items()}
    split['val'] = np.nonzero(is_val)[0]
    return split
  split = _protocol_split(metadata, split_config)
  val_fraction = float(split_config.get('val_fraction', 0.0) or 0.0)
  if val_fraction > 0:
    split['train'], split['val'] = carve_validation(
        metadata, split['train'], val_fraction=val_fraction, seed=int(split_config.seed),
        near_duplicate_threshold=int(split_config.near_duplicate_threshold))
  return split


def _protocol_split(metadata: Mapping[str, np.ndarray], split_config) -> dict[str, np.ndarray]:
  protocol = split_config.protocol
  seed = int(split_config.seed)
  if protocol == 'original':
    if 'origin' not in metadata:
      raise ValueError("split protocol 'original' needs metadata['origin'].")
    return original_split(metadata['origin'])
  if protocol == 'paper':
    return paper_split(metadata['label'], per_class=int(split_config.per_class),
                       num_test=int(split_config.num_test), seed=seed)
  if protocol == 'stratified':
    return stratified_split(metadata['label'], test_fraction=float(split_config.test_fraction),
                            num_folds=int(split_config.num_folds),
                            fold=int(split_config.fold), seed=seed)
  if protocol == 'grouped':
    return grouped_split(metadata, test_fraction=float(split_config.test_fraction),
                         num_folds=int(split_config.num_folds), fold=int(split_config.fold),
                         seed=seed,
                         near_duplicate_threshold=int(split_config.near_duplicate_threshold),
                         max_per_class=int(getattr(split_config, 'max_per_class', 0) or 0))
  raise ValueError(f'Unknown split protocol {protocol!r}; expected one of {PROTOCOLS}.')


def describe(metadata: Mapping[str, np.ndarray], splits: Mapping[str, np.ndarray],
             class_names: Sequence[str] | None = None) -> dict:
  """Per-split class counts, for logs."""
  labels = np.asarray(metadata['label'])
  out = {}
  for name, idx in splits.items():
    counter = collections.Counter(labels[idx].tolist())
    out[name] = {(class_names[k] if class_names else k): v for k, v in sorted(counter.items())}
  return out
