"""TFDS builders: real data in ../shared/data, built without TensorFlow.

The real datasets are built once per session (the binary config on a symlinked subset of
the 3264-image folder set); everything else runs on small files made in tmp_path.
"""

import collections
import importlib.util
import io
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from spp_resnet.data import builders
from spp_resnet.data import hashing
from spp_resnet.data import image_io
from spp_resnet.data.builders import figshare_brain_tumor

DATA = Path(__file__).parents[1].parent / 'shared' / 'data'
BOHAJU = DATA / 'bohaju_brain_tumor_sample'
SARTAJ = DATA / 'brain_tumor_classification_mri'
FIGSHARE = DATA / 'figshare_brain_tumor_subset'


def decode_png(data: bytes, dtype=np.uint8) -> np.ndarray:
  """Decodes a PNG written by `image_io.encode_png` back to (H, W, 1) of `dtype`."""
  with Image.open(io.BytesIO(data)) as image:
    pixels = np.asarray(image).astype(np.dtype(dtype), copy=False)
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _need(path: Path) -> Path:
  if not path.is_dir():
    pytest.skip(f'real data not available: {path}')
  return path


def _check_example(example, dtype=np.uint8):
  image = example['image']
  assert image.ndim == 3 and image.shape[-1] == 1 and image.dtype == dtype
  assert hashing.content_hash(image) == example['sha256'].decode()
  assert example['phash'].decode() == f'{hashing.perceptual_hash(image):016x}'


def _counts(meta, class_names):
  return dict(collections.Counter(class_names[i] for i in meta['label']))


# ---- Real data (built once per session) -------------------------------------------


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def bohaju(data_dir):
  return builders.load('brain_tumor', data_dir=data_dir, manual_dir=str(_need(BOHAJU)))


@pytest.fixture(scope='session')
def four_class(data_dir):
  return builders.load('brain_tumor_mri', data_dir=data_dir,
                       manual_dir=str(_need(SARTAJ)))


@pytest.fixture(scope='session')
def binary(data_dir, tmp_path_factory):
  """The binary config on 10 real files per folder (symlinked): the mapping, cheaply."""
  manual = tmp_path_factory.mktemp('binary_manual')
  for split in ('Training', 'Testing'):
    for folder in sorted(os.listdir(_need(SARTAJ) / split)):
      (manual / split / folder).mkdir(parents=True)
      for name in sorted(os.listdir(SARTAJ / split / folder))[:10]:
        (manual / split / folder / name).symlink_to(SARTAJ / split / folder / name)
  return builders.load('brain_tumor_mri/binary', data_dir=data_dir, manual_dir=str(manual))


@pytest.fixture(scope='session')
def figshare(data_dir):
  return builders.load('figshare_brain_tumor', data_dir=data_dir,
                       manual_dir=str(_need(FIGSHARE)), download=False)


def test_no_tensorflow(bohaju):
  assert len(bohaju.sources['train'])
  assert 'tensorflow' not in sys.modules
  assert importlib.util.find_spec('tensorflow') is None


def test_brain_tumor_sample(bohaju):
  assert bohaju.class_names == ['no_tumor', 'tumor']
  assert list(bohaju.sources) == ['train']
  train = bohaju.sources['train']
  meta = builders.read_metadata(train)
  assert len(train) == len(meta['label']) == 316
  assert _counts(meta, bohaju.class_names) == {'no_tumor': 198, 'tumor': 118}
  report = bohaju.build_report
  assert report['num_csv_rows'] == 3762
  assert report['num_missing_images'] == 3762 - 316 == len(report['missing_images'])
  assert report['skipped'] == []
  assert report['splits']['train']['num_examples'] == 316
  assert all(f.startswith('Brain Tumor/Brain Tumor/Image') for f in meta['filename'])
  assert set(meta['patient_id']) == {''}
  # The README's 8 exact-duplicate pairs, each within one class.
  groups = collections.defaultdict(set)
  for sha, label in zip(meta['sha256'], meta['label']):
    groups[sha].add(int(label))
  assert len(meta['sha256']) - len(groups) == 8
  assert all(len(labels) == 1 for labels in groups.values())
  for i in (0, 157):
    example = train[i]
    _check_example(example)
    assert example['image'].shape == (240, 240, 1)
    assert example['filename'].decode() == meta['filename'][i]
    # RGB JPEG -> ITU-R 601 luma, exactly PIL's convert('L').
    with Image.open(BOHAJU / example['filename'].decode()) as original:
      expected = np.asarray(original.convert('L'))
    np.testing.assert_array_equal(example['image'][..., 0], expected)


