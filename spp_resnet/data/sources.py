"""Dataset registry and pooling: a config's dataset name -> one random-access source.

    pooled = sources.pooled_from_config(config.data)   # or load_pooled(name, ...)
    pooled.source[i]      # {'image': ..., 'label': ..., ...}, all TFDS splits concatenated
    pooled.metadata       # arrays: label, filename, patient_id, sha256, phash, origin

'phantom[/opts]' is the SYNTHETIC embedded set (`phantom.py`), 'mix' pools the datasets
of `data.mix` (`mix.py`), any other name is a TFDS builder (`builders/`, imported only
when needed: TFDS is slow to import).
"""

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from spp_resnet.data import mix as mix_lib
from spp_resnet.data import phantom


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
