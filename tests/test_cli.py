"""Bad configs and overrides stop with one line that names the field, before any work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import default, phantom, scratch
from spp_resnet.config_validation import ConfigError, validate

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_valid():
  validate(default.get_config())
  validate(phantom.get_config())
  validate(scratch.get_config())
  for lever in scratch.LEVERS:
    validate(scratch.get_config(lever))


def test_the_last_override_of_a_field_wins():
  from spp_resnet.cli import last_overrides_win
  argv = ['main.py', '--config=c.py', "--config.model.head_hidden=(16,16)", '--workdir=w',
          '--config.model.head_hidden=16', '--config.seed=1']
  assert last_overrides_win(argv) == ['main.py', '--config=c.py', '--workdir=w',
                                      '--config.model.head_hidden=16', '--config.seed=1']


@pytest.mark.parametrize('field, value, message', [
    ('batch_size', 0, 'must be a positive integer'),
    ('num_epochs', 0, 'must be >= 1'),
    ('data.image_size', 16, 'must be >= 32'),
    ('data.contrast_percentiles', (99.0, 1.0), 'low < high'),
    ('data.split.protocol', 'random', "must be one of 'paper'"),
    ('data.split.num_folds', 1, 'must be 0 (holdout) or >= 2'),
    ('data.split.fold', 3, 'must be in [0, num_folds=3)'),
    ('data.split.test_fraction', 1.0, 'must be in (0, 1)'),
    ('model.backbone', 'resnet51', "must be one of 'resnet101'"),
    ('model.pooling', 'mean', "must be one of 'spp', 'gap'"),
    ('model.spp_levels', (1, 0, 8), 'must be positive integers'),
    ('model.dropout', 1.0, 'must be in [0, 1)'),
    ('optimizer.learning_rate', -1e-4, 'must be > 0'),
    ('optimizer.name', 'lamb', "must be one of 'sgd', 'adam'"),
    ('pretrained.source', 'imagenet', "must be one of ''"),
    ('data.split.val_fraction', 1.0, 'must be in [0, 1)'),
    ('data.split.val_dataset', 'brain_tumor', "needs data.dataset='mix'"),
    ('selection.threshold', 'youden', 'needs a validation split'),
    ('selection.metric', 'auc', "must be one of 'roc_auc'"),
    ('loss.class_weights', 'inverse', "must be one of 'none', 'balanced'"),
    ('data.augment.crop_scale', (0.5, 1.5), 'must satisfy 0 < low <= high <= 1'),
])
def test_impossible_values_name_the_field(field, value, message):
  config = default.get_config()
  if field == 'data.split.fold':
    config.data.split.num_folds = 3
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError) as info:
    validate(config)
  assert str(info.value).startswith(f'config.{field}=')
  assert message in str(info.value)


def _main(*overrides, devices=1):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/phantom.py',
                         '--workdir=/nonexistent/never_written', *overrides],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


def test_unknown_field_is_one_line_with_a_suggestion():
  line = _main('--config.optimizer.learning_rat=1e-3')
  assert line == ("error: --config.optimizer.learning_rat=1e-3: the config has no field "
                  "'learning_rat' (did you mean 'learning_rate'?)")


def test_wrong_type_is_one_line():
  line = _main('--config.batch_size=thirty-two')
  assert line.startswith('error: flag --config.batch_size=thirty-two: ')


def test_batch_not_divisible_by_the_device_count():
  line = _main('--config.batch_size=30', '--config.eval_batch_size=64', devices=4)
  assert line == 'error: config.batch_size=30: must be divisible by the number of devices (4)'
  assert not Path('/nonexistent/never_written').exists()
