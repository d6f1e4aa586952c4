"""Markdown table of recipe runs: validation (what chose), test, and other datasets.

  python scripts/recipe_report.py RUNS_DIR CROSS_DATASET_JSON [MORE_CROSS_JSON ...]

RUNS_DIR holds main.py workdirs (config.json, metrics.jsonl, selection.json), e.g. the
runs/gpu folder of scripts/gpu_recipe.sh's results.tgz; each CROSS_DATASET_JSON is a
`cross_dataset.json` of `python -m spp_resnet.experiments.cross_dataset`. One row per run
that appears in a cross-dataset matrix. Intervals are 95%: Wilson for test sensitivity and
specificity (from the test counts), Hanley & McNeil (1982) for test ROC AUC (the runs
keep no per-image test scores), and the cross-dataset cells' own (bootstrap / Wilson).
"""

import json
import math
import os
import sys

from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.evaluation import writers


def hanley_mcneil(auc: float, positives: int, negatives: int) -> tuple[float, float]:
  q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
  var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
         + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
  half = 1.96 * math.sqrt(max(var, 0.0))
  return max(0.0, auc - half), min(1.0, auc + half)


def _wilson(rate: float, trials: int) -> tuple[float, float]:
  ci = metrics_lib.wilson_ci(int(round(rate * trials)), trials)
  return ci.low, ci.high


def fmt(value, interval=None) -> str:
  if value is None:
    return 'n/a'
  if interval:
    return f'{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]'
  return f'{value:.3f}'


def test_row(workdir: str) -> dict:
  return [r for r in writers.read_metrics(workdir) if 'test/roc_auc' in r][-1]


def main(runs_dir: str, *cross_paths: str) -> None:
  cells, order = {}, []
  for path in cross_paths:
    with open(path) as f:
      cross = json.load(f)
    for run, by_dataset in cross['cells'].items():
      if run not in cells:
        order.append(run)
      cells.setdefault(run, {}).update(by_dataset)
  header = ['run', 'val ROC AUC (kept epoch)', 'threshold', 'test ROC AUC', 'test sens.',
            'test spec.', 'Bohaju ROC AUC', 'Bohaju sens.', 'Bohaju spec.',
            'figshare sens.']
  table = []
  for run in order:
    workdir = os.path.join(runs_dir, run)
    test = test_row(workdir)
    sel_path = os.path.join(workdir, 'selection.json')
    sel = json.load(open(sel_path)) if os.path.exists(sel_path) else None
    n = int(test['test/num_examples'])
    sens, spec, acc = (test[f'test/{k}'] for k in ('sensitivity', 'specificity', 'accuracy'))
    # acc n = sens P + spec (n - P) gives the number of positives P of the test split.
    positives = int(round(n * (acc - spec) / (sens - spec)))
    negatives = n - positives
    table.append([
        run, f'{sel["value"]:.3f} ({sel["epoch"]})' if sel else '(no validation split)',
        f'{sel["threshold"]:.3f}' if sel else '0.5 (fixed)',
        fmt(test['test/roc_auc'], hanley_mcneil(test['test/roc_auc'], positives, negatives)),
        fmt(sens, _wilson(sens, positives)), fmt(spec, _wilson(spec, negatives))])

    def cell(dataset, key):
      c = cells[run].get(dataset, {})
      if c.get('status') != 'ok':
        return c.get('status', 'not run')
      return fmt(c['metrics'].get(key), c.get('intervals', {}).get(key))

    table[-1] += [cell('bohaju', 'roc_auc'), cell('bohaju', 'sensitivity'),
                  cell('bohaju', 'specificity'), cell('figshare', 'sensitivity')]
  print(metrics_lib.markdown_table(header, table))


if __name__ == '__main__':
  main(*sys.argv[1:])