@pytest.mark.slow
def test_brain_tumor_mri_four_class(four_class):
  assert four_class.class_names == ['glioma', 'meningioma', 'no_tumor', 'pituitary']
  assert sorted(four_class.sources) == ['test', 'train']
  expected = {
      'train': {'glioma': 826, 'meningioma': 822, 'no_tumor': 395, 'pituitary': 827},
      'test': {'glioma': 100, 'meningioma': 115, 'no_tumor': 105, 'pituitary': 74},
  }
  folder = {'glioma': 'glioma_tumor', 'meningioma': 'meningioma_tumor',
            'no_tumor': 'no_tumor', 'pituitary': 'pituitary_tumor'}
  shas = []
  for split, top in (('train', 'Training'), ('test', 'Testing')):
    meta = builders.read_metadata(four_class.sources[split])
    assert _counts(meta, four_class.class_names) == expected[split]
    for filename, label in zip(meta['filename'], meta['label']):
      assert filename.split('/')[:2] == [top, folder[four_class.class_names[label]]]
    shas.extend(meta['sha256'])
  assert four_class.build_report['skipped'] == []
  # Pixel-identical images: the README's 166 byte-identical groups (237 redundant
  # files) plus re-encoded copies: 300 groups, 394 redundant.
  assert len(shas) - len(set(shas)) == 394
  test = four_class.sources['test']
  _check_example(test[0])
  # Data sources pickle (grain worker processes) and decode the same after.
  assert pickle.loads(pickle.dumps(test))[3]['sha256'] == test[3]['sha256']


@pytest.mark.slow
def test_brain_tumor_mri_binary(binary, four_class):
  assert binary.class_names == ['no_tumor', 'tumor']
  four_names = four_class.class_names
  for split in ('train', 'test'):
    meta = builders.read_metadata(binary.sources[split])
    assert _counts(meta, binary.class_names) == {'no_tumor': 10, 'tumor': 30}
    four = builders.read_metadata(four_class.sources[split])
    four_label = dict(zip(four['filename'], four['label']))
    four_sha = dict(zip(four['filename'], four['sha256']))
    for filename, label, sha in zip(meta['filename'], meta['label'], meta['sha256']):
      assert label == int(four_names[four_label[filename]] != 'no_tumor')
      assert sha == four_sha[filename]


@pytest.mark.slow
def test_figshare_subset(figshare):
  assert figshare.class_names == ['glioma', 'meningioma', 'pituitary']
  train = figshare.sources['train']
  meta = builders.read_metadata(train)
  assert len(train) == 222
  assert _counts(meta, figshare.class_names) == {
      'meningioma': 87, 'glioma': 83, 'pituitary': 52}
  patients = collections.defaultdict(set)
  for pid, label in zip(meta['patient_id'], meta['label']):
    patients[pid].add(int(label))
  assert len(patients) == 30 and '' not in patients
  assert all(len(labels) == 1 for labels in patients.values())
  index = list(meta['filename']).index('1.mat')
  example = train[index]
  _check_example(example, np.uint16)
  assert set(np.unique(example['tumor_mask'])) <= {0, 1}
  assert example['tumor_mask'].any() and example['tumor_mask'].dtype == np.uint8
  with h5py.File(FIGSHARE / '1.mat', 'r') as f:
    image = f['cjdata/image'][()].T
    mask = f['cjdata/tumorMask'][()].T
    label = int(f['cjdata/label'][()].item())
    pid = ''.join(map(chr, f['cjdata/PID'][()].ravel()))
  np.testing.assert_array_equal(example['image'][..., 0], image)
  np.testing.assert_array_equal(example['tumor_mask'][..., 0], mask)
  assert figshare.class_names[example['label']] == {1: 'meningioma', 2: 'glioma',
                                                    3: 'pituitary'}[label]
  assert example['patient_id'].decode() == pid == meta['patient_id'][index]


