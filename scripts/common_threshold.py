"""Is there one decision threshold that holds at every site? The best one, and each site's.

  python scripts/common_threshold.py [--run=WORKDIR [--splits=val,test]] \
      [NAME=OUT/<run>/<dataset>/predictions.csv ...]

A saved threshold is one number used everywhere. Where a model's scores shift between
sites, no number may serve them all, however well the model ranks each. This reads the
scores and labels of several binary sets: a run's own splits (`--run`, predicted with its
kept checkpoint or ensemble) and the predictions.csv of `evaluate_external` or
`cross_dataset` cells. Over every threshold it finds the one whose worst sensitivity or
specificity over the sets is highest (the best a single saved threshold could do, read
off the labels: an upper bound) and, for each set alone, the threshold that is best
there. Prints a Markdown table: each threshold's sensitivity / specificity on every set.
"""

from __future__ import annotations

from typing import Mapping

from absl import app, flags
import numpy as np

from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import evaluate_external

flags.DEFINE_string('run', '', "A trained run (main.py workdir): its own splits are sets.")
flags.DEFINE_list('splits', ['val', 'test'], "The run's splits to use (those it has).")
FLAGS = flags.FLAGS

Sets = Mapping[str, tuple[np.ndarray, np.ndarray]]  # name -> (P(positive), 0/1 labels)


def _worst(sets: Sets, threshold: float) -> float:
  return min(min(metrics_lib.rates_at(s, l, threshold).values()) for s, l in sets.values())


def best_common_threshold(sets: Sets) -> tuple[float, float]:
  """(threshold, its worst sensitivity or specificity over `sets`), the threshold that
  maximizes that worst value; among ties, the middle one. Every set needs both classes."""
  for name, (_, labels) in sets.items():
    if len(np.unique(labels)) != 2:
      raise ValueError(f'{name}: needs images of both classes')
  candidates = np.unique(np.concatenate([np.asarray(s, np.float64) for s, _ in sets.values()]))
  worst = np.array([_worst(sets, t) for t in candidates])
  ties = candidates[worst == worst.max()]
  return float(ties[len(ties) // 2]), float(worst.max())


def table(sets: Sets) -> str:
  """Markdown: the best common threshold, then each set's own best, on every set."""
  rows = [('all sets', *best_common_threshold(sets))]
  rows += [(f'{name} alone', *best_common_threshold({name: sets[name]})) for name in sets]
  head = ['threshold best for', 'threshold', 'worst of sens. / spec.'] + [
      f'{name} (n={len(l)}): sens. / spec.' for name, (_, l) in sets.items()]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for what, threshold, worst in rows:
    cells = []
    for s, l in sets.values():
      rates = metrics_lib.rates_at(s, l, threshold)
      cells.append(f"{rates['sensitivity']:.3f} / {rates['specificity']:.3f}")
    lines.append(f'| {what} | {threshold:.4f} | {worst:.3f} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def run_sets(workdir: str, splits: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The run's own splits (those it has of `splits`), predicted by its kept model."""
  from spp_resnet.training import restore  # pylint: disable=g-import-not-at-top  # loads JAX
  restored = restore.restore_for_inference(workdir)
  have = restore.run_splits(restored.config)
  probs, _ = restore.predict_splits(restored, tuple(s for s in splits if s in have))
  return {f'own {name}': (np.asarray(p)[:, 1], np.asarray(l)) for name, (p, l) in probs.items()}


def main(argv):
  sets = run_sets(FLAGS.run, FLAGS.splits) if FLAGS.run else {}
  for item in argv[1:]:
    name, sep, path = item.partition('=')
    if not sep or not name or not path:
      raise app.UsageError(f'{item!r}: give NAME=PATH/predictions.csv')
    _, scores, labels, _ = evaluate_external.read_binary_predictions(path)
    sets[name] = (scores, labels)
  if len(sets) < 2:
    raise app.UsageError('give at least two sets (--run and NAME=predictions.csv files)')
  print(table(sets))


if __name__ == '__main__':
  app.run(main)
