"""Grad-CAM: exact on a head where it must equal CAM, the same logits as the model through
the SPP head, and on the SYNTHETIC phantom it points at the lesions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import phantom as phantom_config
from spp_resnet.data import phantom
from spp_resnet.inference import gradcam
from spp_resnet.models import create_model
from spp_resnet.training import restore


def _model(num_classes=3, **overrides):
  config = phantom_config.get_config().model
  config.backbone = 'lenet'
  config.update(overrides)
  model = create_model(config, num_classes=num_classes, rngs=nnx.Rngs(0))
  model.eval()
  return model


@pytest.mark.slow
def test_equals_cam_for_global_average_pooling_and_a_linear_head():
  # Grad-CAM's weights are then the class's weights / (h w): the maps are CAM's
  # (Zhou et al., 2016), ReLU(sum_c w_kc A_c), up to the normalization to [0, 1].
  model = _model(pooling='gap', head_hidden=())
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  probs, maps = nnx.jit(gradcam.gradcam_maps)(model, x)
  features = model.backbone(x, train=False)
  cam = nnx.relu(jnp.einsum('bhwc,ck->bkhw', features, model.dense[0].kernel[...]))
  peak = cam.max(axis=(2, 3), keepdims=True)
  np.testing.assert_allclose(maps, cam / jnp.where(peak > 0, peak, 1.0), atol=1e-5)
  np.testing.assert_allclose(probs, jax.nn.softmax(model(x, train=False)), atol=1e-6)
  assert maps.shape == (2, 3, 9, 9)


@pytest.mark.slow
def test_spp_head_logits_and_binary_maps():
  model = _model(num_classes=2, head_hidden=(16,), dropout=0.5)
  x = jax.random.normal(jax.random.key(2), (3, 64, 64, 3))
  features = model.backbone(x, train=False)
  np.testing.assert_allclose(model.head(features, train=False), model(x, train=False),
                             atol=1e-6)
  # One logit z: class 1 is explained by z, class 0 by -z, so where one map is positive
  # the other is zero.
  _, maps = nnx.jit(gradcam.gradcam_maps)(model, x)
  assert maps.shape == (3, 2, 9, 9)
  assert float((maps[:, 0] * maps[:, 1]).max()) == 0.0
  assert 0.0 <= float(maps.min()) and float(maps.max()) <= 1.0


def test_overlay_is_rgb_at_the_image_size():
  heat = np.zeros((9, 9), np.float32)
  heat[2, 2] = 1.0  # centred on pixel (2 + 0.5) * 64 / 9 = 17.8
  rgb = gradcam.overlay(np.zeros((64, 64, 1), np.uint8), heat)
  assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
  # 'jet': hot is red, cold blue.
  assert rgb[18, 18, 0] > rgb[18, 18, 2] and rgb[60, 60, 2] > rgb[60, 60, 0]


@pytest.mark.slow
def test_maps_point_at_the_phantom_lesions(phantom_run):
  restored = restore.restore_for_inference(phantom_run)
  size = restored.image_size
  # Test-split slices of the run's phantom ('train=400'): never trained on.
  slices = [phantom.generate_with_mask(0, 400 + i, size, easy=1) for i in range(100)]
  images = np.stack([restored.prepare(image) for image, _, _ in slices])
  labels = np.array([label for _, label, _ in slices])
  probs, maps = gradcam.GradCAM(restored)(images)
  predicted = restored.decide(probs)
  assert (predicted == labels).mean() > 0.75
  inside, elsewhere = [], []
  for i in np.flatnonzero((labels == 1) & (predicted == 1)):
    heat = gradcam.upsample(maps[i, 1], size)
    lesion = slices[i][2].astype(np.float32)
    inside.append((heat * lesion).sum() / heat.sum())
    # The same area elsewhere in the head: the lesion mask turned by 180 degrees.
    elsewhere.append((heat * np.rot90(lesion, 2)).sum() / heat.sum())
  inside, elsewhere = np.array(inside), np.array(elsewhere)
  assert len(inside) >= 25
  # The heatmap prefers the lesion to an equal area elsewhere in the head on most slices
  # (measured: 84% of them, median factor 3.2). Most of its mass is not inside the
  # lesion (measured: a median 11%, on lesions of 10% of the image): this 9 x 9 map of
  # 32-pixel receptive fields blurs it over the surroundings, and on bright lesions
  # this small model also looks at the background, whose min-max-normalized intensity
  # drops when a bright lesion sets the maximum (a shortcut the phantom allows).
  assert (inside > elsewhere).mean() > 0.7
  assert np.median(inside / np.maximum(elsewhere, 1e-6)) > 2.0