def test_prepared_data_is_reused(bohaju, data_dir):
  again = builders.load('brain_tumor', data_dir=data_dir, manual_dir='/nonexistent')
  assert again.build_report == bohaju.build_report
  report_path = os.path.join(os.fspath(again.builder.data_dir), 'build_report.json')
  with open(report_path) as f:
    assert json.load(f)['num_missing_images'] == 3446


# ---- Missing data: say what to download and where to put it --------------------------


def test_missing_data_messages(tmp_path):
  empty = tmp_path / 'manual'
  empty.mkdir()
  cases = [
      ('brain_tumor', 'kaggle.com/datasets/jakeshbohaju/brain-tumor'),
      ('brain_tumor_mri', 'kaggle.com/datasets/sartajbhuvaji'),
      ('figshare_brain_tumor', 'ndownloader.figshare.com/files/3381290'),
  ]
  for name, url in cases:
    kwargs = {'download': False} if name == 'figshare_brain_tumor' else {}
    with pytest.raises(builders.MissingDataError) as error:
      builders.load(name, data_dir=str(tmp_path / 'data'), manual_dir=str(empty),
                    **kwargs)
    assert url in str(error.value) and str(empty) in str(error.value)
  # No manual dir given: the message names TFDS' default one.
  with pytest.raises(builders.MissingDataError, match='downloads/manual'):
    builders.load('brain_tumor_mri', data_dir=str(tmp_path / 'data'))


def test_figshare_offline_download_fails_with_instructions(tmp_path, monkeypatch):
  monkeypatch.setattr(figshare_brain_tumor, '_DOWNLOAD_URLS',
                      {'brainTumorDataPublic_1-766.zip': 'http://127.0.0.1:9/x.zip'})
  with pytest.raises(builders.MissingDataError) as error:
    builders.load('figshare_brain_tumor', data_dir=str(tmp_path / 'data'),
                  manual_dir=str(tmp_path / 'nothing_here'))
  message = str(error.value)
  assert 'figshare.com/articles/dataset/brain_tumor_dataset/1512427' in message
  assert str(tmp_path / 'nothing_here') in message


# ---- Zipped archives, other folder names ------------------------------------------------


def _png(pixels) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(pixels)).save(buffer, format='PNG')
  return buffer.getvalue()


def test_brain_tumor_mri_nickparvar_names_in_zip(tmp_path):
  rng = np.random.default_rng(0)
  manual = tmp_path / 'manual'
  manual.mkdir()
  files = {
      'Training/glioma/Tr-gl_1.jpg': 'glioma', 'Training/meningioma/Tr-me_1.jpg':
      'meningioma', 'Training/notumor/Tr-no_1.jpg': 'no_tumor',
      'Training/pituitary/Tr-pi_1.jpg': 'pituitary', 'Testing/notumor/Te-no_1.jpg':
      'no_tumor', 'Testing/glioma/Te-gl_1.jpg': 'glioma'}
  with zipfile.ZipFile(manual / 'archive.zip', 'w') as archive:
    for name in files:
      archive.writestr(name, _png(rng.integers(0, 255, (20, 24, 3), np.uint8)))
    archive.writestr('__MACOSX/Training/glioma/._Tr-gl_1.jpg', b'\0junk')
  for config, names in (('four_class', ['glioma', 'meningioma', 'no_tumor', 'pituitary']),
                        ('binary', ['no_tumor', 'tumor'])):
    loaded = builders.load(f'brain_tumor_mri/{config}', data_dir=str(tmp_path / 'data'),
                           manual_dir=str(manual))
    assert loaded.class_names == names
    assert loaded.build_report['skipped'] == []
    for split, top in (('train', 'Training'), ('test', 'Testing')):
      meta = builders.read_metadata(loaded.sources[split])
      assert sorted(meta['filename']) == sorted(f for f in files if f.startswith(top))
      for filename, label in zip(meta['filename'], meta['label']):
        canonical = files[filename]
        expected = (names.index(canonical) if config == 'four_class'
                    else int(canonical != 'no_tumor'))
        assert label == expected


