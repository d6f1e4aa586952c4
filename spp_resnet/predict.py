"""`python -m spp_resnet.predict`: predictions for unlabelled scans (see
spp_resnet/inference/predict.py)."""

from spp_resnet.inference.predict import Predictor, run

__all__ = ['Predictor', 'run']

if __name__ == '__main__':
  run()
