"""Predictions for unlabelled scans: the readers (DICOM, NIfTI), the Python API and the
command line on a folder of real MRI slices, a DICOM, a NIfTI volume and a bad file."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spp_resnet.data import preprocess
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.inference import predict as predict_lib
from spp_resnet.inference import readers
from spp_resnet.inference import site_threshold

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
BHUVAJI = SHARED / 'brain_tumor_classification_mri' / 'Testing'
FIGSHARE = SHARED / 'figshare_brain_tumor_subset'
needs_shared = pytest.mark.skipif(not BHUVAJI.is_dir(), reason='no shared MRI data')


def write_dicom(path, stored, *, slope=2.0, intercept=-100.0, window=None,
                photometric='MONOCHROME2'):
  """A 12-bit MR DICOM file; `stored` [H, W] or [frames, H, W] uint16."""
  pydicom = pytest.importorskip('pydicom')
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = MRImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
  ds.Modality = 'MR'
  ds.Rows, ds.Columns = stored.shape[-2:]
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  if window:
    ds.WindowCenter, ds.WindowWidth = window
  if stored.ndim == 3:
    ds.NumberOfFrames = stored.shape[0]
  ds.PixelData = stored.astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def write_nifti(path, volume, affine, slope=1.0, inter=0.0):
  nibabel = pytest.importorskip('nibabel')
  image = nibabel.Nifti1Image(volume, affine)
  image.header.set_slope_inter(slope, inter)
  nibabel.save(image, path)


def _mri_slice(size=96):
  """A real MRI slice's intensities (figshare, 512 px int16), downsampled."""
  from spp_resnet.data import image_io
  pixels = image_io.read_figshare_mat((FIGSHARE / '1.mat').read_bytes())['image'][..., 0]
  step = pixels.shape[0] // size
  return pixels[::step, ::step][:size, :size].astype(np.uint16)


# ---- Readers ---------------------------------------------------------------------------

@needs_shared
def test_dicom_rescale_window_frames_and_monochrome1(tmp_path):
  stored = np.clip(_mri_slice(), 0, 4095)
  physical = stored * 2.0 - 100.0
  window_lo, window_hi = np.percentile(physical, [10, 90])
  write_dicom(tmp_path / 'a.dcm', stored,
              window=((window_lo + window_hi) / 2, window_hi - window_lo))

  def prepared(image):
    return preprocess.preprocess_image(image, 64, (0.0, 100.0))[..., 0].astype(int)

  # The file's own window: slope/intercept first, then the window (pydicom's LINEAR
  # window differs from a plain clip by half a unit at the ends).
  [frame] = readers.read_dicom(str(tmp_path / 'a.dcm'), 'file')
  expected = prepared(np.clip(physical, window_lo, window_hi))
  assert np.abs(prepared(frame) - expected).max() <= 1
  [frame] = readers.read_dicom(str(tmp_path / 'a.dcm'), 'none')
  np.testing.assert_allclose(frame, physical)
  lo, hi = np.percentile(physical, [40, 60])  # an explicit window overrides the file's
  [frame] = readers.read_dicom(str(tmp_path / 'a.dcm'), ((lo + hi) / 2, hi - lo))
  np.testing.assert_allclose([frame.min(), frame.max()], [lo, hi], rtol=1e-6)
  # Several frames are several slices; MONOCHROME1 (0 = white) is inverted.
  write_dicom(tmp_path / 'frames', np.stack([stored, stored[::-1]]),
              photometric='MONOCHROME1')
  slices = readers.read_slices(str(tmp_path / 'frames'))  # found by content: no suffix
  assert [s.index for s in slices] == [0, 1]
  np.testing.assert_allclose(slices[1].image, physical.max() + physical.min() - physical[::-1])
  assert readers.parse_window('40,80') == (40.0, 80.0)
  with pytest.raises(ValueError, match='CENTER,WIDTH'):
    readers.parse_window('wide')


def test_nifti_slices_are_canonical_radiological_and_scaled(tmp_path):
  volume = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)  # voxel -> its index
  # x stored right-to-left (an LAS volume): the reader flips it back to RAS.
  write_nifti(tmp_path / 'v.nii.gz', volume, np.diag([-1.0, 1.0, 1.0, 1.0]), 2.0, 10.0)
  axial = readers.read_nifti(str(tmp_path / 'v.nii.gz'), 'axial')
  assert len(axial) == 3 and axial[0].shape == (4, 5)
  ras = volume[::-1] * 2.0 + 10.0
  # Anterior (last y) at the top, the patient's right (last x in RAS) on the left.
  assert axial[2][0, 0] == ras[-1, -1, 2] and axial[2][-1, -1] == ras[0, 0, 2]
  assert [s.shape for s in readers.read_nifti(str(tmp_path / 'v.nii.gz'), 0)] == [(3, 4)] * 5
  with pytest.raises(ValueError, match='axis'):
    readers.read_nifti(str(tmp_path / 'v.nii.gz'), 'oblique')