def test_figshare_nested_zips_and_duplicates(tmp_path):
  _need(FIGSHARE)
  manual = tmp_path / 'manual'
  manual.mkdir()
  inner = io.BytesIO()
  with zipfile.ZipFile(inner, 'w') as archive:
    for name in ('1.mat', '2.mat', '3.mat'):
      archive.write(FIGSHARE / name, name)
  with zipfile.ZipFile(manual / '1512427.zip', 'w') as outer:
    outer.writestr('brainTumorDataPublic_1-766.zip', inner.getvalue())
    outer.writestr('cvind.mat', b'not a slice')
    outer.writestr('README.txt', b'readme')
  (manual / 'extracted').mkdir()
  (manual / 'extracted' / '1.mat').write_bytes((FIGSHARE / '1.mat').read_bytes())
  (manual / 'extracted' / '9999.mat').write_bytes(b'')  # empty: skipped, reported
  loaded = builders.load('figshare_brain_tumor', data_dir=str(tmp_path / 'data'),
                         manual_dir=str(manual), download=False)
  meta = builders.read_metadata(loaded.sources['train'])
  assert sorted(meta['filename']) == ['2.mat', '3.mat', 'extracted/1.mat']
  assert [s['file'] for s in loaded.build_report['skipped']] == ['extracted/9999.mat']


# ---- Image modes and bad files ------------------------------------------------------------


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, **kwargs)
  return path


