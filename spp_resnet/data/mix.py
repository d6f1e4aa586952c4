r"""Several labelled datasets pooled into one training set: registry name 'mix'.

  python main.py --config=configs/default.py --workdir=runs/mix \
      --config.data.dataset=mix \
      --config.data.mix='brain_tumor=/data/bohaju;figshare_brain_tumor=/data/figshare'

`data.mix` lists the parts, separated by ';' (whitespace around a part is ignored):
  NAME=MANUAL_DIR   a registry name (`sources.load_dataset`) and the folder of its files,
                    exactly what data.dataset / data.manual_dir would be for that dataset
                    alone ('image_folder=/data/my_folder' for a class-per-folder set);
  NAME              a part that needs no folder: a phantom name ('phantom/easy=1,train=50':
                    the whole entry is the name, '=' included) or a dataset already
                    prepared in data.data_dir.
Every part is prepared in data.data_dir; a manual dir cannot contain ';'.

Classes: ['no_tumor', 'tumor'] when the FIRST part is a tumor / no-tumor dataset (its two
classes map onto those two, e.g. 'no'/'yes', 'healthy'/'tumor'), else the first part's
class names. Each part's classes are mapped onto them with the rules of
`class_mapping.map_classes` (equal names after normalization; onto ['no_tumor', 'tumor'],
'glioma'/'meningioma'/'pituitary'/'yes'/... -> tumor and 'no'/'normal'/'healthy'/... ->
no_tumor). A class that maps to nothing is an error: put a part with the classes you want
first (a tumor / no-tumor dataset for a binary mix; figshare's three tumor types first
make a 3-class mix, into which no 'no_tumor' class fits).

Records and metadata: each part's records, with the label remapped. Metadata per record
(what `sources.pool` concatenates; 'origin' is added there, the record's own TFDS split,
so protocol 'original' trains on every part's train split and tests on every test split):
  label       the mix's class index;
  dataset     the part's name: its registry name, '#2', '#3', ... added when a registry
              name is repeated ('image_folder', 'image_folder#2');
  filename    '<dataset>:<filename>' (file names of different datasets may coincide);
  patient_id  '<dataset>:<id>', '' stays '' (unknown), so patients of different datasets
              never merge while each dataset's own patients stay grouped;
  sha256, phash  as they are: copies of one image in two datasets (common: public MRI
              sets re-publish each other's slices) form one group in the 'grouped' split
              and in the leakage report.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from spp_resnet.data import class_mapping

SEPARATOR = ';'


@dataclasses.dataclass(frozen=True)
class MixPart:
  name: str        # unique within the mix: 'dataset' metadata and id prefixes
  dataset: str     # registry name
  manual_dir: str  # '' = none


def _is_phantom(name: str) -> bool:
  return name == 'phantom' or name.startswith('phantom/')


def parse_mix(spec: str) -> list[MixPart]:
  """'NAME=MANUAL_DIR;NAME;...' -> parts (see module docstring). ValueError if malformed."""
  entries = [e.strip() for e in str(spec or '').split(SEPARATOR)]
  entries = [e for e in entries if e]
  if not entries:
    raise ValueError("data.mix is empty: expected 'NAME=MANUAL_DIR;NAME=MANUAL_DIR;...', "
                     "e.g. 'brain_tumor=/data/bohaju;figshare_brain_tumor=/data/figshare'")
  raw = []
  for entry in entries:
    if _is_phantom(entry):  # phantom options hold '=' themselves
      dataset, manual_dir = entry, ''
    else:
      dataset, _, manual_dir = entry.partition('=')
      dataset, manual_dir = dataset.strip(), manual_dir.strip()
    if not dataset:
      raise ValueError(f'data.mix part {entry!r} has no dataset name: expected '
                       'NAME=MANUAL_DIR')
    if dataset == 'mix' or dataset.startswith('mix/'):
      raise ValueError(f'data.mix part {entry!r}: a mix cannot contain a mix')
    if dataset == 'image_folder' and not manual_dir:
      raise ValueError(f'data.mix part {entry!r}: image_folder needs its folder, '
                       'image_folder=/path/to/folder')
    raw.append((dataset, manual_dir))
  total = collections.Counter(d for d, _ in raw)
  seen = collections.Counter()
  parts = []
  for dataset, manual_dir in raw:
    seen[dataset] += 1
    name = dataset if total[dataset] == 1 or seen[dataset] == 1 else f'{dataset}#{seen[dataset]}'
    parts.append(MixPart(name=name, dataset=dataset, manual_dir=manual_dir))
  return parts


def format_mix(parts: list[MixPart]) -> str:
  """The inverse of `parse_mix` (up to whitespace)."""
  return SEPARATOR.join(p.dataset + (f'={p.manual_dir}' if p.manual_dir else '')
                        for p in parts)


def _prefixed(name: str, values: np.ndarray, keep_empty: bool) -> np.ndarray:
  values = np.asarray(values).astype(str)
  out = np.char.add(f'{name}:', values)
  if keep_empty:
    out = np.where(values == '', '', out)
  return out.astype(str)


class MixSource:
  """Random-access concatenation of the parts' sources of one split, labels remapped.

  Picklable when the parts are (grain worker processes); `read_metadata` (used by
  `sources.read_metadata`) gives the mix's metadata, see the module docstring.
  """

  def __init__(self, parts: list[tuple[str, object, np.ndarray]]):
    self._names = [name for name, _, _ in parts]
    self._sources = [source for _, source, _ in parts]
    self._mappings = [np.asarray(m, np.int64) for _, _, m in parts]
    self._offsets = np.cumsum([0] + [len(s) for s in self._sources])
    self._metadata = None

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range [0, {len(self)})')
    part = int(np.searchsorted(self._offsets, index, side='right')) - 1
    record = dict(self._sources[part][index - int(self._offsets[part])])
    record['label'] = self._mappings[part][int(record['label'])]
    return record

  def read_metadata(self) -> dict[str, np.ndarray]:
    if self._metadata is not None:
      return self._metadata
    from spp_resnet.data import sources  # pylint: disable=g-import-not-at-top  # cycle
    metas = []
    for name, source, mapping in zip(self._names, self._sources, self._mappings):
      m = dict(sources.read_metadata(source))
      m['label'] = mapping[np.asarray(m['label'], np.int64)]
      if 'filename' in m:
        m['filename'] = _prefixed(name, m['filename'], keep_empty=False)
      if 'patient_id' in m:
        m['patient_id'] = _prefixed(name, m['patient_id'], keep_empty=True)
      m['dataset'] = np.full(len(source), name).astype(str)
      metas.append(m)
    keys = [k for k in metas[0] if all(k in m for m in metas)]
    self._metadata = {k: np.concatenate([np.asarray(m[k]) for m in metas]) for k in keys}
    self._metadata['label'] = self._metadata['label'].astype(np.int64)
    return self._metadata

  def __getstate__(self):  # to grain workers without the metadata arrays
    state = self.__dict__.copy()
    state['_metadata'] = None
    return state

  def __repr__(self) -> str:
    return f'MixSource({dict(zip(self._names, self._sources))!r})'


@dataclasses.dataclass
class MixDataset:
  """Same shape as builders.Loaded: `sources` (split -> MixSource), `class_names`, ..."""
  sources: dict[str, MixSource]
  class_names: list[str]
  build_report: dict
  parts: list[MixPart]


BINARY = ['no_tumor', 'tumor']


def mix_class_names(first: list[str]) -> list[str]:
  """The mix's classes given its first part's (see the module docstring)."""
  try:
    if sorted(class_mapping.map_classes(list(first), BINARY).tolist()) == [0, 1]:
      return list(BINARY)
  except class_mapping.MappingError:
    pass
  return list(first)


def _unmapped(theirs: list[str], ours: list[str]) -> list[str]:
  out = []
  for name in theirs:
    try:
      class_mapping.map_classes([name], ours)
    except class_mapping.MappingError:
      out.append(name)
  return out


def load(spec: str, *, data_dir: str = '') -> MixDataset:
  """Loads (building where needed) every part of `spec` and pools them per TFDS split.

  Raises:
    ValueError: a malformed spec or an unknown part name (naming the part).
    class_mapping.MappingError: a part's class that maps onto none of the mix's.
  """
  from spp_resnet.data import sources  # pylint: disable=g-import-not-at-top  # cycle
  parts = parse_mix(spec)
  loaded = []
  for part in parts:
    try:
      loaded.append(sources.load_dataset(part.dataset, data_dir=data_dir,
                                         manual_dir=part.manual_dir))
    except ValueError as e:  # unknown names: say which part
      raise type(e)(f'data.mix part {part.name!r}: {e}') from e
  class_names = mix_class_names(list(loaded[0].class_names))
  mappings = []
  for part, data in zip(parts, loaded):
    unmapped = _unmapped(list(data.class_names), class_names)
    if unmapped:
      raise class_mapping.MappingError(
          f'data.mix part {part.name!r}: its classes {unmapped} (of {list(data.class_names)}) '
          f"map onto none of the mix's classes {class_names}, set by its first part "
          f'({parts[0].name}). Names must match, or be tumor / no-tumor names for a '
          "['no_tumor', 'tumor'] mix: put a part with the classes you want first.")
    mappings.append(class_mapping.map_classes(list(data.class_names), class_names))

  splits = []
  for data in loaded:
    splits += [s for s in data.sources if s not in splits]
  sources = {}
  for split in splits:
    sources[split] = MixSource([(p.name, d.sources[split], m)
                                for p, d, m in zip(parts, loaded, mappings)
                                if split in d.sources])

  report = {'mix': format_mix(parts), 'class_names': class_names, 'parts': {},
            'skipped': [], 'num_examples': 0, 'num_skipped': 0}
  for part, data, mapping in zip(parts, loaded, mappings):
    part_report = dict(getattr(data, 'build_report', {}) or {})
    sizes = {s: len(src) for s, src in data.sources.items()}
    report['parts'][part.name] = {
        'dataset': part.dataset, 'manual_dir': part.manual_dir,
        'class_mapping': {c: class_names[m] for c, m in zip(data.class_names, mapping)},
        'splits': sizes, 'build_report': part_report}
    report['num_examples'] += sum(sizes.values())
    for item in part_report.get('skipped', []) or []:
      report['skipped'].append({**item, 'file': f"{part.name}:{item.get('file', '')}"})
  report['num_skipped'] = len(report['skipped'])
  return MixDataset(sources=sources, class_names=class_names, build_report=report,
                    parts=parts)