def test_missing_optional_package_is_one_line(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'pydicom', None)  # import pydicom -> ImportError
  (tmp_path / 'x.dcm').write_bytes(b'\0' * 200)
  with pytest.raises(ImportError, match=r"pip install 'spp_resnet\[dicom\]'"):
    readers.read_slices(str(tmp_path / 'x.dcm'))


def test_find_scans_walks_folders_and_ignores_other_files(tmp_path):
  (tmp_path / 'sub').mkdir()
  for name in ('b.PNG', 'sub/a.nii.gz', 'sub/notes.txt', '.hidden.png', 'c.mat'):
    (tmp_path / name).write_bytes(b'x')
  (tmp_path / 'sub' / 'IM0001').write_bytes(b'\0' * 128 + b'DICM' + b'\0' * 8)
  found = [os.path.relpath(p, tmp_path) for p in readers.find_scans([str(tmp_path)])]
  assert found == ['b.PNG', 'c.mat', 'sub/IM0001', 'sub/a.nii.gz']
  assert list(readers.find_scans(['missing.png'])) == ['missing.png']
  with pytest.raises(readers.ReadError, match='no such file'):
    readers.read_slices('missing.png')


# ---- Predictions -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def scans(tmp_path_factory):
  """Real MRI slices (JPEG, figshare .mat), a DICOM, a NIfTI volume and bad files."""
  if not BHUVAJI.is_dir():
    pytest.skip('no shared MRI data')
  folder = tmp_path_factory.mktemp('scans')
  for name in ('glioma_tumor/image(1).jpg', 'no_tumor/image(1).jpg',
               'pituitary_tumor/image(1).jpg'):
    shutil.copy(BHUVAJI / name, folder / name.replace('/', '_'))
  (folder / 'deep' / 'er').mkdir(parents=True)
  shutil.copy(FIGSHARE / '1.mat', folder / 'deep' / '1.mat')
  stored = np.clip(_mri_slice(), 0, 4095)
  write_dicom(folder / 'deep' / 'er' / 'slice.dcm', stored, window=(1000.0, 1500.0))
  write_nifti(folder / 'volume.nii', np.stack([stored.astype(np.float32)] * 3, axis=-1),
              np.eye(4))
  (folder / 'broken.png').write_bytes(b'not a png')
  (folder / 'README.txt').write_text('not a scan')
  return folder


@pytest.fixture(scope='module')
def predictor(phantom_run):
  return predict_lib.Predictor.from_workdir(phantom_run, batch_size=3)


@pytest.mark.slow
def test_python_api_predicts_files_folders_and_arrays(predictor, scans, monkeypatch):
  restored = predictor.restored
  batch_shapes = set()

  def batch_probs(batch, original=restored.batch_probs):
    batch_shapes.add(batch['image'].shape)
    return original(batch)

  monkeypatch.setattr(restored, 'batch_probs', batch_probs)
  report = predictor.predict(scans)
  # 8 slices in batches of 3, the last one padded: one shape, one compile.
  assert batch_shapes == {(3, 64, 64, 1)}
  rows = {(os.path.relpath(p.path, scans), p.slice): p for p in report.predictions}
  assert sorted(rows) == [
      ('deep/1.mat', None), ('deep/er/slice.dcm', None),
      ('glioma_tumor_image(1).jpg', None), ('no_tumor_image(1).jpg', None),
      ('pituitary_tumor_image(1).jpg', None),
      ('volume.nii', 0), ('volume.nii', 1), ('volume.nii', 2)]
  assert [(os.path.basename(p), why) for p, why in report.skipped] == [
      ('broken.png', 'not a recognized image format')]
  np.testing.assert_allclose(report.probs.sum(axis=1), 1.0, atol=1e-6)
  threshold = predictor.restored.threshold
  np.testing.assert_array_equal(report.classes, report.probs[:, 1] >= threshold)
  # The same numbers as the restored model on the same preprocessed images.
  jpeg = scans / 'no_tumor_image(1).jpg'
  from spp_resnet.data import image_io
  image = restored.prepare(image_io.decode_image(jpeg.read_bytes()))
  np.testing.assert_allclose(rows[('no_tumor_image(1).jpg', None)].probs,
                             restored.probs(image[None])[0], atol=1e-6)
  # The NIfTI volume: three identical slices, one summary.
  [volume] = report.volumes
  assert (volume.num_slices, volume.counts.sum()) == (3, 3)
  np.testing.assert_allclose(volume.max_probs, rows[('volume.nii', 0)].probs, atol=1e-6)
  # Arrays: any dtype and size, preprocessed as in training.
  raw = _mri_slice().astype(np.float32)
  from_array = predictor.predict([raw, raw[::2, ::2]])
  assert [p.path for p in from_array.predictions] == ['array[0]', 'array[1]']
  np.testing.assert_allclose(from_array.probs[0], restored.probs(restored.prepare(raw)[None])[0],
                             atol=1e-6)


