"""spp_resnet: brain-tumor MRI classification with ResNet + spatial pyramid pooling.

The Python API of a trained run (imported on first use, so that `import spp_resnet` and
the command-line tools' --help stay fast):

  from spp_resnet import Predictor, restore_for_inference
  restored = restore_for_inference('runs/scratch')   # model, preprocessing, threshold
  report = Predictor.from_workdir('runs/scratch').predict('scans/')  # files, folders
"""

import importlib

_API = {
    'restore_for_inference': 'spp_resnet.training.restore',
    'evaluate_checkpoint': 'spp_resnet.training.restore',
    'RestoredModel': 'spp_resnet.training.restore',
    'create_model': 'spp_resnet.models',
    'Predictor': 'spp_resnet.inference.predict',
    'GradCAM': 'spp_resnet.inference.gradcam',
}

__all__ = sorted(_API)


def __getattr__(name):
  if name in _API:
    return getattr(importlib.import_module(_API[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
