"""A moving average of the weights (`config.optimizer.ema_decay`): the average kept in
the optimizer state, and it (not the raw weights) evaluated, selected and restored."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from spp_resnet.training import restore
from spp_resnet.training import train as train_lib
from spp_resnet.training.optimizer import create_optimizer, weight_ema, with_weight_ema
from tests.test_train import run_main


def test_average_follows_the_updated_parameters():
  decay = 0.5
  tx = with_weight_ema(optax.sgd(1.0), decay)
  params = {'w': jnp.array([1.0, -2.0])}
  state = tx.init(params)
  expected = np.array([1.0, -2.0])
  for t in range(4):
    grads = {'w': jnp.array([0.1, 0.2]) * (t + 1)}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    d = min(decay, (1 + t) / (10 + t))  # ramped up: 0.1, 0.18..., then 0.5
    expected = d * expected + (1 - d) * np.asarray(params['w'])
    np.testing.assert_allclose(weight_ema(state)['w'], expected, rtol=1e-6)
  # The inner optimizer is unchanged by the wrapper.
  plain = optax.sgd(1.0)
  np.testing.assert_allclose(plain.update(grads, plain.init(params), params)[0]['w'],
                             updates['w'])


def test_off_by_default_and_the_state_unchanged():
  opt = ml_collections.ConfigDict({
      'name': 'adam', 'learning_rate': 1e-3, 'momentum': 0.9, 'nesterov': False,
      'weight_decay': 0.0, 'weight_decay_type': 'coupled', 'schedule': 'constant',
      'lr_decay': 0.0, 'warmup_epochs': 0.0, 'step_boundaries_epochs': (),
      'step_factor': 0.1, 'grad_clip_norm': 0.0, 'ema_decay': 0.0})
  params = {'w': jnp.ones(3)}
  off = create_optimizer(opt, 10, 2).init(params)
  assert weight_ema(off) is None
  opt.ema_decay = 0.99
  on = create_optimizer(opt, 10, 2).init(params)
  # The same inner state as without it: runs without an average keep their checkpoints.
  assert jax.tree.structure(on.inner) == jax.tree.structure(off)


EMA = ['--config.data.dataset=phantom/easy=1,train=96,test=32', '--config.num_epochs=2',
       '--config.data.split.val_fraction=0.25', '--config.selection.threshold=youden',
       '--config.model.backbone=lenet', '--config.optimizer.name=adam',
       '--config.optimizer.learning_rate=1e-3', '--config.optimizer.ema_decay=0.8']


@pytest.mark.slow
def test_the_average_is_what_is_evaluated_kept_and_restored(tmp_path):
  from tests.test_train import final_state  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'ema'
  trained = run_main(workdir, *EMA).stdout
  step, saved = final_state(workdir)
  average, raw = saved['opt_state']['ema'], saved['params']
  assert not np.allclose(jax.tree.leaves(average)[0], jax.tree.leaves(raw)[0])
  # The latest checkpoint restores to the average, not to the raw weights.
  latest = restore.restore_for_inference(str(workdir), step=step)
  restored, expected = jax.tree.leaves(latest.weights['params']), jax.tree.leaves(average)
  assert len(restored) == len(expected)
  for value, want in zip(restored, expected):
    np.testing.assert_array_equal(value, want)
  # The kept checkpoint (the average at the best validation epoch) reproduces the test
  # metrics the run printed.
  evaluated = run_main(workdir, mode='eval', config=None).stdout
  assert trained.split('Final evaluation (test)')[1].split('Decision')[0].strip() in evaluated
  kept = restore.restore_for_inference(str(workdir))
  state = train_lib.with_inference_weights(saved_state_like(kept), kept.weights)
  assert train_lib.inference_weights(state)['params'] is kept.weights['params']


def saved_state_like(restored):
  """An abstract train state of `restored`'s config (with the average in its state)."""
  tx = create_optimizer(restored.config.optimizer, 1, restored.config.num_epochs)
  _, state = train_lib.create_train_state(restored.config, len(restored.class_names), tx,
                                          restored.mesh, abstract=True)
  return state
