"""Export: StableHLO (jax.export) and ONNX files with the preprocessing inside and a
symbolic batch size, numerically the JAX model on real MRI slices."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import phantom as phantom_config
from spp_resnet.data import image_io
from spp_resnet.inference import export as export_lib
from spp_resnet.training import parallel, restore
from spp_resnet.training import train as train_lib
from spp_resnet.training.optimizer import create_optimizer

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
BHUVAJI = SHARED / 'brain_tumor_classification_mri' / 'Testing'
FIGSHARE = SHARED / 'figshare_brain_tumor_subset'
CLASSES = ['glioma_tumor', 'meningioma_tumor', 'no_tumor', 'pituitary_tumor']


@pytest.fixture(scope='module')
def resnet():
  """The paper's architecture (ResNet-18 v1 + SPP), randomly initialized, as a restored
  run: 64 px, so the last stage's 2 x 2 map takes the small-map convolution (pads),
  Caffe input normalization, four classes. With the default head initialization its
  probabilities vary from image to image, neither uniform nor saturated."""
  config = phantom_config.get_config()
  config.model.variant = 'v1'
  config.data.normalization = 'caffe'
  mesh = parallel.create_mesh()
  graphdef, state = train_lib.create_train_state(
      config, len(CLASSES), create_optimizer(config.optimizer, 1, 1), mesh)
  return restore.RestoredModel(
      workdir='resnet', config=config, class_names=CLASSES, graphdef=graphdef,
      weights=train_lib.inference_weights(state), mesh=mesh, normalization='caffe', step=0,
      threshold=None, selection=None,
      _probs=train_lib.make_predict_fn(graphdef, 'caffe', mesh))


@pytest.fixture(scope='module')
def mri_slices(resnet):
  """Eight real MRI slices (JPEG and figshare .mat), prepared as the model's input."""
  if not BHUVAJI.is_dir():
    pytest.skip('no shared MRI data')
  jpegs = [BHUVAJI / c / f'image({i}).jpg' for c in CLASSES for i in (1, 2)][:6]
  raw = [image_io.decode_image(p.read_bytes()) for p in jpegs]
  raw += [image_io.read_figshare_mat((FIGSHARE / f'{i}.mat').read_bytes())['image']
          for i in (1, 2)]
  return np.stack([resnet.prepare(image) for image in raw])


@pytest.mark.slow
def test_onnx_matches_jax_on_real_mri(resnet, mri_slices, tmp_path):
  onnx = pytest.importorskip('onnx')
  pytest.importorskip('onnxruntime')
  pytest.importorskip('jax2onnx')
  model = export_lib.to_onnx(resnet)
  path = str(tmp_path / 'model.onnx')
  onnx.save(model, path)
  [images] = model.graph.input
  dims = images.type.tensor_type.shape.dim
  assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 1]
  assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
  assert metadata['class_names'] == CLASSES and metadata['normalization_inside'] == 'caffe'
  # Any batch size; the probabilities vary over the images, so the match means something.
  for batch in (mri_slices[:1], mri_slices):
    assert export_lib.onnx_max_abs_diff(path, resnet, batch) <= 1e-4
  assert resnet.probs(mri_slices).std(axis=0).max() > 0.03


@pytest.mark.slow
def test_stablehlo_round_trip_any_batch_size(resnet, mri_slices, tmp_path):
  path = str(tmp_path / 'model.jax_export')
  export_lib.export_stablehlo(resnet, path, platforms=('cpu', 'cuda'))
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  assert exported.platforms == ('cpu', 'cuda')
  [spec] = exported.in_avals
  assert spec.dtype == np.uint8 and not isinstance(spec.shape[0], int)
  for batch in (mri_slices[:3], mri_slices):
    np.testing.assert_allclose(exported.call(batch), resnet.probs(batch), atol=1e-5)


@pytest.mark.slow
def test_export_a_run_writes_the_model_and_its_description(phantom_run, tmp_path):
  pytest.importorskip('onnxruntime')
  pytest.importorskip('jax2onnx')
  out = export_lib.export(phantom_run, 'onnx', str(tmp_path / 'm.onnx'))
  described = json.loads(Path(out + '.json').read_text())
  assert described['class_names'] == ['no_tumor', 'tumor']
  assert described['input']['shape'] == ['batch', 64, 64, 1]
  assert described['threshold'] == pytest.approx(0.5) and described['step'] > 0
  default = export_lib.export(phantom_run)
  assert default == str(Path(phantom_run) / 'export' / 'model.jax_export')
  assert Path(default).stat().st_size > 1e6
  # A site's own threshold (inference/site_threshold.py) goes into the description.
  at_site = export_lib.export(phantom_run, out=str(tmp_path / 'site.jax_export'),
                              threshold='0.25', platforms=('cpu',))
  described = json.loads(Path(at_site + '.json').read_text())
  assert described['threshold'] == 0.25
  assert described['threshold_source'] == 'given on the command line'
  with pytest.raises(ValueError, match='--format'):
    export_lib.export(phantom_run, 'tflite')
