"""Mixup (`config.loss.mixup_alpha`): images blended with their partner in the reversed
batch, and the loss a matching blend of the two labels' losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spp_resnet.training import train as train_lib
from tests import test_train


def test_each_image_is_blended_with_its_partner_and_their_labels_alike():
  images = jax.random.uniform(jax.random.key(0), (6, 5, 5, 3))
  labels = jnp.array([0, 1, 1, 0, 1, 1])
  mixed, targets = train_lib.mixup(images, labels, jax.random.key(1), 0.4)
  (first, lam), (partner, rest) = targets
  lam = np.asarray(lam)
  assert lam.shape == (6,) and ((lam >= 0) & (lam <= 1)).all()
  np.testing.assert_allclose(rest, 1 - lam, rtol=1e-6)
  x = np.asarray(images)
  expected = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[::-1]
  np.testing.assert_allclose(mixed, expected, rtol=1e-6, atol=1e-6)
  # Each image's second label is that of the image blended into it.
  np.testing.assert_array_equal(first, labels)
  np.testing.assert_array_equal(partner, np.asarray(labels)[::-1])


def test_small_alpha_keeps_most_images_close_to_one_of_the_two():
  # Beta(0.2, 0.2) is U-shaped: most weights near 0 or 1; Beta(1, 1) is uniform.
  ones, labels = jnp.ones((4000, 1, 1, 1)), jnp.zeros(4000, jnp.int32)
  small = np.asarray(train_lib.mixup(ones, labels, jax.random.key(2), 0.2)[1][0][1])
  uniform = np.asarray(train_lib.mixup(ones, labels, jax.random.key(2), 1.0)[1][0][1])
  near_edge = lambda lam: float(np.mean(np.minimum(lam, 1 - lam) < 0.1))
  assert near_edge(small) > 0.5
  assert near_edge(uniform) == pytest.approx(0.2, abs=0.03)
  assert float(np.mean(uniform)) == pytest.approx(0.5, abs=0.02)


def test_the_mixup_key_is_one_no_other_draw_uses():
  aug, dropout, mix = train_lib.step_keys(jnp.int32(0), jnp.int32(7))
  data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in (aug, dropout, mix)]
  # Nor may it be the parent of a split the others come from (jax.random.beta splits).
  data += [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in jax.random.split(mix)]
  assert len(set(data)) == len(data)
  # The augmentation and dropout keys are those of runs before mixup existed.
  before = jax.random.split(jax.random.fold_in(jax.random.key(0), 7))
  for new, old in zip((aug, dropout), before):
    np.testing.assert_array_equal(jax.random.key_data(new), jax.random.key_data(old))


def _log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def test_mixed_sigmoid_loss_is_cross_entropy_on_the_mixed_target():
  logits = np.array([[2.0], [-1.0], [0.3], [-3.0]], np.float32)
  labels = np.array([1, 0, 1, 1])
  lam = np.array([0.9, 0.2, 0.5, 1.0], np.float32)
  objective, per_example = train_lib.training_loss(
      jnp.asarray(logits), [(jnp.asarray(labels), lam), (jnp.asarray(labels[::-1]), 1 - lam)])
  target = lam * labels + (1 - lam) * labels[::-1]
  z = logits[:, 0]
  expected = -(target * _log_sigmoid(z) + (1 - target) * _log_sigmoid(-z))
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)
  np.testing.assert_allclose(objective, expected.mean(), rtol=1e-5)


def test_mixed_loss_with_label_smoothing_smooths_the_mixed_target():
  logits = np.array([[1.5], [-0.7], [0.1]], np.float32)
  labels = np.array([1, 0, 0])
  lam = np.array([0.6, 0.3, 0.9], np.float32)
  _, per_example = train_lib.training_loss(
      jnp.asarray(logits), [(jnp.asarray(labels), lam), (jnp.asarray(labels[::-1]), 1 - lam)],
      label_smoothing=0.1)
  target = (lam * labels + (1 - lam) * labels[::-1]) * 0.9 + 0.05
  z = logits[:, 0]
  expected = -(target * _log_sigmoid(z) + (1 - target) * _log_sigmoid(-z))
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)


def test_mixed_softmax_loss_is_cross_entropy_on_the_mixed_target():
  logits = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 2])
  lam = np.array([0.7, 0.1, 0.5, 0.0], np.float32)
  _, per_example = train_lib.training_loss(
      jnp.asarray(logits), [(jnp.asarray(labels), lam), (jnp.asarray(labels[::-1]), 1 - lam)])
  target = lam[:, None] * np.eye(3)[labels] + (1 - lam[:, None]) * np.eye(3)[labels[::-1]]
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(per_example, -(target * log_p).sum(-1), rtol=1e-5)


def test_class_weights_weight_each_label_by_its_share():
  logits = np.array([[1.0], [-0.5], [0.2], [2.0]], np.float32)
  labels = np.array([1, 1, 0, 1])
  weights = np.array([3.0, 0.6], np.float32)
  z = logits[:, 0]
  per_label = lambda y: -(y * _log_sigmoid(z) + (1 - y) * _log_sigmoid(-z))
  # Without mixup: the class-weighted mean.
  objective, _ = train_lib.training_loss(jnp.asarray(logits), [(jnp.asarray(labels), 1.0)],
                                         weights=jnp.asarray(weights))
  w = weights[labels]
  np.testing.assert_allclose(objective, (w * per_label(labels)).sum() / w.sum(), rtol=1e-5)
  # With mixup: each term weighted by share x class weight.
  lam = np.array([0.25, 0.5, 0.75, 1.0], np.float32)
  partner = labels[::-1]
  objective, _ = train_lib.training_loss(
      jnp.asarray(logits), [(jnp.asarray(labels), lam), (jnp.asarray(partner), 1 - lam)],
      weights=jnp.asarray(weights))
  wa, wb = lam * weights[labels], (1 - lam) * weights[partner]
  expected = ((wa * per_label(labels)).sum() + (wb * per_label(partner)).sum()) / (wa + wb).sum()
  np.testing.assert_allclose(objective, expected, rtol=1e-5)


@pytest.mark.slow
def test_mixup_on_four_devices_matches_one_device(tmp_path):
  # The partner of an image may sit on another device: the reversal crosses shards.
  mixup = ['--config.loss.mixup_alpha=0.4']
  params = {}
  for n in (1, 4):
    workdir = tmp_path / str(n)
    test_train.run_main(workdir, *test_train.FEW_STEPS, *mixup,
                        env={'XLA_FLAGS': f'--xla_force_host_platform_device_count={n}'})
    params[n] = test_train.flat(test_train.final_state(workdir)[1]['params'])
  unmixed = tmp_path / 'off'
  test_train.run_main(unmixed, *test_train.FEW_STEPS)
  off = test_train.flat(test_train.final_state(unmixed)[1]['params'])
  for key in params[1]:
    # Summation order differs across devices; a few of the smallest kernel entries
    # drift by up to ~2.5e-5 after 3 steps (test_train's 4-vs-1 test: atol 2e-5).
    np.testing.assert_allclose(params[1][key], params[4][key], rtol=2e-4, atol=5e-5,
                               err_msg=key)
  assert any(not np.allclose(params[1][k], off[k]) for k in off), 'mixup changed nothing'
