"""What the experiment runners share: training runs of config variants over repeats.

A run is an ordinary training run (`train.train_and_evaluate`) of a base config with
some fields overridden: those of a *variant* (an ablation variant, a sweep's grid point)
and those of a *repeat* (a fold, a random split or a seed). A finished run leaves a
result.json (test metrics, scores, split sizes, the model selection on the validation
split when the config has one, and the config fields it was trained with). A run whose
result.json records the same config is not trained again, so an interrupted runner
resumes where it stopped; one that records another config is refused, never mixed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import datetime
import glob
import json
import os
import shutil
import time
from typing import Any

from absl import flags, logging
import ml_collections
from ml_collections import config_flags
import numpy as np

from spp_resnet import config_validation

KFOLD_PROTOCOLS = ('grouped', 'stratified')
# Config fields a runner sets per repeat: never reductions of the base config, never swept.
REPEAT_FIELDS = ('seed', 'data.split.protocol', 'data.split.fold', 'data.split.num_folds',
                 'data.split.seed')
# Fields that do not change what is trained or measured (where the data and weights are
# read from, logging, the runners' own bookkeeping).
IGNORED_FIELDS = config_validation.NON_RESULT_FIELDS + ('sweep_grid', 'paper_best',
                                                        'ablation_backbones',
                                                        'ablation_variants')


class RunnerError(ValueError):
  """A usage error of a runner (bad flag, workdir of another config): one line, exit 2."""


@dataclasses.dataclass
class Run:
  protocol: str  # data.split.protocol
  variant: str   # name of the variant's overrides (ablation variant, sweep grid point)
  repeat: str    # fold, random split or seed
  config: ml_collections.ConfigDict
  workdir: str

  @property
  def key(self) -> tuple[str, str, str]:
    return (self.protocol, self.variant, self.repeat)


# ---------------------------------------------------------------------------------------
# Planning.

def repeats(config, protocol: str, folds: int, seeds: list[int]) -> list[tuple[str, dict]]:
  """[(repeat name, config overrides)] of one protocol."""
  if protocol in KFOLD_PROTOCOLS and folds >= 2:
    seed_list = seeds or [None]
    out = []
    for s in seed_list:
      for f in range(folds):
        over = {'data.split.num_folds': folds, 'data.split.fold': f}
        name = f'fold{f}'
        if s is not None:
          over.update({'seed': s, 'data.split.seed': s})
          name = f'seed{s}_fold{f}'
        out.append((name, over))
    return out
  if protocol in KFOLD_PROTOCOLS:  # holdout (test_fraction), repeated over seeds
    base = {'data.split.num_folds': 0, 'data.split.fold': 0}
  else:
    base = {}
  if seeds:  # split and model seed
    return [(f'seed{s}', {**base, 'seed': s, 'data.split.seed': s}) for s in seeds]
  # K random splits with the model seed fixed, like the K folds of a k-fold protocol.
  first = int(config.data.split.seed)
  return [(f'split{s}', {**base, 'data.split.seed': s})
          for s in range(first, first + max(folds, 1))]


def get_field(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def set_field(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def with_overrides(config, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(config.to_dict())  # unlocked deep copy
  for key, value in overrides.items():
    set_field(cfg, key, value)
  return cfg


def expand(config, root: str, variants: Mapping[str, Mapping[str, Any]], protocol: str,
           folds: int, seeds: list[int]) -> list[Run]:
  """Every variant x every repeat of `protocol`, in ROOT/<variant>/<repeat>/."""
  runs = []
  for variant, variant_over in variants.items():
    for name, over in repeats(config, protocol, folds, seeds):
      cfg = with_overrides(config, {'data.split.protocol': protocol, **variant_over, **over})
      runs.append(Run(protocol, variant, name, cfg, os.path.join(root, variant, name)))
  return runs


# ---------------------------------------------------------------------------------------
# Config bookkeeping.

flatten = config_validation.flatten


def comparable(config) -> dict[str, Any]:
  """The fields that determine what a run trains and measures."""
  flat = flatten(json.loads(config.to_json_best_effort()))
  return {k: v for k, v in flat.items() if k not in IGNORED_FIELDS}


def reductions(config, exclude=()) -> list[str]:
  """'field: paper value -> this value' for every field that differs from default.py.

  The repeat fields and `exclude` (what the runner varies) are left out.
  """
  try:
    # a checkout's, absent when installed
    from configs import default  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  paper = comparable(default.get_config())
  ours = comparable(config)
  skip = set(REPEAT_FIELDS) | set(exclude)
  out = []
  for key in sorted(set(paper) | set(ours)):
    if key in skip or paper.get(key) == ours.get(key):
      continue
    out.append(f'`{key}`: {paper.get(key, "(absent)")} → {ours.get(key, "(absent)")}')
  return out


def to_json(value):
  """`value` as it reads back from JSON (tuples -> lists, numpy scalars -> numbers)."""
  def default(x):
    if isinstance(x, np.generic):
      return x.item()
    if hasattr(x, '__array__'):  # numpy and jax arrays
      return np.asarray(x).tolist()
    raise TypeError(f'not JSON serializable: {type(x).__name__}')
  return json.loads(json.dumps(value, default=default, allow_nan=True))


# ---------------------------------------------------------------------------------------
# Running.

def load_result(run: Run) -> dict | None:
  """The run's result.json; None if unfinished; RunnerError if of another config."""
  path = os.path.join(run.workdir, 'result.json')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    result = json.load(f)
  if result.get('config_fields') != to_json(comparable(run.config)):
    raise RunnerError(
        f'{run.workdir} holds a finished run of a different config (result.json). Use a '
        'new --workdir, or delete that run to train it again.')
  return result


