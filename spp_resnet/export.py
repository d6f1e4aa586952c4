"""`python -m spp_resnet.export`: a trained run as a StableHLO or ONNX file (see
spp_resnet/inference/export.py)."""

from spp_resnet.inference.export import export, run

__all__ = ['export', 'run']

if __name__ == '__main__':
  run()
