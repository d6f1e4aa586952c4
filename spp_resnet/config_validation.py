"""Checks a config before any work starts; errors name the offending field."""

from __future__ import annotations

import json
from typing import Any

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


# Fields that do not change what a run trains and measures: paths, logging, caching.
NON_RESULT_FIELDS = ('data.data_dir', 'data.manual_dir', 'data.num_workers',
                     'data.prefetch_buffer', 'data.cache', 'pretrained.path',
                     'pretrained.cache_dir', 'pretrained.strict_digest', 'log_every_steps',
                     'checkpoint_every_steps', 'keep_checkpoints', 'halt_on_nan',
                     'profile_steps')
# Fields a run may resume with changed: more epochs (the schedule is stretched to the new
# length), evaluation cadence and batch, early stopping, and a lower learning rate after
# a divergence (the optimizer state keeps its structure).
RESUMABLE_FIELDS = ('num_epochs', 'eval_batch_size', 'eval_every_epochs',
                    'selection.early_stopping_patience',
                    # how a diverged run is resumed from its last finite checkpoint
                    'optimizer.learning_rate')


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; tuples as lists (as JSON has them)."""
  out = {}
  for key, value in d.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def check_resume(saved: dict, config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Refuses to resume WORKDIR's run (`saved`: its config.json) with a config that trains
  something else; returns the changed fields that are safe to resume with."""
  before = flatten(saved)
  now = flatten(json.loads(config.to_json_best_effort()))
  # A field the saved run lacks is one added to the code since: nothing to compare.
  changed = sorted(k for k in before.keys() & now.keys()
                   if before[k] != now[k] and k not in NON_RESULT_FIELDS)
  refused = [k for k in changed if k not in RESUMABLE_FIELDS]
  if refused:
    shown = ', '.join(f'{k}: {before[k]!r} -> {now[k]!r}' for k in refused[:6])
    more = f' and {len(refused) - 6} more' if len(refused) > 6 else ''
    raise ConfigError(f'{workdir} holds a run of another config ({shown}{more}); resume it '
                      'with its own config, or use a new --workdir (or delete that one to '
                      'start over).')
  return changed