def _mode_images(root: Path) -> dict[str, tuple[Path, np.ndarray]]:
  """Files in various modes and the canonical pixels each must decode to."""
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (16, 20, 3), np.uint8)
  alpha = rng.integers(0, 256, (16, 20), np.uint8)
  luma = np.asarray(Image.fromarray(rgb).convert('L'))
  out = {}
  out['L'] = (_save(Image.fromarray(luma), root / 'L.png'), luma)
  out['RGB'] = (_save(Image.fromarray(rgb), root / 'RGB.png'), luma)
  rgba = Image.fromarray(np.dstack([rgb, alpha]))
  premultiplied = np.round(rgb.astype(np.float64) * alpha[..., None] / 255).astype(
      np.uint8)
  out['RGBA'] = (_save(rgba, root / 'RGBA.png'),
                 np.asarray(Image.fromarray(premultiplied).convert('L')))
  out['LA'] = (_save(Image.fromarray(np.dstack([luma, alpha]), mode=None), root / 'LA.png'),
               np.round(luma.astype(np.float64) * alpha / 255).astype(np.uint8))
  palette = Image.fromarray(rgb).quantize(colors=16)
  out['P'] = (_save(palette, root / 'P.png'),
              np.asarray(palette.convert('RGB').convert('L')))
  transparent = palette.copy()
  transparent.info['transparency'] = 0
  expected = np.asarray(palette.convert('RGB').convert('L')).copy()
  expected[np.asarray(palette) == 0] = 0
  out['P+transparency'] = (_save(transparent, root / 'Ptrans.png', transparency=0),
                           expected)
  bits = rng.integers(0, 2, (16, 20)).astype(bool)
  out['1'] = (_save(Image.fromarray(bits), root / 'bilevel.png'),
              bits.astype(np.uint8) * 255)
  sixteen = rng.integers(0, 4096, (16, 20)).astype(np.uint16)  # 12-bit MRI in 16 bits
  sixteen[0, 0] = 4000
  peak = int(sixteen.max())
  out['I;16'] = (_save(Image.fromarray(sixteen), root / 'sixteen.png'),
                 ((sixteen.astype(np.int64) * 255 + peak // 2) // peak).astype(np.uint8))
  cmyk = Image.fromarray(rgb).convert('CMYK')
  path = _save(cmyk, root / 'cmyk.jpg', quality=95)
  with Image.open(path) as image:
    out['CMYK'] = (path, np.asarray(image.convert('RGB').convert('L')))
  return out


def _bad_files(root: Path) -> dict[str, str]:
  """Unusable files -> a word their reported reason must contain."""
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(2)
  good = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(good, 'JPEG')
  (root / 'empty.jpg').write_bytes(b'')
  (root / 'lfs.jpg').write_bytes(b'version https://git-lfs.github.com/spec/v1\n'
                                 b'oid sha256:' + b'0' * 64 + b'\nsize 12345\n')
  (root / 'truncated.jpg').write_bytes(good.getvalue()[:len(good.getvalue()) // 2])
  png = _png(rng.integers(0, 256, (64, 64), np.uint8))
  (root / 'truncated.png').write_bytes(png[:len(png) // 2])
  (root / 'notes.txt').write_bytes(b'not an image\n')
  (root / 'garbage.png').write_bytes(rng.integers(0, 256, 500, np.uint8).tobytes())
  return {'empty.jpg': 'empty', 'lfs.jpg': 'LFS', 'truncated.jpg': 'truncated',
          'truncated.png': '', 'notes.txt': 'not a recognized image',
          'garbage.png': ''}


def test_decode_image_modes(tmp_path):
  for mode, (path, expected) in _mode_images(tmp_path).items():
    pixels = image_io.decode_image(path.read_bytes(), name=path.name)
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape + (1,), mode
    tolerance = 1 if mode in ('RGBA', 'LA') else 0  # compositing rounds
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= tolerance, mode
  sixteen = image_io.decode_image((tmp_path / 'sixteen.png').read_bytes(),
                                  sixteen_bit='keep')
  with Image.open(tmp_path / 'sixteen.png') as image:
    np.testing.assert_array_equal(sixteen[..., 0], np.asarray(image))
  assert sixteen.dtype == np.uint16
  png = image_io.encode_png(sixteen)
  np.testing.assert_array_equal(decode_png(png, np.uint16), sixteen)


def test_decode_image_bad_files(tmp_path):
  for name, word in _bad_files(tmp_path).items():
    with pytest.raises(image_io.ImageDecodeError) as error:
      image_io.decode_image((tmp_path / name).read_bytes(), name=name)
    assert word in error.value.reason and name in str(error.value)


def test_image_folder(tmp_path):
  root = tmp_path / 'my data'
  modes = _mode_images(root / 'train' / 'tumor')
  for path, _ in list(modes.values())[:3]:
    target = root / 'test' / 'no tumor' / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
  bad = _bad_files(root / 'train' / 'no tumor')
  (root / 'train' / 'stray.png').write_bytes(_png(np.zeros((4, 4), np.uint8)))
  (root / 'train' / 'tumor' / '.hidden.png').write_bytes(b'')
  data_dir = str(tmp_path / 'data')
  loaded = builders.load('image_folder', data_dir=data_dir, manual_dir=str(root))
  assert loaded.class_names == ['no tumor', 'tumor']
  assert sorted(loaded.sources) == ['test', 'train']
  report = loaded.build_report
  skipped = {Path(s['file']).name: s['reason'] for s in report['skipped']}
  assert set(skipped) == set(bad)
  for name, word in bad.items():
    assert word in skipped[name]
  assert report['ignored_files'] == ['train/stray.png']
  assert report['splits']['train'] == {'num_examples': len(modes),
                                       'per_class': {'tumor': len(modes)}}
  assert report['splits']['test']['num_examples'] == 3
  train = loaded.sources['train']
  meta = builders.read_metadata(train)
  for i, filename in enumerate(meta['filename']):
    assert filename.startswith('train/tumor/')
    expected = image_io.decode_image((root / filename).read_bytes())
    example = train[i]
    np.testing.assert_array_equal(example['image'], expected)
    _check_example(example)
  assert 'image_folder/my_data_' in os.fspath(loaded.builder.data_dir)

  # Another folder with the same name elsewhere gets its own prepared data.
  other = tmp_path / 'elsewhere' / 'my data'
  _mode_images(other / 'a')
  _mode_images(other / 'b')
  second = builders.load('image_folder', data_dir=data_dir, manual_dir=str(other))
  assert second.class_names == ['a', 'b'] and list(second.sources) == ['train']
  assert len(second.sources['train']) == 2 * len(modes)
  assert second.builder.data_dir != loaded.builder.data_dir
  # And the first one is still there, reused.
  again = builders.load('image_folder', data_dir=data_dir, manual_dir=str(root))
  assert again.build_report == report


def test_strict_mode_names_the_file(tmp_path):
  root = tmp_path / 'folder'
  _mode_images(root / 'a')
  (root / 'b').mkdir()
  (root / 'b' / 'ok.png').write_bytes(_png(np.zeros((8, 8), np.uint8)))
  (root / 'b' / 'pointer.png').write_bytes(b'version https://git-lfs.github.com/spec/v1\n')
  data_dir = str(tmp_path / 'data')
  with pytest.raises(builders.BuildError, match=r"b/pointer\.png.*LFS"):
    builders.load('image_folder', data_dir=data_dir, manual_dir=str(root), strict=True)
  # Lenient: built, the file reported; strict on that prepared data: fails, naming it.
  loaded = builders.load('image_folder', data_dir=data_dir, manual_dir=str(root))
  assert [s['file'] for s in loaded.build_report['skipped']] == ['b/pointer.png']
  with pytest.raises(builders.BuildError, match=r'b/pointer\.png'):
    builders.load('image_folder', data_dir=data_dir, manual_dir=str(root), strict=True)


def test_split_without_usable_files_fails_clearly(tmp_path):
  root = tmp_path / 'folder'
  (root / 'train' / 'a').mkdir(parents=True)
  (root / 'test' / 'a').mkdir(parents=True)
  (root / 'train' / 'a' / 'ok.png').write_bytes(_png(np.zeros((8, 8), np.uint8)))
  (root / 'test' / 'a' / 'x.png').write_bytes(b'hello')
  with pytest.raises(builders.BuildError, match=r"split 'test'.*test/a/x\.png"):
    builders.load('image_folder', data_dir=str(tmp_path / 'data'), manual_dir=str(root))


def test_exif_orientation_is_applied():
  pixels = np.random.default_rng(3).integers(0, 256, (10, 20, 3), np.uint8)
  image = Image.fromarray(pixels)
  exif = image.getexif()
  exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
  buffer = io.BytesIO()
  image.save(buffer, 'PNG', exif=exif)
  decoded = image_io.decode_image(buffer.getvalue())
  expected = np.asarray(image.transpose(Image.Transpose.ROTATE_270).convert('L'))
  np.testing.assert_array_equal(decoded[..., 0], expected)


# ---- Nothing silently wrong: links, empty classes, conflicting labels, tiny images -----


def _noise_png(path: Path, seed: int, size: int = 40):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(_png(np.random.default_rng(seed).integers(0, 256, (size, size),
                                                             np.uint8)))


def test_links_are_followed_but_nothing_is_read_twice(tmp_path):
  root = tmp_path / 'folder'
  for k in range(3):
    _noise_png(root / 'a' / f'{k}.png', k)
    _noise_png(root / 'b' / f'{k}.png', 10 + k)
  (root / 'a' / 'loop').symlink_to('..')  # grew a class 40-fold before
  (root / 'b' / 'self').symlink_to('.')
  (root / 'b' / 'also_0.png').symlink_to('../a/0.png')  # one file, reached twice
  (root / 'a' / '00.png').symlink_to('../b/0.png')  # walked first, but the link loses
  outside = tmp_path / 'outside'
  _noise_png(outside / 'x.png', 20)
  (root / 'b' / 'more').symlink_to(outside)  # a link elsewhere: followed
  loaded = builders.load('image_folder', data_dir=str(tmp_path / 'data'),
                         manual_dir=str(root))
  meta = builders.read_metadata(loaded.sources['train'])
  assert sorted(meta['filename']) == ['a/0.png', 'a/1.png', 'a/2.png', 'b/0.png',
                                      'b/1.png', 'b/2.png', 'b/more/x.png']
  report = loaded.build_report
  repeated = {r['file']: r['reason'] for r in report['repeated_paths']}
  assert repeated == {
      'a/loop': "a link to '.', a folder that contains it: not followed",
      'b/self': "a link to 'b', a folder that contains it: not followed",
      'b/also_0.png': "the same file as 'a/0.png' (a link): read once, as that",
      'a/00.png': "the same file as 'b/0.png' (a link): read once, as that"}
  assert report['num_repeated_paths'] == 4


def test_an_empty_class_folder_stops_the_build(tmp_path, caplog):
  root = tmp_path / 'folder'
  _noise_png(root / 'tumor' / 'x.png', 0)
  (root / 'no_tumor').mkdir()
  with pytest.raises(builders.BuildError,
                     match="^image_folder: no file in the class folder for class "
                           "'no_tumor': add its images, or build with "
                           "allow_empty_classes=True$"):
    builders.load('image_folder', data_dir=str(tmp_path / 'data'), manual_dir=str(root))
  # A class whose files are all unusable: refused once they are decoded.
  (root / 'no_tumor' / 'broken.png').write_bytes(b'not a png')
  with pytest.raises(builders.BuildError, match=r"no usable image for class 'no_tumor'.*"
                                                r"no_tumor/broken\.png: not a recognized"):
    builders.load('image_folder', data_dir=str(tmp_path / 'data'), manual_dir=str(root))
  loaded = builders.load('image_folder', data_dir=str(tmp_path / 'data'),
                         manual_dir=str(root), allow_empty_classes=True)
  assert loaded.class_names == ['no_tumor', 'tumor']
  assert loaded.build_report['empty_classes'] == ['no_tumor']
  assert '1 empty classes' in caplog.text


def _bohaju_copy(root: Path, rows: list[str]) -> Path:
  for number in range(1, 5):
    _noise_png(root / 'Brain Tumor' / f'Image{number}.png', number)
  (root / 'Brain Tumor.csv').write_text('Image,Class,Mean\n' + '\n'.join(rows) + '\n')
  return root


def test_a_conflicting_csv_label_leaves_the_image_out(tmp_path, caplog):
  manual = _bohaju_copy(tmp_path / 'manual', [
      'Image1,0,1.0', 'Image2,1,1.0', 'Image3,0,1.0', 'Image4,1,1.0',
      'Image3,1,1.0',   # the same image with the other class: which one is right?
      'Image4,1,1.0'])  # a repeated row that agrees: harmless
  loaded = builders.load('brain_tumor', data_dir=str(tmp_path / 'data'),
                         manual_dir=str(manual))
  meta = builders.read_metadata(loaded.sources['train'])
  labels = dict(zip(meta['filename'], meta['label']))
  assert labels == {'Brain Tumor/Image1.png': 0, 'Brain Tumor/Image2.png': 1,
                    'Brain Tumor/Image4.png': 1}
  report = loaded.build_report
  assert report['conflicting_csv_rows'] == ['Image3: class 0 (line 4) and class 1 (line 6)']
  assert report['skipped'] == [{
      'file': 'Brain Tumor/Image3.png', 'split': 'train',
      'reason': 'Brain Tumor.csv gives it class 0 (line 4) and class 1 (line 6): left out'}]
  assert 'Image3: class 0 (line 4) and class 1 (line 6)' in caplog.text
  with pytest.raises(builders.BuildError, match=r"Image3\.png.*class 0 \(line 4\) and "):
    builders.load('brain_tumor', data_dir=str(tmp_path / 'strict'),
                  manual_dir=str(manual), strict=True)


def test_degenerate_images_are_reported(tmp_path, caplog):
  root = tmp_path / 'folder'
  _noise_png(root / 'a' / 'ok.png', 0)
  (root / 'a' / 'dot.png').write_bytes(_png(np.full((1, 1), 200, np.uint8)))
  (root / 'b' / 'black.png').parent.mkdir(parents=True)
  (root / 'b' / 'black.png').write_bytes(_png(np.zeros((64, 64), np.uint8)))
  loaded = builders.load('image_folder', data_dir=str(tmp_path / 'data'),
                         manual_dir=str(root))
  assert len(loaded.sources['train']) == 3  # kept: flagged, not dropped
  report = loaded.build_report
  assert report['degenerate_images'] == [
      {'file': 'a/dot.png', 'reason': '1x1 pixels, smaller than 32 on a side',
       'split': 'train'},
      {'file': 'b/black.png', 'reason': 'constant image (every pixel is 0)',
       'split': 'train'}]
  assert '2 degenerate images (listed in build_report.json)' in caplog.text


def test_an_image_in_a_nested_folder_takes_its_class_folders_class(tmp_path, caplog):
  root = tmp_path / 'folder'
  _noise_png(root / 'no_tumor' / 'x.png', 0)
  _noise_png(root / 'tumor' / 'y.png', 1)
  _noise_png(root / 'tumor' / 'no_tumor' / 'z.png', 2)
  loaded = builders.load('image_folder', data_dir=str(tmp_path / 'data'),
                         manual_dir=str(root))
  meta = builders.read_metadata(loaded.sources['train'])
  names = loaded.class_names
  assert {f: names[l] for f, l in zip(meta['filename'], meta['label'])} == {
      'no_tumor/x.png': 'no_tumor', 'tumor/y.png': 'tumor', 'tumor/no_tumor/z.png': 'tumor'}
  assert loaded.build_report['nested_folders'] == {'tumor/no_tumor': 'tumor'}
  assert "named like another class take their class folder's class: " in caplog.text