@pytest.mark.slow
def test_command_line_writes_csv_json_and_cams(phantom_run, scans, predictor, tmp_path):
  out = tmp_path / 'out' / 'predictions.csv'
  proc = subprocess.run(
      [sys.executable, '-m', 'spp_resnet.predict', f'--workdir={phantom_run}', str(scans),
       f'--out={out}', '--cam', '--batch_size=3'],
      cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '8 slices predicted, 1 files skipped' in proc.stdout
  assert 'broken.png: not a recognized image format' in proc.stderr
  with open(out, newline='') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['path', 'slice', 'p_no_tumor', 'p_tumor', 'predicted', 'cam',
                           'error']
  errors = {os.path.basename(r['path']): r['error'] for r in rows if r['error']}
  assert errors == {'broken.png': 'not a recognized image format'}
  predicted = [r for r in rows if not r['error']]
  report = predictor.predict(scans)
  api = {(p.path, '' if p.slice is None else str(p.slice)): p for p in report.predictions}
  for row in predicted:
    expected = api[(row['path'], row['slice'])]
    np.testing.assert_allclose([float(row['p_no_tumor']), float(row['p_tumor'])],
                               expected.probs, atol=1e-5)
    assert row['predicted'] == predictor.class_names[expected.predicted]
    assert Path(row['cam']).is_file() and row['cam'].endswith('.png')
  assert (out.parent / 'gradcam' / 'volume.nii_slice002.png').is_file()
  assert (out.parent / 'gradcam' / 'deep' / 'er' / 'slice.dcm.png').is_file()
  with open(out.parent / 'predictions_volumes.csv', newline='') as f:
    [volume] = list(csv.DictReader(f))
  assert volume['slices'] == '3' and volume['path'].endswith('volume.nii')
  # JSON, by the suffix.
  report.write(str(tmp_path / 'p.json'))
  data = json.loads((tmp_path / 'p.json').read_text())
  assert data['class_names'] == ['no_tumor', 'tumor'] and data['step'] > 0
  assert len(data['predictions']) == 8 and len(data['volumes']) == 1
  assert data['skipped'][0]['error'] == 'not a recognized image format'


@pytest.mark.slow
def test_command_line_errors_are_one_line(phantom_run, tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'spp_resnet.predict', f'--workdir={phantom_run}', str(tmp_path),
       '--dicom_window=wide'],
      cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: --dicom_window must be')


@pytest.mark.slow
def test_site_threshold_fitted_on_unlabelled_scans(predictor, tmp_path):
  """`--fit_threshold`: a threshold from the scans alone (two Gaussians on the logits),
  written for these weights, and the scans decided at it; too few scans: a clear error."""
  rng = np.random.default_rng(0)
  raw = _mri_slice().astype(np.float32)
  arrays = [raw * rng.uniform(0.2, 1.0) + rng.normal(0, s, raw.shape).astype(np.float32)
            for s in np.linspace(0, 400, 14)]
  report = predictor.predict(arrays)
  path = tmp_path / 'site.json'
  decided = predict_lib.fit_site_threshold(predictor, report, str(path), command='test')
  record = json.loads(path.read_text())
  want = metrics_lib.mixture_threshold(report.probs[:, 1])
  assert record['rule'] == 'mixture' and record['num_images'] == 14
  assert record['threshold'] == pytest.approx(want['threshold'])
  assert record['positive_share'] == pytest.approx(want['positive_share'])
  assert record['separation'] == pytest.approx(want['separation'])
  assert ('warning' in record) == (want['separation'] < site_threshold.MIN_SEPARATION)
  assert 'in_sample' not in record  # no labels, nothing to score
  assert decided.threshold == record['threshold']
  np.testing.assert_array_equal(decided.classes, decided.probs[:, 1] >= record['threshold'])
  assert 'fitted on these scans' in decided.run['threshold_source']
  # The file is a site threshold of these weights: --threshold=FILE takes it.
  again = predict_lib.Predictor.from_workdir(predictor.restored.workdir, threshold=str(path),
                                             batch_size=3)
  assert again.restored.threshold == record['threshold']
  with pytest.raises(site_threshold.SiteThresholdError, match='at least 10'):
    predict_lib.fit_site_threshold(predictor, predictor.predict(arrays[:4]),
                                   str(tmp_path / 'few.json'))


def test_site_threshold_from_overlapping_clusters_carries_a_warning(predictor, tmp_path,
                                                                    monkeypatch):
  """Two clusters that overlap (Ashman's D below 2): the file and the log say that the
  threshold may not separate the classes; the threshold is still written and used."""
  report = predictor.predict([_mri_slice().astype(np.float32) * k
                              for k in np.linspace(0.2, 1.0, 12)])
  fitted = {'threshold': 0.4, 'positive_share': 0.5, 'means': [-1.0, 1.0],
            'stds': [1.0, 1.0], 'separation': 1.41}
  monkeypatch.setattr(metrics_lib, 'mixture_threshold', lambda scores: fitted)
  path = tmp_path / 'site.json'
  decided = predict_lib.fit_site_threshold(predictor, report, str(path))
  record = json.loads(path.read_text())
  assert "Ashman's D 1.41 < 2" in record['warning']
  assert record['threshold'] == decided.threshold == 0.4
