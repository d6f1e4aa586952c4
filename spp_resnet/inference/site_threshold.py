r"""A decision threshold fitted on labelled images of the site a model is deployed at.

A binary model's saved threshold is fitted on its own validation split. Its ranking can
transfer to another hospital's scans while its probabilities do not: in docs/results.md a
model trained on one source calls most tumors of another "no tumor" at its saved
threshold, and refitting the threshold on 10 + 10 labelled images there recovers most of
them. This module turns that into a deployment step:

  # fit on a labelled sample of the site (one folder per class), save it
  python -m spp_resnet.experiments.evaluate_external --workdir=RUN \
      --manual_dir=SITE_SAMPLE --save_threshold=RUN/site_a.json
  # use it: predictions, or an evaluation on other labelled images of that site
  python -m spp_resnet.predict --workdir=RUN --threshold=RUN/site_a.json SCANS...
  python -m spp_resnet.experiments.evaluate_external --workdir=RUN \
      --manual_dir=SITE_HELD_OUT --threshold=RUN/site_a.json

The file records the weights it was fitted for (a fingerprint of their bytes), so it is
refused for any other model. The rule is the run's own (`config.selection.threshold`:
Youden's J, or the target sensitivity; a run with a fixed threshold gets Youden's J).
Metrics measured on the images the threshold was fitted on are optimistic;
`evaluate_external --refit_threshold=N` estimates what a sample of N images per class
gives on the rest.

Without labels: `predict --fit_threshold=FILE SCANS...` (or `evaluate_external
--site_rule=mixture --save_threshold=FILE`, which scores it with the labels it has)
fits the threshold on the site's unlabelled images alone, where two Gaussians fitted
to the model's logits cross (`metrics.mixture_threshold`). It needs a batch holding
both classes in numbers, and it is only as good as the model's ranking there.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from typing import Any

import jax
import numpy as np

from spp_resnet.evaluation import metrics as metrics_lib

KIND = 'spp_resnet site threshold'
# Below this separation of the two Gaussians (Ashman's D) a label-free fit gets a
# warning. 2 is the usual cut-off for two clean clusters; in docs/results.md ("Reruns
# on a third VM; the label-free threshold on a site's batches") the fits that failed
# had D 1.4-1.9, those that worked mostly above 2.
MIN_SEPARATION = 2.0


class SiteThresholdError(ValueError):
  """A threshold that cannot be fitted or used for this model (the message says why)."""


def rule_of(config) -> tuple[str, float]:
  """The rule a site threshold is fitted with: the run's own, Youden's J for a fixed one."""
  selection = config.get('selection', {})
  rule = selection.get('threshold', 'fixed')
  return (rule if rule in ('youden', 'sensitivity') else 'youden',
          float(selection.get('target_sensitivity', 0.9)))


def fingerprint(restored) -> str:
  """sha256 (16 hex digits) of the model's weights, every array in tree order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(restored.weights)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def fit(restored, positive_probs: np.ndarray, labels: np.ndarray | None,
        rule: str = '', **about: Any) -> dict[str, Any]:
  """The site threshold of `restored` on these images, as the file records it.

  `positive_probs`: P(class_names[1]) per image; `labels`: 0/1. `rule`: '' for the run's
  own (`rule_of`), or 'mixture': from the images alone, labels unused and may be None
  (`metrics.mixture_threshold`: where two Gaussians fitted to the logits cross).
  `about`: where the images came from (dataset, folder, command), copied into the record.
  """
  if len(restored.class_names) != 2:
    raise SiteThresholdError(f'{restored.workdir} has {len(restored.class_names)} classes: '
                             'only a binary model has a decision threshold.')
  if rule == 'mixture':
    return _fit_mixture(restored, positive_probs, labels, about)
  labels = np.asarray(labels).astype(bool)
  counts = {restored.class_names[0]: int((~labels).sum()),
            restored.class_names[1]: int(labels.sum())}
  if min(counts.values()) == 0:
    raise SiteThresholdError(f'A threshold needs labelled images of both classes; these '
                             f'images hold {counts}.')
  rule, target = rule_of(restored.config)
  threshold = metrics_lib.choose_threshold(positive_probs, labels, rule,
                                           target_sensitivity=target)
  return {
      'kind': KIND, 'threshold': threshold, 'rule': rule,
      **({'target_sensitivity': target} if rule == 'sensitivity' else {}),
      'workdir': os.path.abspath(restored.workdir), 'model': restored.description,
      'weights_sha256': fingerprint(restored), 'class_names': list(restored.class_names),
      'num_images': int(len(labels)), 'class_counts': counts,
      # On the fitting images themselves: optimistic (see the module docstring).
      'in_sample': metrics_lib.rates_at(positive_probs, labels, threshold),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      **about,
  }