def validate(config: ml_collections.ConfigDict) -> None:
  import jax  # pylint: disable=g-import-not-at-top  # keeps this module cheap to import
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
  _require(isinstance(config.seed, int) and 0 <= config.seed < 2**31, 'seed',
           'must be an integer in [0, 2**31)', config.seed)
  ensemble_size = config.get('ensemble_size', 1)
  _require(isinstance(ensemble_size, int) and 1 <= ensemble_size <= 64, 'ensemble_size',
           'must be an integer in [1, 64]', ensemble_size)
  _require(config.seed + ensemble_size <= 2**31, 'seed',
           f'+ ensemble_size ({ensemble_size}) must stay below 2**31', config.seed)
  ema_decay = config.optimizer.get('ema_decay', 0.0)
  _require(0.0 <= ema_decay < 1.0, 'optimizer.ema_decay', 'must be in [0, 1) (0 = off)',
           ema_decay)
  profile = tuple(config.get('profile_steps', (0, 0)))
  _require(len(profile) == 2 and all(isinstance(x, int) for x in profile) and (
      profile == (0, 0) or 1 <= profile[0] <= profile[1]), 'profile_steps',
           'must be (first, last) train steps with 1 <= first <= last, or (0, 0) for off',
           profile)

  data = config.data
  from spp_resnet.data import sources  # pylint: disable=g-import-not-at-top  # cycle (below too)
  try:
    sources.check_dataset_name(data.dataset)
  except ValueError as e:
    raise ConfigError(f'config.data.dataset={data.dataset!r}: {e}') from None
  _require(data.image_size >= 32, 'data.image_size', 'must be >= 32 pixels', data.image_size)
  percentiles = data.contrast_percentiles
  _require(isinstance(percentiles, (tuple, list)) and len(percentiles) == 2
           and all(isinstance(p, (int, float)) for p in percentiles)
           and 0 <= percentiles[0] < percentiles[1] <= 100, 'data.contrast_percentiles',
           'must be (low, high) with 0 <= low < high <= 100, e.g. (1.0, 99.0)',
           tuple(percentiles) if isinstance(percentiles, (tuple, list)) else percentiles)
  rim = data.get('strip_rim', 0.0)
  _require(isinstance(rim, (int, float)) and 0 <= rim < 0.5, 'data.strip_rim',
           'must be a fraction of the head radius in [0, 0.5), e.g. 0.1 (0 = off)', rim)
  # The allowed values come from the registries that implement them.
  from spp_resnet.data import preprocess, splits  # pylint: disable=g-import-not-at-top
  _choice(config, 'data.normalization', ('auto', *preprocess.NORMALIZATIONS))
  _choice(config, 'data.split.protocol', splits.PROTOCOLS)
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
  from spp_resnet.data import augment  # pylint: disable=g-import-not-at-top
  try:
    augment.AugmentSpec.from_config(data.augment)
  except (ValueError, TypeError) as e:
    field, _, message = str(e).partition(' ')
    if field.startswith('augment.'):  # 'augment.crop_scale must ...' names the field
      value = data.augment[field.split('.', 1)[1]]
      value = tuple(value) if isinstance(value, (tuple, list)) else value
      raise ConfigError(f'config.data.{field}={value!r}: {message}') from None
    raise ConfigError(f'config.data.augment: {e}') from None
  val_fraction = split.get('val_fraction', 0.0)
  _require(0.0 <= val_fraction < 1.0, 'data.split.val_fraction', 'must be in [0, 1)',
           val_fraction)
  val_dataset = split.get('val_dataset', '')
  _require(not val_dataset or data.dataset == 'mix', 'data.split.val_dataset',
           "names a part of data.mix: needs data.dataset='mix'", val_dataset)
  _require(not (val_dataset and val_fraction), 'data.split.val_dataset',
           'and data.split.val_fraction > 0 both define the validation split: set one',
           val_dataset)
  has_val = bool(val_fraction > 0 or val_dataset)
  _require(data.num_workers >= 0, 'data.num_workers', 'must be >= 0', data.num_workers)
  if data.dataset == 'mix':  # the parts must parse before any dataset is built
    from spp_resnet.data import mix  # pylint: disable=g-import-not-at-top
    try:
      for part in mix.parse_mix(data.get('mix', '')):
        sources.check_dataset_name(part.dataset)
    except ValueError as e:
      raise ConfigError(f"config.data.mix={data.get('mix', '')!r}: {e}") from None

  model = config.model
  from spp_resnet.models import BACKBONES, COMPUTE_DTYPES  # pylint: disable=g-import-not-at-top  # flax
  _choice(config, 'model.backbone', tuple(sorted(BACKBONES)))
  _choice(config, 'model.variant', ('v1', 'v1.5'))
  _choice(config, 'model.pooling', ('spp', 'gap'))
  from spp_resnet.models.resnet import IBN_LAYOUTS  # pylint: disable=g-import-not-at-top
  ibn = model.get('ibn', '')
  _require(ibn in IBN_LAYOUTS, 'model.ibn',
           "must be '' (BatchNorm only), 'a' or 'b' (IBN-Net's layouts)", ibn)
  _require(not ibn or model.backbone.startswith('resnet'), 'model.ibn',
           f'is built for the ResNets only, not {model.backbone!r}', ibn)
  _require(not ibn or config.pretrained.source in ('', 'ssl'), 'model.ibn',
           "has no ImageNet weights: set config.pretrained.source='' (from scratch) or 'ssl'",
           ibn)
  _choice(config, 'model.spp_mode', ('max', 'avg'))
  _choice(config, 'model.compute_dtype', tuple(COMPUTE_DTYPES))
  levels = tuple(model.spp_levels)
  _require(len(levels) > 0 and all(isinstance(n, int) and n >= 1 for n in levels),
           'model.spp_levels', 'must be positive integers, e.g. (1, 4, 8)', levels)
  _require(0.0 <= model.dropout < 1.0, 'model.dropout', 'must be in [0, 1)', model.dropout)
  _require(all(h >= 1 for h in model.head_hidden), 'model.head_hidden',
           'must be positive widths', tuple(model.head_hidden))
  _require(model.head_init_std > 0, 'model.head_init_std', 'must be > 0', model.head_init_std)

  from spp_resnet.weights import sources  # pylint: disable=g-import-not-at-top
  _choice(config, 'pretrained.source', ('', *sources.WEIGHT_SOURCES, 'ssl'))
  _require(config.pretrained.source != 'ssl' or bool(config.pretrained.path),
           'pretrained.path', "must be the --workdir of an SSL run (python -m "
           "spp_resnet.training.ssl) when pretrained.source='ssl'", config.pretrained.path)
  if config.pretrained.source in sources.WEIGHT_SOURCES:  # it says which backbones fit
    from spp_resnet.weights import convert  # pylint: disable=g-import-not-at-top
    try:
      convert.check_compatibility(config.pretrained, model)
    except ValueError as e:  # 'config.model.backbone=...: ...'
      raise ConfigError(str(e)) from None

  opt = config.optimizer
  _choice(config, 'optimizer.name', ('sgd', 'adam'))
  _choice(config, 'optimizer.schedule', ('constant', 'cosine', 'step', 'inverse_time'))
  _choice(config, 'optimizer.weight_decay_type', ('coupled', 'decoupled'))
  _require(opt.learning_rate > 0, 'optimizer.learning_rate', 'must be > 0', opt.learning_rate)
  _require(0.0 <= opt.momentum < 1.0, 'optimizer.momentum', 'must be in [0, 1)', opt.momentum)
  _require(opt.weight_decay >= 0, 'optimizer.weight_decay', 'must be >= 0', opt.weight_decay)
  _require(opt.warmup_epochs >= 0, 'optimizer.warmup_epochs', 'must be >= 0',
           opt.warmup_epochs)
  loss = config.loss
  _require(0.0 <= loss.label_smoothing < 1.0, 'loss.label_smoothing', 'must be in [0, 1)',
           loss.label_smoothing)
  _choice(config, 'loss.class_weights', ('none', 'balanced'))
  _require(loss.get('mixup_alpha', 0.0) >= 0.0, 'loss.mixup_alpha', 'must be >= 0 (0 = off)',
           loss.get('mixup_alpha', 0.0))
  # Mixup's partner (the reversed global batch) moves images between hosts: a
  # collective-permute, which never returns between CPU processes (jax 0.10, gloo).
  _require(loss.get('mixup_alpha', 0.0) == 0.0 or processes == 1
           or jax.default_backend() != 'cpu', 'loss.mixup_alpha',
           f'cannot be used by {processes} CPU processes (their collectives hang on the '
           'reversed batch it mixes with); train it in one process',
           loss.get('mixup_alpha', 0.0))

  from spp_resnet.evaluation import metrics  # Deferred, like the models.
  sel = config.selection
  _choice(config, 'selection.threshold', metrics.THRESHOLD_RULES)
  _require(sel.threshold == 'fixed' or has_val, 'selection.threshold',
           'needs a validation split to fit it on (set data.split.val_fraction > 0)',
           sel.threshold)
  _require(0.0 < sel.fixed_threshold < 1.0, 'selection.fixed_threshold', 'must be in (0, 1)',
           sel.fixed_threshold)
  _require(0.0 < sel.target_sensitivity <= 1.0, 'selection.target_sensitivity',
           'must be in (0, 1]', sel.target_sensitivity)
  _require(isinstance(sel.early_stopping_patience, int) and sel.early_stopping_patience >= 0,
           'selection.early_stopping_patience', 'must be an integer >= 0',
           sel.early_stopping_patience)
  _require(sel.early_stopping_patience == 0 or has_val,
           'selection.early_stopping_patience',
           'needs a validation split (set data.split.val_fraction > 0)',
           sel.early_stopping_patience)
  min_epoch_fraction = sel.get('min_epoch_fraction', 0.0)
  _require(0.0 <= min_epoch_fraction < 1.0, 'selection.min_epoch_fraction',
           'must be in [0, 1) (0 = every epoch eligible)', min_epoch_fraction)
  _require(sel.metric in metrics.SELECTION_METRICS, 'selection.metric',
           f'must be one of {", ".join(map(repr, metrics.SELECTION_METRICS))}', sel.metric)
  from spp_resnet.training.train import FREEZE_STAGES  # pylint: disable=g-import-not-at-top  # cycle
  _choice(config, 'freeze.backbone_up_to', ('none', 'all', *FREEZE_STAGES))