def train_one(run: Run, keep_checkpoint: bool) -> dict:
  """Trains and evaluates one run; writes and returns its result.json content."""
  # jax: not before --help
  from spp_resnet.training import ensemble, train  # pylint: disable=g-import-not-at-top
  logging.info('=== %s / %s / %s', run.protocol, run.variant, run.repeat)
  start = time.perf_counter()
  result = train.train_and_evaluate(run.config, run.workdir)
  wall = time.perf_counter() - start
  out = {
      'protocol': run.protocol, 'variant': run.variant, 'repeat': run.repeat,
      'metrics': result.metrics, 'confusion': np.asarray(result.confusion).tolist(),
      'class_names': list(result.class_names),
      'probs': np.asarray(result.probs).tolist(),
      'labels': np.asarray(result.labels).tolist(),
      'selection': to_json(result.selection),  # None without a validation split
      'split': result.split, 'wall_s': wall,  # the pipeline logged it at the start
      'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'config_fields': to_json(comparable(run.config)),
  }
  with open(os.path.join(run.workdir, 'class_names.json'), 'w', encoding='utf-8') as f:
    json.dump(list(result.class_names), f)
  tmp = os.path.join(run.workdir, 'result.json.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(to_json(out), f, allow_nan=True)
  os.replace(tmp, os.path.join(run.workdir, 'result.json'))
  if not keep_checkpoint:  # an ensemble's are its members'
    for folder in [run.workdir, *glob.glob(os.path.join(run.workdir, ensemble.MEMBERS_DIR, '*'))]:
      for name in ('checkpoints', train.BEST_CHECKPOINT):
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
  logging.info('=== %s / %s / %s done in %.0f s: accuracy %.4f', run.protocol,
               run.variant, run.repeat, wall, result.metrics['accuracy'])
  return out


def collect(runs: list[Run], *, trainable: Callable[[Run], bool] = lambda run: True,
            report_only: bool = False, keep_checkpoints: str = 'first'
            ) -> dict[tuple[str, str, str], dict]:
  """Results of `runs` by `Run.key`: finished ones read back, missing trainable ones trained.

  Every finished run is checked before the first training, so a workdir of another
  config is refused before any time is spent.
  """
  from spp_resnet.data import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  finished = {run.key: load_result(run) for run in runs}
  results, first_seen = {}, set()
  # One process for every run: the datasets, their preprocessed images and (through
  # JAX's caches) the compiled steps of equal shapes are reused from run to run.
  with pipeline_lib.reuse_across_runs():
    for run in runs:
      result = finished[run.key]
      if result is None and trainable(run) and not report_only:
        # 'first': the first repeat's checkpoint of each variant (for evaluate_external).
        keep = (keep_checkpoints == 'all' or
                (keep_checkpoints == 'first' and
                 (run.protocol, run.variant) not in first_seen))
        result = train_one(run, keep)
      first_seen.add((run.protocol, run.variant))
      if result is not None:
        results[run.key] = result
  return results


# ---------------------------------------------------------------------------------------
# Command line.

def define_flags(folds_default: int = 3) -> None:
  """The flags every runner has: config, workdir, repeats, report and checkpoints."""
  config_flags.DEFINE_config_file('config', None, 'Base ml_collections config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Output directory (runs, results, plots).')
  flags.DEFINE_integer('folds', folds_default, 'k of the k-fold protocols; the number of '
                       "random splits (seeds 0..k-1) of 'paper'/'original' when --seeds "
                       'is empty.')
  flags.DEFINE_list('seeds', [], 'Seeds (model and split) to repeat over; k-fold '
                    'protocols repeat all folds per seed.')
  flags.DEFINE_string('title', '', 'Heading of the results page (default: the dataset).')
  flags.DEFINE_bool('report_only', False, 'Only rebuild results.md/.json and the plots '
                    'from finished runs.')
  flags.DEFINE_enum('keep_checkpoints', 'first', ['first', 'all', 'none'],
                    'Checkpoints kept after a run is evaluated: of the first repeat of '
                    'each variant (for evaluate_external), all, or none.')
  flags.mark_flags_as_required(['config', 'workdir'])


def seeds_flag(values: list[str]) -> list[int]:
  try:
    return [int(s) for s in values]
  except ValueError as e:
    raise RunnerError(f'--seeds: integers expected, got {",".join(values)}') from e


