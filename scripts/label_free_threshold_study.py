"""How many unlabelled images, at which tumor share, a label-free site threshold needs.

  python scripts/label_free_threshold_study.py OUT/<run>/<dataset>/predictions.csv [...] \
      [--sizes=20,50,100,200] [--shares=0.1,0.25,0.5] [--draws=200] [--seed=0]

A site threshold fitted without labels (`metrics.mixture_threshold`, what
`predict --fit_threshold` does) was measured on whole test sets. A site sends batches of
its own size and case mix. From the scores and labels of a binary `evaluate_external` or
`cross_dataset` cell (its predictions.csv), this draws, for each batch size N and tumor
share s, `draws` batches of round(N s) tumor and N - round(N s) tumor-free images without
replacement, fits the threshold on each batch without its labels, and scores it with the
labels on the WHOLE set (the site's later scans, not the batch it was fitted on). Prints
a Markdown table per file: sensitivity and specificity (median and 5th-95th percentile
over the draws), the share of draws meeting both >= 0.85, the estimated tumor share, the
separation of the two fitted components (Ashman's D) and how many fits were refused.
Rows whose batch needs more images of a class than the set has are left out; 'all' is the
whole set at its own share, once.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags
import numpy as np

from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import evaluate_external

flags.DEFINE_list('sizes', ['20', '50', '100', '200'], 'Batch sizes N.')
flags.DEFINE_list('shares', ['0.1', '0.25', '0.5'], 'Tumor shares of a batch.')
flags.DEFINE_integer('draws', 200, 'Batches drawn per (N, share).')
flags.DEFINE_integer('seed', 0, 'Seed of the draws.')
FLAGS = flags.FLAGS

TARGET = 0.85


def read_predictions(path: str) -> tuple[np.ndarray, np.ndarray, str]:
  """(P(positive), 0/1 labels, positive class name) from a binary predictions.csv."""
  _, scores, labels, positive = evaluate_external.read_binary_predictions(path)
  return scores, labels, positive


def _percentiles(values: Sequence[float]) -> str:
  if not len(values):
    return 'n/a'
  low, mid, high = np.percentile(values, [5, 50, 95])
  return f'{mid:.3f} [{low:.3f}, {high:.3f}]'


def study(scores: np.ndarray, labels: np.ndarray, sizes: Sequence[int],
          shares: Sequence[float], draws: int, seed: int = 0) -> list[dict]:
  """One dict per (N, share) that the set can supply, then one for the whole set: N,
  share, draws, refused (fits that raised), and per kept fit the lists 'sensitivity',
  'specificity', 'estimated_share', 'separation' (Ashman's D)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  positive, negative = np.flatnonzero(labels), np.flatnonzero(~labels)
  rng = np.random.default_rng(seed)
  # (N, share, draws, whole set?): the whole set comes last, fitted once.
  plans = [(n, s, draws, False) for n in sizes for s in shares
           if round(n * s) <= len(positive) and n - round(n * s) <= len(negative)]
  plans.append((len(labels), labels.mean(), 1, True))
  results = []
  for n, share, repeats, whole in plans:
    row = {'n': int(n), 'share': float(share), 'draws': int(repeats), 'refused': 0,
           'sensitivity': [], 'specificity': [], 'estimated_share': [], 'separation': []}
    for _ in range(repeats):
      if whole:
        batch = np.arange(len(labels))
      else:
        k = round(n * share)
        batch = np.concatenate([rng.choice(positive, k, replace=False),
                                rng.choice(negative, n - k, replace=False)])
      try:
        fit = metrics_lib.mixture_threshold(scores[batch])
      except ValueError:
        row['refused'] += 1
        continue
      rates = metrics_lib.rates_at(scores, labels, fit['threshold'])
      row['sensitivity'].append(rates['sensitivity'])
      row['specificity'].append(rates['specificity'])
      row['estimated_share'].append(fit['positive_share'])
      row['separation'].append(fit['separation'])
    results.append(row)
  return results


def format_study(results: Sequence[dict]) -> str:
  header = ['N', 'tumor share', 'draws', 'sensitivity (median [5%, 95%])', 'specificity',
            'both >= 0.85', 'estimated share', "Ashman's D", 'refused']
  rows = []
  for r in results:
    sens, spec = np.asarray(r['sensitivity']), np.asarray(r['specificity'])
    both = ((sens >= TARGET) & (spec >= TARGET)).mean() if len(sens) else float('nan')
    rows.append([r['n'], f"{r['share']:.3f}", r['draws'], _percentiles(sens),
                 _percentiles(spec), f'{both:.2f}', _percentiles(r['estimated_share']),
                 _percentiles(r['separation']), r['refused']])
  return metrics_lib.markdown_table(header, rows)


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Pass one or more predictions.csv files.')
  sizes = [int(s) for s in FLAGS.sizes]
  shares = [float(s) for s in FLAGS.shares]
  for path in paths:
    scores, labels, positive = read_predictions(path)
    print(f'\n{path}: {len(labels)} images, {int(labels.sum())} {positive}; ROC AUC '
          f'{metrics_lib.roc_auc(scores, labels):.3f}\n')
    print(format_study(study(scores, labels, sizes, shares, FLAGS.draws, FLAGS.seed)))
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
