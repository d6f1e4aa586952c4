"""Dataset 'mix': several labelled datasets pooled into one (data/mix.py)."""

import collections
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import default
from spp_resnet import config_validation
from spp_resnet.data import class_mapping
from spp_resnet.data import mix
from spp_resnet.data import pipeline
from spp_resnet.data import sources
from spp_resnet.data import splits as splits_lib

DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
BOHAJU = DATA / 'bohaju_brain_tumor_sample'
FIGSHARE = DATA / 'figshare_brain_tumor_subset'


# ---- The data.mix syntax ---------------------------------------------------------------

def test_parse_mix():
  parts = mix.parse_mix(' brain_tumor_mri/binary=/d/a ; image_folder=/d/b;'
                        'phantom/easy=1,train=8;image_folder = /d/c;')
  assert [(p.name, p.dataset, p.manual_dir) for p in parts] == [
      ('brain_tumor_mri/binary', 'brain_tumor_mri/binary', '/d/a'),
      ('image_folder', 'image_folder', '/d/b'),
      ('phantom/easy=1,train=8', 'phantom/easy=1,train=8', ''),
      ('image_folder#2', 'image_folder', '/d/c')]
  assert mix.parse_mix(mix.format_mix(parts)) == parts
  assert [p.manual_dir for p in mix.parse_mix('brain_tumor')] == ['']
  for spec, message in (('', 'empty'), (' ; ', 'empty'), ('=/d/a', 'no dataset name'),
                        ('image_folder', 'needs its folder'), ('mix=/x', 'cannot contain')):
    with pytest.raises(ValueError, match=message):
      mix.parse_mix(spec)


def test_config_validation_needs_a_parseable_mix():
  config = default.get_config()
  config.data.dataset = 'mix'
  with pytest.raises(config_validation.ConfigError, match=r'^config\.data\.mix=.*empty'):
    config_validation.validate(config)
  config.data.mix = 'image_folder'
  with pytest.raises(config_validation.ConfigError,
                     match=r"^config\.data\.mix='image_folder'.*needs its folder"):
    config_validation.validate(config)
  config.data.mix = 'brain_tumor=/x;figshare_brain_tumor=/y'
  config_validation.validate(config)


# ---- Tiny image folders ----------------------------------------------------------------

def _image(path: Path, seed: int):
  # Smooth random images: distinct perceptual hashes (noise would be fine too).
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (6, 6), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(small).resize((40, 40), Image.BILINEAR).save(path)


def _split(**kwargs) -> ml_collections.ConfigDict:
  config = default.get_config().data.split
  config.update(kwargs)
  return config


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """A: Training/Testing x no/yes (16 images); B: normal/glioma (8 images), one of B's
  glioma files a byte copy of a Training/yes file of A."""
  root = tmp_path_factory.mktemp('folders')
  a, b = root / 'a', root / 'b'
  seed = 0
  for split in ('Training', 'Testing'):
    for cls in ('no', 'yes'):
      for k in range(4):
        _image(a / split / cls / f'{cls}{k}.png', seed := seed + 1)
  for cls in ('normal', 'glioma'):
    for k in range(4):
      _image(b / cls / f'{cls}{k}.png', seed := seed + 1)
  shutil.copyfile(a / 'Training' / 'yes' / 'yes2.png', b / 'glioma' / 'copy.png')
  return root, a, b


