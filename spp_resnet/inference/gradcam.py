"""Grad-CAM (Selvaraju et al., 2017) on the backbone's last feature map, and overlays.

For class c with score y_c, the map is ReLU(sum_k alpha_k A_k), A = the last stage's
feature map [h, w, C] and alpha = the spatial mean of dy_c/dA. The gradient flows
through whatever head the run has: global average pooling, or the SPP head, whose max
pooling per bin routes it to each bin's maximum. The scores are the logits; a binary
model's single logit z scores the positive class and -z the negative one.

One jitted call computes the forward pass once and the maps of every class from it
(one vector-Jacobian product per class), so the CAMs come with the probabilities at
about the cost of a training step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import nnx
from PIL import Image

from spp_resnet.data import preprocess
from spp_resnet.training import parallel
from spp_resnet.training import train as train_lib


def class_scores(logits: jax.Array) -> jax.Array:
  """[B, K] scores whose gradients explain each class ([-z, z] for one logit z)."""
  return jnp.concatenate([-logits, logits], axis=-1) if logits.shape[-1] == 1 else logits


def gradcam_maps(model: nnx.Module, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Model input [B, H, W, 3] -> (probabilities [B, K], maps [B, K, h, w] in [0, 1]).

  Each map is divided by its maximum; a class with no positive evidence gets zeros.
  """
  features = model.backbone(x, train=False)

  def scores_and_logits(a):
    logits = model.head(a, train=False)
    return class_scores(logits), logits

  scores, pullback, logits = jax.vjp(scores_and_logits, features, has_aux=True)
  num_classes = scores.shape[-1]
  # One pullback per class: the gradient of every example's class-k score.
  one_hot = jnp.broadcast_to(jnp.eye(num_classes)[:, None, :], (num_classes, *scores.shape))
  grads = jax.vmap(lambda cotangent: pullback(cotangent)[0])(one_hot)  # [K, B, h, w, C]
  alphas = grads.astype(jnp.float32).mean(axis=(2, 3))  # [K, B, C]
  maps = nnx.relu(jnp.einsum('bhwc,kbc->bkhw', features.astype(jnp.float32), alphas))
  peak = maps.max(axis=(2, 3), keepdims=True)
  maps = maps / jnp.where(peak > 0, peak, 1.0)
  return train_lib.logits_to_probs(logits), maps


class GradCAM:
  """Grad-CAM of a restored run (`spp_resnet.training.restore.RestoredModel`); of an
  ensemble, the mean of its members' maps (each scaled to peak 1), scaled to peak 1.

    cam = GradCAM(restored)
    probs, maps = cam(images)   # uint8 [B, S, S, 1] -> [B, K], [B, K, h, w]

  One compile per batch size; the batch is split over the devices like `probs`.
  """

  def __init__(self, restored):
    self.restored = restored
    graphdef, normalization = restored.graphdef, restored.normalization

    def fn(weights, images):
      model = nnx.merge(graphdef, *weights.values())
      return gradcam_maps(model, preprocess.to_model_input(images, normalization))

    if restored.members > 1:  # an ensemble: the mean of its members' probs and maps
      member_fn = fn

      def fn(weights, images):
        probs, maps = jax.vmap(member_fn, in_axes=(0, None))(weights, images)
        maps = maps.mean(0)
        peak = maps.max(axis=(2, 3), keepdims=True)
        return probs.mean(0), maps / jnp.where(peak > 0, peak, 1.0)

    self._fn = jax.jit(fn, out_shardings=parallel.replicated(restored.mesh))

  def dispatch(self, images: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Starts the computation on a batch whose size divides over the devices."""
    batch = parallel.global_batch({'image': images}, self.restored.mesh)
    return self._fn(self.restored.weights, batch['image'])

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    pad = -len(images) % self.restored.mesh.size
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    probs, maps = jax.device_get(self.dispatch(padded))
    return probs[:len(images)], maps[:len(images)]


def upsample(heatmap: np.ndarray, size: int) -> np.ndarray:
  """[h, w] map -> [size, size] (bilinear, as the model input was resized)."""
  return np.asarray(Image.fromarray(np.asarray(heatmap, np.float32), mode='F').resize(
      (size, size), Image.Resampling.BILINEAR))


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
  """uint8 [S, S(, 1)] image and [h, w] map in [0, 1] -> uint8 RGB [S, S, 3] ('jet')."""
  gray = np.asarray(image, np.float32).reshape(image.shape[:2])[..., None] / 255.0
  heat = matplotlib.colormaps['jet'](np.clip(upsample(heatmap, gray.shape[0]), 0, 1))
  blended = (1.0 - alpha) * gray + alpha * heat[..., :3]
  return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def save_overlay(path: str, image: np.ndarray, heatmap: np.ndarray) -> None:
  Image.fromarray(overlay(image, heatmap)).save(path)