def _fit_mixture(restored, positive_probs, labels, about) -> dict[str, Any]:
  try:
    mixture = metrics_lib.mixture_threshold(positive_probs)
  except ValueError as e:
    raise SiteThresholdError(f'No threshold from these images: {e}') from None
  called = np.asarray(positive_probs) >= mixture['threshold']
  record = {
      'kind': KIND, 'threshold': mixture['threshold'], 'rule': 'mixture',
      'positive_share': mixture['positive_share'], 'separation': mixture['separation'],
      'workdir': os.path.abspath(restored.workdir), 'model': restored.description,
      'weights_sha256': fingerprint(restored), 'class_names': list(restored.class_names),
      'num_images': int(len(called)), 'called_positive': float(called.mean()),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      **about,
  }
  if mixture['separation'] < MIN_SEPARATION:
    record['warning'] = (
        f"the two clusters of logits overlap (Ashman's D {mixture['separation']:.2f} < "
        f'{MIN_SEPARATION:g}): the threshold may not separate the classes here; check it '
        'on labelled images of the site before relying on it')
  if labels is not None:  # scored only, never fitted on
    labels = np.asarray(labels).astype(bool)
    record['class_counts'] = {restored.class_names[0]: int((~labels).sum()),
                              restored.class_names[1]: int(labels.sum())}
    record['in_sample'] = metrics_lib.rates_at(positive_probs, labels, mixture['threshold'])
  return record


def write(record: dict[str, Any], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1)


def apply(restored, spec: str):
  """`restored` deciding at `spec`: a probability ('0.3') or a file `write` made for
  these weights. Returns a copy; its `threshold_source` says where the threshold is from."""
  if len(restored.class_names) != 2:
    raise SiteThresholdError(f'--threshold={spec}: {restored.workdir} has '
                             f'{len(restored.class_names)} classes and decides by argmax.')
  try:
    threshold, source = float(spec), 'given on the command line'
  except ValueError:
    threshold, source = _load(spec, restored), f'site threshold {spec}'
  if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
    raise SiteThresholdError(f'--threshold={spec}: a threshold on P(positive) lies in [0, 1].')
  return dataclasses.replace(restored, threshold=threshold, threshold_source=source)


def _load(path: str, restored) -> float:
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
  except FileNotFoundError:
    raise SiteThresholdError(f'--threshold={path}: no such file (a number, or a file '
                             'written by evaluate_external --save_threshold).') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise SiteThresholdError(f'--threshold={path}: not a site threshold file ({e}).') from None
  if not isinstance(record, dict) or record.get('kind') != KIND:
    raise SiteThresholdError(f'--threshold={path}: not a site threshold file (written by '
                             'evaluate_external --save_threshold).')
  if record.get('weights_sha256') != fingerprint(restored):
    raise SiteThresholdError(
        f'--threshold={path} was fitted for other weights ({record.get("model")} of '
        f'{record.get("workdir")}), not for {restored.description} of {restored.workdir}: '
        'a threshold only means something for the model it was fitted on.')
  return float(record['threshold'])
