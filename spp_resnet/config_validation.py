"""Checks a config before any work starts; errors name the offending field."""

from __future__ import annotations

import jax
import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def _require(condition: bool, field: str, message: str, value) -> None:
  if not condition:
    raise ConfigError(f'config.{field}={value!r}: {message}')


def _choice(config, field: str, choices) -> None:
  value = config
  for part in field.split('.'):
    value = value[part]
  _require(value in choices, field, f'must be one of {", ".join(map(repr, choices))}', value)


def validate(config: ml_collections.ConfigDict) -> None:
  devices, processes = jax.device_count(), jax.process_count()
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    _require(isinstance(value, int) and value > 0, field, 'must be a positive integer', value)
    _require(value % devices == 0, field,
             f'must be divisible by the number of devices ({devices})', value)
    _require(value % processes == 0, field,
             f'must be divisible by the number of processes ({processes})', value)
  for field in ('num_epochs', 'log_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints', 'eval_every_epochs'):
    _require(config[field] >= 1, field, 'must be >= 1', config[field])

  data = config.data
  _require(data.image_size >= 32, 'data.image_size', 'must be >= 32 pixels', data.image_size)
  lo, hi = data.contrast_percentiles
  _require(0 <= lo < hi <= 100, 'data.contrast_percentiles',
           'must be (low, high) with 0 <= low < high <= 100', tuple(data.contrast_percentiles))
  _choice(config, 'data.normalization', ('auto', 'none', 'imagenet', 'caffe'))
  _choice(config, 'data.split.protocol', ('paper', 'stratified', 'grouped', 'original'))
  split = data.split
  for field in ('per_class', 'num_test', 'num_folds', 'max_per_class'):
    _require(isinstance(split[field], int) and split[field] >= 0, f'data.split.{field}',
             'must be an integer >= 0', split[field])
  _require(0 < split.test_fraction < 1, 'data.split.test_fraction', 'must be in (0, 1)',
           split.test_fraction)
  _require(split.num_folds != 1, 'data.split.num_folds', 'must be 0 (holdout) or >= 2',
           split.num_folds)
  _require(split.num_folds == 0 or 0 <= split.fold < split.num_folds, 'data.split.fold',
           f'must be in [0, num_folds={split.num_folds})', split.fold)
  _require(data.num_workers >= 0, 'data.num_workers', 'must be >= 0', data.num_workers)

  model = config.model
  from spp_resnet.models import BACKBONES  # Deferred: models import flax.
  _choice(config, 'model.backbone', tuple(sorted(BACKBONES)))
  _choice(config, 'model.variant', ('v1', 'v1.5'))
  _choice(config, 'model.pooling', ('spp', 'gap'))
  _choice(config, 'model.spp_mode', ('max', 'avg'))
  _choice(config, 'model.compute_dtype', ('float32', 'bfloat16'))
  levels = tuple(model.spp_levels)
  _require(len(levels) > 0 and all(isinstance(n, int) and n >= 1 for n in levels),
           'model.spp_levels', 'must be positive integers, e.g. (1, 4, 8)', levels)
  _require(0.0 <= model.dropout < 1.0, 'model.dropout', 'must be in [0, 1)', model.dropout)
  _require(all(h >= 1 for h in model.head_hidden), 'model.head_hidden',
           'must be positive widths', tuple(model.head_hidden))
  _require(model.head_init_std > 0, 'model.head_init_std', 'must be > 0', model.head_init_std)

  _choice(config, 'pretrained.source', ('', 'imagenet_keras', 'imagenet_torchvision'))

  opt = config.optimizer
  _choice(config, 'optimizer.name', ('sgd', 'adam'))
  _choice(config, 'optimizer.schedule', ('constant', 'cosine', 'step', 'inverse_time'))
  _choice(config, 'optimizer.weight_decay_type', ('coupled', 'decoupled'))
  _require(opt.learning_rate > 0, 'optimizer.learning_rate', 'must be > 0', opt.learning_rate)
  _require(0.0 <= opt.momentum < 1.0, 'optimizer.momentum', 'must be in [0, 1)', opt.momentum)
  _require(opt.weight_decay >= 0, 'optimizer.weight_decay', 'must be >= 0', opt.weight_decay)
  _require(opt.warmup_epochs >= 0, 'optimizer.warmup_epochs', 'must be >= 0',
           opt.warmup_epochs)
  _choice(config, 'freeze.backbone_up_to',
          ('none', 'all', 'stem', 'stage1', 'stage2', 'stage3', 'stage4'))
