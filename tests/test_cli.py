"""Bad configs and overrides stop with one line that names the field, before any work."""

import os
import re
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
  for lever in (*scratch.LEVERS, 'plain', 'ema', 'ensemble', 'mixup', 'strip'):  # 'ssl' needs an SSL run
    validate(scratch.get_config(lever))
  recommended = scratch.get_config('plain,ema,ensemble,mixup')
  assert (recommended.ensemble_size, recommended.optimizer.ema_decay,
          recommended.loss.mixup_alpha, recommended.selection.min_epoch_fraction) == (
              3, 0.98, 0.2, 0.25)


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
    ('data.split.protocol', 'random', "must be one of 'original', 'paper'"),
    ('data.split.num_folds', 1, 'must be 0 (holdout) or >= 2'),
    ('data.split.fold', 3, 'must be in [0, num_folds=3)'),
    ('data.split.test_fraction', 1.0, 'must be in (0, 1)'),
    ('model.backbone', 'resnet51', "must be one of 'alexnet'"),
    ('model.pooling', 'mean', "must be one of 'spp', 'gap'"),
    ('model.spp_levels', (1, 0, 8), 'must be positive integers'),
    ('model.dropout', 1.0, 'must be in [0, 1)'),
    ('model.ibn', 'c', "must be '' (BatchNorm only), 'a' or 'b'"),
    ('model.ibn', 'a', "has no ImageNet weights: set config.pretrained.source=''"),
    ('optimizer.learning_rate', -1e-4, 'must be > 0'),
    ('optimizer.name', 'lamb', "must be one of 'sgd', 'adam'"),
    ('pretrained.source', 'imagenet', "must be one of ''"),
    ('data.split.val_fraction', 1.0, 'must be in [0, 1)'),
    ('data.split.val_dataset', 'brain_tumor', "needs data.dataset='mix'"),
    ('selection.threshold', 'youden', 'needs a validation split'),
    ('selection.metric', 'auc', "must be one of 'roc_auc'"),
    ('loss.class_weights', 'inverse', "must be one of 'none', 'balanced'"),
    ('selection.min_epoch_fraction', 1.0, 'must be in [0, 1)'),
    ('data.strip_rim', 0.5, 'must be a fraction of the head radius in [0, 0.5)'),
    ('loss.mixup_alpha', -0.2, 'must be >= 0'),
    ('data.augment.crop_scale', (0.5, 1.5), 'must satisfy 0 < low <= high <= 1'),
    ('profile_steps', (5, 2), 'must be (first, last) train steps'),
    ('seed', 2**31, 'must be an integer in [0, 2**31)'),
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


def _main(*overrides, devices=1, workdir='/nonexistent/never_written'):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/phantom.py',
                         f'--workdir={workdir}', *overrides],
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


@pytest.mark.slow
def test_batch_not_divisible_by_the_device_count():
  line = _main('--config.batch_size=30', '--config.eval_batch_size=64', devices=4)
  assert line == 'error: config.batch_size=30: must be divisible by the number of devices (4)'
  assert not Path('/nonexistent/never_written').exists()


# ---- Each user error is one line (issue 14, item 7) ------------------------------------


@pytest.mark.slow
def test_unknown_dataset_is_one_line():
  line = _main('--config.data.dataset=nope')  # found by the config check: nothing written
  assert not Path('/nonexistent/never_written').exists()
  assert line == (
      "error: config.data.dataset='nope': unknown dataset 'nope'; known: brain_tumor, "
      'brain_tumor_mri, brain_tumor_mri/four_class, brain_tumor_mri/binary, '
      "figshare_brain_tumor, image_folder, mix, phantom (or 'phantom/size=64,train=200,...')")


@pytest.mark.slow
def test_the_paper_split_on_a_dataset_too_small_for_it_is_one_line(tmp_path):
  line = _main('--config.data.dataset=phantom/train=40,test=10',
               '--config.data.split.protocol=paper', workdir=tmp_path)
  assert line == (
      "error: config.data.split.num_test=60: the 'paper' split holds out 30 test images "
      'of class 0, which has 25, leaving none to train on: lower data.split.num_test, or '
      "use data.split.protocol='stratified' or 'grouped' (dataset "
      "'phantom/train=40,test=10': 50 images)")


@pytest.mark.slow
def test_an_image_size_that_cannot_be_cached_is_one_line_before_allocating(tmp_path):
  line = _main('--config.data.image_size=1000000',
               '--config.data.dataset=phantom/train=40,test=10', workdir=tmp_path)
  assert re.fullmatch(
      r'error: config\.data\.image_size=1000000: caching the 50 images of the splits '
      r'\(data\.cache=True\) needs 46,566\.1 GiB of memory, [\d,.]+ GiB is available: lower '
      r'data\.image_size or set data\.cache=False', line), line


def test_contrast_percentiles_not_a_pair():
  config = phantom.get_config()
  config.data.contrast_percentiles = (5.0,)  # what --config.data.contrast_percentiles=5 sets
  with pytest.raises(ConfigError) as info:
    validate(config)
  assert str(info.value) == ('config.data.contrast_percentiles=(5.0,): must be (low, high) '
                             'with 0 <= low < high <= 100, e.g. (1.0, 99.0)')


def test_a_backbone_the_pretrained_source_has_no_weights_for():
  config = phantom.get_config()  # resnet18
  config.pretrained.source = 'imagenet_keras'
  with pytest.raises(ConfigError, match=r"^config\.model\.backbone='resnet18' does not fit "
                                        r"config\.pretrained\.source='imagenet_keras': "):
    validate(config)


@pytest.mark.filterwarnings('ignore::spp_resnet.weights.DigestWarning')  # not official
def test_a_bad_pretrained_file_is_the_converters_one_line(tmp_path, capsys):
  from types import SimpleNamespace
  from spp_resnet import cli
  from spp_resnet.weights import convert
  path = tmp_path / 'weights.h5'
  path.write_bytes(os.urandom(4096))
  config = default.get_config()
  config.pretrained.path = str(path)
  assert convert.main([str(path), '--source=imagenet_keras', '--no-download']) == 1
  converter_line = capsys.readouterr().err.splitlines()[-1]
  with pytest.raises(SystemExit) as exit_info, cli.exit_on_user_error():
    # Fails on the file, before the model is touched.
    convert.load_pretrained_backbone(SimpleNamespace(backbone=None), config.pretrained,
                                     config.model, download=False)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.splitlines() == [converter_line]
  assert converter_line == (f'error: {path}: not an HDF5 file; imagenet_keras needs the '
                            'Keras .h5 weights')


def test_exit_on_user_error_knows_the_projects_user_errors(capsys):
  from spp_resnet import cli
  from spp_resnet.data.builders import BuildError
  from spp_resnet.training.checkpoint import CheckpointError
  from spp_resnet.weights import WeightsError
  for error in (BuildError, CheckpointError, WeightsError, ConfigError, FileNotFoundError):
    with pytest.raises(SystemExit) as exit_info, cli.exit_on_user_error():
      raise error('what to fix')
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == 'error: what to fix\n'
  with pytest.raises(KeyError), cli.exit_on_user_error():  # a bug stays a traceback
    raise KeyError('bug')
