"""An ensemble of independently trained runs: the mean of their probabilities.

`config.ensemble_size` = N > 1 makes a run an ensemble. `train.train_and_evaluate` then
  1. trains N ordinary runs, WORKDIR/members/seed_S for S = seed, seed + 1, ...: the same
     data split (it has its own seed, `data.split.seed`), different initialization, data
     order, augmentation and dropout; each keeps its own best-on-validation checkpoint;
  2. averages the members' probabilities on the validation split, fits the decision
     threshold there (`config.selection`, as a single run does) and writes it to
     WORKDIR/selection.json;
  3. evaluates the test split once, with that threshold.
WORKDIR then holds config.json, class_names.json, ensemble.json (the members) and
selection.json, and every tool that takes a run (`--mode=eval`, `evaluate_external`,
`cross_dataset`, `predict`, Grad-CAM, export) takes it (`restore.restore_for_inference`).
Re-running the command resumes: finished members are restored, not trained again.

Why: which seed a run draws moved its transfer to an unseen source more than any lever
of the recipe (docs/results.md: three seeds of the recipe agree within 0.02 ROC AUC on
validation and spread 0.51-0.86 on the Bohaju slices); the mean of several seeds does
not depend on drawing a good one.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging

from spp_resnet import config_validation
from spp_resnet.training import restore
from spp_resnet.training import train as train_lib
from spp_resnet.training import workdir_lock

MEMBERS_DIR = 'members'


def member_seeds(config: ml_collections.ConfigDict) -> list[int]:
  return [config.seed + k for k in range(config.ensemble_size)]


def member_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The config of the member with `seed`: the ensemble's, as a single run."""
  member = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  member.seed, member.ensemble_size = seed, 1
  return member


def train_ensemble(config: ml_collections.ConfigDict, workdir: str) -> train_lib.EvalResult:
  """Trains (or resumes) the members, then fits the ensemble's threshold on validation
  and evaluates its test split once; returns the test result."""
  saved = os.path.join(workdir, restore.CONFIG_FILE)
  if os.path.exists(saved):  # resuming: the same ensemble (each member checks its own)
    with open(saved, encoding='utf-8') as f:
      config_validation.check_resume(json.load(f), config, workdir)
  seeds = member_seeds(config)
  with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
    for k, seed in enumerate(seeds):
      member = os.path.join(workdir, MEMBERS_DIR, f'seed_{seed}')
      logging.info('Ensemble member %d of %d: seed %d in %s.', k + 1, len(seeds), seed,
                   member)
      train_lib.train_and_evaluate(member_config(config, seed), member)
    return _assemble(config, workdir, seeds)


def _assemble(config: ml_collections.ConfigDict, workdir: str,
              seeds: list[int]) -> train_lib.EvalResult:
  members = [os.path.join(MEMBERS_DIR, f'seed_{seed}') for seed in seeds]
  first = os.path.join(workdir, members[0])
  class_names = restore.load_class_names(first, restore.load_run_config(first))
  train_lib.save_config(config, workdir, class_names)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, restore.ENSEMBLE_FILE), 'w', encoding='utf-8') as f:
      json.dump({'members': members, 'seeds': seeds}, f, indent=1)
  if jax.process_count() > 1:  # every process reads what process 0 wrote
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('spp_resnet ensemble.json written')
  restored = restore.restore_for_inference(workdir)
  has_val = 'val' in restore.run_splits(config)
  probs, summary = restore.predict_splits(restored, ('val', 'test') if has_val else ('test',))
  selection = None
  threshold = float(config.selection.fixed_threshold)
  if has_val:
    val = train_lib.metrics_from_probs(*probs['val'], class_names)
    chosen = [train_lib.load_selection(os.path.join(workdir, m)) or {} for m in members]
    selection = train_lib.selection_record(
        val, config.selection, epoch=None, step=None,
        members=[{'workdir': m, 'seed': s, 'epoch': c.get('epoch'), 'step': c.get('step'),
                  'value': c.get('value')} for m, s, c in zip(members, seeds, chosen)])
    train_lib.write_selection(workdir, selection)
    threshold = selection['threshold']
    logging.info('Ensemble of %d on validation: %s %.4f (members: %s).', len(seeds),
                 config.selection.metric, selection['value'],
                 ', '.join(f'{c.get("value", float("nan")):.4f}' for c in chosen))
  result = train_lib.metrics_from_probs(*probs['test'], class_names, threshold)
  result.selection, result.split = selection, summary
  logging.info('Test (evaluated once) with the ensemble of %d runs\n%s', len(seeds),
               result.table())
  return result