def test_mix_of_two_folders_and_the_input_pipeline(folders, tmp_path):
  root, a, b = folders
  spec = f'image_folder={a};image_folder={b}'
  pooled = sources.load_pooled('mix', data_dir=str(tmp_path), mix=spec)
  meta = pooled.metadata
  assert pooled.class_names == ['no_tumor', 'tumor']  # A's no/yes is a tumor task
  assert len(pooled.source) == 16 + 9
  assert collections.Counter(zip(meta['dataset'], meta['origin'])) == {
      ('image_folder', 'train'): 8, ('image_folder', 'test'): 8, ('image_folder#2', 'train'): 9}
  in_b = meta['dataset'] == 'image_folder#2'
  names = [f.split(':', 1)[1] for f in meta['filename'][in_b]]
  # B: normal -> no_tumor, glioma -> tumor.
  want = [0 if n.startswith('normal') else 1 for n in names]
  np.testing.assert_array_equal(meta['label'][in_b], want)
  for i in np.nonzero(in_b)[0]:
    assert int(pooled.source[int(i)]['label']) == meta['label'][i]
  assert set(meta['patient_id']) == {''}  # unknown stays unknown
  report = pooled.build_report['parts']['image_folder#2']
  assert report['class_mapping'] == {'glioma': 'tumor', 'normal': 'no_tumor'}
  assert pooled.build_report['parts']['image_folder']['class_mapping'] == {
      'no': 'no_tumor', 'yes': 'tumor'}

  # The copy in B and its original in A's train split: one group, same side of every split.
  copy = int(np.nonzero(meta['filename'] == 'image_folder#2:glioma/copy.png')[0][0])
  original = int(np.nonzero(meta['filename'] == 'image_folder:Training/yes/yes2.png')[0][0])
  assert meta['sha256'][copy] == meta['sha256'][original]
  ids = splits_lib.group_ids(meta)
  assert ids[copy] == ids[original]
  for seed in range(6):
    split = splits_lib.make_splits(meta, _split(protocol='grouped', test_fraction=0.5,
                                                seed=seed))
    assert (copy in split['test']) == (original in split['test'])
  # 'original': each record on the side its own dataset put it.
  split = splits_lib.make_splits(meta, _split(protocol='original'))
  assert set(meta['origin'][split['test']]) == {'test'} and len(split['test']) == 8

  # create_input_pipeline, unchanged, on data.dataset = 'mix'.
  config = default.get_config().data
  config.update(dict(dataset='mix', mix=spec, data_dir=str(tmp_path), image_size=32))
  config.split.protocol = 'original'
  pipe = pipeline.create_input_pipeline(config, global_batch_size=4, eval_batch_size=4, seed=0)
  try:
    assert pipe.class_names == ['no_tumor', 'tumor'] and pipe.num_train == 17
    assert next(pipe.train_iter)['image'].shape == (4, 32, 32, 1)
    labels = np.concatenate([b['label'][b['mask']] for b in pipe.eval_batches('test')])
    np.testing.assert_array_equal(labels, meta['label'][pipe.split_indices['test']])
    assert 'dataset' in pipe.metadata
  finally:
    pipe.close()


def test_mix_errors(folders, tmp_path):
  root, a, _ = folders
  with pytest.raises(ValueError, match="data.mix part 'nosuch'.*Unknown dataset"):
    sources.load_pooled('mix', data_dir=str(tmp_path), mix=f'image_folder={a};nosuch=/x')
  odd = root / 'odd'
  for cls in ('cats', 'yes'):
    _image(odd / cls / 'x.png', 99)
  with pytest.raises(class_mapping.MappingError,
                     match=r"part 'image_folder#2': its classes \['cats'\]"):
    sources.load_pooled('mix', data_dir=str(tmp_path), mix=f'image_folder={a};'
                         f'image_folder={odd}')


# ---- Real data -------------------------------------------------------------------------

@pytest.mark.skipif(not (BOHAJU.is_dir() and FIGSHARE.is_dir()),
                    reason='../shared/data not available')
@pytest.mark.slow
def test_bohaju_and_figshare(tmp_path):
  from spp_resnet.data import builders
  spec = f'brain_tumor={BOHAJU};figshare_brain_tumor={FIGSHARE}'
  pooled = sources.load_pooled('mix', data_dir=str(tmp_path), mix=spec)
  meta = pooled.metadata
  assert pooled.class_names == ['no_tumor', 'tumor']
  assert len(pooled.source) == 316 + 222
  assert collections.Counter(zip(meta['dataset'], meta['label'].tolist())) == {
      ('brain_tumor', 0): 198, ('brain_tumor', 1): 118, ('figshare_brain_tumor', 1): 222}
  assert set(meta['origin']) == {'train'}
  fig = meta['dataset'] == 'figshare_brain_tumor'
  assert set(meta['patient_id'][~fig]) == {''}
  patients = set(meta['patient_id'][fig])
  assert len(patients) == 30 and all(p.startswith('figshare_brain_tumor:') for p in patients)
  assert all(f.startswith('brain_tumor:Brain Tumor/') for f in meta['filename'][~fig])
  # Hashes as the datasets' own.
  own = builders.read_metadata(builders.load('figshare_brain_tumor', data_dir=str(tmp_path),
                                             manual_dir=str(FIGSHARE)).sources['train'])
  np.testing.assert_array_equal(meta['sha256'][fig], own['sha256'])
  np.testing.assert_array_equal(meta['phash'][fig], own['phash'])
  record = pooled.source[int(np.nonzero(fig)[0][0])]
  assert int(record['label']) == 1 and record['image'].dtype == np.uint16
  # The first part sets the classes: figshare's three tumor types have no 'no_tumor'.
  with pytest.raises(class_mapping.MappingError, match=r"part 'brain_tumor'.*no_tumor"):
    sources.load_pooled('mix', data_dir=str(tmp_path),
                         mix=f'figshare_brain_tumor={FIGSHARE};brain_tumor={BOHAJU}')
