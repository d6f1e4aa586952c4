"""Self-supervised (BYOL) pretraining: the loss, the leakage filter, a run that learns and
resumes, and its backbone in a classifier."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import phantom
from configs import ssl as ssl_configs
from spp_resnet import models
from spp_resnet.config_validation import ConfigError
from spp_resnet.evaluation.writers import read_metrics
from spp_resnet.training import checkpoint as checkpoint_lib
from spp_resnet.training import parallel
from spp_resnet.training import ssl
from spp_resnet.training import train as train_lib
from spp_resnet.weights import ArchitectureMismatchError


def test_byol_loss_matches_numpy_and_stops_target_gradients():
  rng = np.random.default_rng(0)
  p, t = rng.normal(size=(2, 3, 5)).astype(np.float32)
  cos = np.sum(p * t, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1))
  np.testing.assert_allclose(ssl.byol_loss(p, t), 2 - 2 * cos, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ssl.byol_loss(p, 3 * p), 0, atol=1e-6)   # scale-free
  np.testing.assert_allclose(ssl.byol_loss(p, -p), 4, atol=1e-6)
  grad_t = jax.grad(lambda t: ssl.byol_loss(p, t).sum())(jnp.asarray(t))
  assert not np.any(np.asarray(grad_t))


def test_ema_decay_and_projection_spread():
  assert float(ssl.ema_decay(0.99, 0, 100)) == pytest.approx(0.99)
  assert float(ssl.ema_decay(0.99, 50, 100)) == pytest.approx(0.995)
  assert float(ssl.ema_decay(0.99, 100, 100)) == pytest.approx(1.0)
  z = np.random.default_rng(0).normal(size=(4096, 16)).astype(np.float32)
  assert float(ssl.projection_spread(z)) == pytest.approx(1.0, abs=0.05)
  assert float(ssl.projection_spread(np.ones((8, 16), np.float32))) == pytest.approx(0.0)


def test_candidates_grouped_with_heldout_images_are_dropped():
  candidates = {'sha256': np.array(['a', 'b', 'c', 'd']),
                # 'b' is 2 bits from the held-out 'f'; 'd' 2 bits from 'b' (a chain)
                'phash': np.array(['0000000000000000', 'ff0000000000000c', 'ffffffff00000000',
                                   'ff000000000000ff'])}
  heldout = {'sha256': np.array(['e', 'a']),  # 'a': the same pixels as candidate 0
             'phash': np.array(['ff00000000000000', '00000000ffffffff'])}
  dropped = ssl.grouped_with([candidates], [heldout], threshold=6)
  np.testing.assert_array_equal(dropped, [True, True, False, True])


def tiny_config(num_epochs: int):
  config = ssl_configs.from_downstream(phantom.get_config())
  config.data.dataset = 'phantom/easy=1,train=48,test=16'
  config.data.image_size = 32
  config.model.backbone = 'lenet'  # compiles in seconds; the loop is the same for ResNets
  config.model.head_hidden = (32,)
  config.batch_size = 16  # 3 steps an epoch
  config.num_epochs = num_epochs
  config.log_every_steps = 100
  config.checkpoint_every_steps = 6
  config.optimizer.warmup_epochs = 0.0
  config.ssl.hidden_dim = 32
  config.ssl.projection_dim = 16
  return config


@pytest.fixture(scope='module')
def ssl_run(tmp_path_factory):
  """A 2-epoch run, resumed in the same workdir for 4 epochs."""
  workdir = str(tmp_path_factory.mktemp('ssl'))
  first = ssl.pretrain(tiny_config(2), workdir)
  second = ssl.pretrain(tiny_config(4), workdir)
  return workdir, first, second


@pytest.mark.slow
def test_pretraining_learns_and_resumes_from_its_checkpoint(ssl_run):
  workdir, first, second = ssl_run
  assert first['step'] == 6 and second['step'] == 12
  rows = read_metrics(workdir)
  assert [r['epoch'] for r in rows] == [1, 2, 3, 4]  # each row once, across the resume
  losses = [r['ssl/loss'] for r in rows]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert rows[-1]['ssl/z_std'] > 0.1  # not collapsed
  with open(f'{workdir}/pool.json', encoding='utf-8') as f:
    pool = json.load(f)
  assert pool['num_images'] == 48  # the train split; the 16 test images are held out


@pytest.mark.slow
def test_ssl_backbone_in_a_classifier_gives_the_same_features(tmp_path):
  """A ResNet's params and BatchNorm statistics, from an SSL checkpoint into a Classifier."""
  config = tiny_config(1)
  config.model.backbone = 'resnet18'
  config.optimizer.name, config.optimizer.momentum = 'sgd', 0.0  # no optimizer state to save
  graphdef, _, shapes = ssl.create_state(config, ssl.create_optimizer(config.optimizer, 1, 1),
                                         parallel.create_mesh(), abstract=True)
  rng = np.random.default_rng(0)

  def fill(path, shape):  # random weights and running statistics (no init to compile)
    low, high = (0.5, 1.5) if "['var']" in jax.tree_util.keystr(path) else (-0.1, 0.1)
    return jax.device_put(rng.uniform(low, high, shape.shape).astype(shape.dtype),
                          shape.sharding)

  state = jax.tree_util.tree_map_with_path(fill, shapes)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  checkpointer.save(1, state)
  checkpointer.wait()
  checkpointer.close()
  train_lib.save_config(config, str(tmp_path))

  # Shapes only: loading sets every backbone variable (the head stays unset, unused here).
  classifier = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=2,
                                                          rngs=nnx.Rngs(params=7)))
  assert ssl.load_ssl_backbone(classifier, str(tmp_path), data_config=config.data) == 'none'
  online = nnx.merge(graphdef, state.params, state.batch_stats).encoder.backbone
  features = nnx.jit(lambda a, b, x: (a(x, train=False), b(x, train=False)))
  loaded, expected = features(classifier.backbone, online,
                              jax.random.uniform(jax.random.key(0), (2, 32, 32, 3)))
  assert np.all(np.isfinite(expected)) and np.std(expected) > 0
  np.testing.assert_array_equal(loaded, expected)


@pytest.mark.slow
def test_a_backbone_for_another_split_or_architecture_is_refused(ssl_run):
  workdir, *_ = ssl_run
  config = tiny_config(4)
  classifier = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=2,
                                                          rngs=nnx.Rngs(params=0)))
  other_split = tiny_config(4).data
  other_split.split.protocol = 'grouped'
  with pytest.raises(ConfigError, match='another split'):
    ssl.load_ssl_backbone(classifier, workdir, data_config=other_split)
  config.model.backbone = 'resnet18'
  resnet = nnx.eval_shape(lambda: models.create_model(config.model, num_classes=2,
                                                      rngs=nnx.Rngs(params=0)))
  with pytest.raises(ArchitectureMismatchError, match='LeNet-5'):
    ssl.load_ssl_backbone(resnet, workdir)


def test_a_config_without_test_held_out_is_refused():
  config = tiny_config(1)
  config.ssl.heldout_splits = ('val',)
  with pytest.raises(ConfigError, match='config.ssl.heldout_splits'):
    ssl.validate(config)
