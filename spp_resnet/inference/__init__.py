"""Applying a trained run: predictions for unlabelled scans, Grad-CAM, export."""

from spp_resnet.inference.gradcam import GradCAM
from spp_resnet.inference.predict import Predictor, Report

__all__ = ['GradCAM', 'Predictor', 'Report']
