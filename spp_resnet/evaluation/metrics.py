"""Classification metrics, on the host, from per-example class probabilities.

The jitted eval step returns class probabilities; predictions (at a decision threshold
chosen on validation data, `choose_threshold`), confusion matrices and every summary are
computed here from those, so one evaluation serves any threshold.

Conventions:
  * Confusion matrices are indexed [true class, predicted class].
  * A ratio whose denominator is zero (precision of a class that is never predicted,
    recall of a class absent from the labels, ...) is 0.0, as with scikit-learn's
    `zero_division=0`, so that macro averages stay finite.
  * ROC AUC is nan when it is undefined: the labels hold only one of the two sides
    (all positive or all negative), or a score is nan.
"""

from collections.abc import Mapping, Sequence
import math
import statistics
from typing import NamedTuple

import numpy as np

# Metrics computed per class in the multi-class case, in table order.
_PER_CLASS = ('precision', 'recall', 'sensitivity', 'specificity', 'f1', 'roc_auc')


# ---- Host side --------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float:
  return float(numerator) / float(denominator) if denominator else 0.0


def _class_stats(confusion: np.ndarray, k: int) -> dict[str, float]:
  """One-vs-rest precision, recall (= sensitivity), specificity and F1 of class k."""
  tp = confusion[k, k]
  fn = confusion[k].sum() - tp
  fp = confusion[:, k].sum() - tp
  tn = confusion.sum() - tp - fn - fp
  recall = _ratio(tp, tp + fn)
  return {
      'precision': _ratio(tp, tp + fp),
      'recall': recall,
      'sensitivity': recall,
      'specificity': _ratio(tn, tn + fp),
      # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall, and is 0
      # (not 0/0) when TP = 0.
      'f1': _ratio(2 * tp, 2 * tp + fp + fn),
  }


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Exact ROC AUC: the Mann-Whitney probability that a positive outscores a negative.

  Tied positive/negative pairs count 1/2 (average ranks). `labels` are booleans or 0/1
  with 1 = positive. nan if there are no positives, no negatives, or a nan score.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel().astype(bool)
  if scores.shape != positive.shape:
    raise ValueError(f'{scores.shape[0]} scores but {positive.shape[0]} labels')
  num_pos = int(positive.sum())
  num_neg = positive.size - num_pos
  if num_pos == 0 or num_neg == 0 or np.isnan(scores).any():
    return math.nan
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # 1-based rank of each distinct value, averaged over its ties.
  average_rank = np.cumsum(counts) - (counts - 1) / 2.0
  rank_sum = average_rank[inverse][positive].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def roc_curve(scores: np.ndarray,
              labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) with one point per distinct score, from (0, 0) to (1, 1).

  Point i counts `score >= thresholds[i]` as positive; the first threshold is +inf.
  The trapezoidal area under the curve equals `roc_auc`.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel().astype(bool)
  if scores.shape != positive.shape:
    raise ValueError(f'{scores.shape[0]} scores but {positive.shape[0]} labels')
  num_pos = int(positive.sum())
  num_neg = positive.size - num_pos
  if num_pos == 0 or num_neg == 0:
    raise ValueError('ROC curve needs both positive and negative labels')
  order = np.argsort(-scores, kind='stable')
  scores, positive = scores[order], positive[order]
  # The last index of each run of equal scores: all ties switch at one threshold.
  last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
  true_pos = np.cumsum(positive)[last_of_tie]
  false_pos = (last_of_tie + 1) - true_pos
  fpr = np.r_[0.0, false_pos / num_neg]
  tpr = np.r_[0.0, true_pos / num_pos]
  thresholds = np.r_[np.inf, scores[last_of_tie]]
  return fpr, tpr, thresholds


THRESHOLD_RULES = ('fixed', 'youden', 'sensitivity')
# Validation metrics a run can keep its best checkpoint by ('loss': lower is better).
SELECTION_METRICS = ('roc_auc', 'accuracy', 'f1', 'precision', 'recall', 'sensitivity',
                     'specificity', 'loss')


def choose_threshold(scores: np.ndarray, labels: np.ndarray, rule: str, *,
                     fixed: float = 0.5, target_sensitivity: float = 0.9) -> float:
  """Decision threshold on P(positive) (positive iff score >= threshold), from `rule`.

  'fixed': `fixed`. 'youden': maximizes sensitivity + specificity - 1 (Youden's J);
  'sensitivity': the highest threshold reaching `target_sensitivity`, i.e. the best
  specificity at that sensitivity. Both are fitted on validation scores: the threshold
  lies halfway between the score where the chosen operating point starts and the next
  lower score, so that scores of new images near the edge fall on the side they were
  fitted on as often as not. Labels with one class only give `fixed`.
  """
  if rule not in THRESHOLD_RULES:
    raise ValueError(f'threshold rule {rule!r} is not one of {THRESHOLD_RULES}')
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel().astype(bool)
  if rule == 'fixed' or positive.all() or not positive.any() or np.isnan(scores).any():
    return float(fixed)
  fpr, tpr, thresholds = roc_curve(scores, positive)
  # Index 0 is the +inf threshold (nothing positive); candidates are 1..n.
  if rule == 'youden':
    j = tpr[1:] - fpr[1:]
    i = 1 + int(np.argmax(j))  # first maximum = highest threshold, fewest positives
  else:
    i = 1 + int(np.argmax(tpr[1:] >= target_sensitivity - 1e-12))
  upper = thresholds[i]
  lower = thresholds[i + 1] if i + 1 < len(thresholds) else 0.0
  return float((upper + lower) / 2.0)


def predict(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
  """Predicted class per row of probabilities [N, K]: binary at `threshold` on P(class 1)
  (None = 0.5), otherwise the most probable class."""
  probs = np.asarray(probs)
  if probs.shape[-1] == 2:
    return (probs[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.int64)
  return np.argmax(probs, axis=-1)


def confusion_from_predictions(labels: np.ndarray, predictions: np.ndarray,
                               num_classes: int) -> np.ndarray:
  """Host [K, K] counts of (true, predicted) pairs."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
  return confusion


def compute_metrics(confusion: np.ndarray,
                    scores: np.ndarray | None = None,
                    labels: np.ndarray | None = None,
                    class_names: Sequence[str] | None = None,
                    positive_class: int = 1) -> dict[str, float]:
  """Summary metrics of a [K, K] confusion matrix (rows true, columns predicted).

  Always: 'accuracy' and 'num_examples'.
  Binary (K = 2): 'precision', 'recall', 'sensitivity' (= recall), 'specificity' and
    'f1' of `positive_class`, and 'roc_auc' when `scores` (the probability of the
    positive class [N], or class probabilities [N, 2]) and `labels` [N] are given.
  Multi-class: '<metric>/<class name>' for each class and metric (one vs rest), and
    '<metric>' = their unweighted (macro) mean; 'roc_auc' needs scores [N, K]. The
    macro AUC is nan when some class's AUC is.
  All values are Python floats, ready for `MetricWriter.write`.
  """
  confusion = np.asarray(confusion, np.int64)
  num_classes = confusion.shape[0]
  if confusion.ndim != 2 or confusion.shape != (num_classes, num_classes):
    raise ValueError(f'confusion must be square, got shape {confusion.shape}')
  if num_classes < 2:
    raise ValueError('need at least two classes')
  if (scores is None) != (labels is None):
    raise ValueError('pass scores and labels together')

  total = confusion.sum()
  metrics = {
      'accuracy': _ratio(np.trace(confusion), total),
      'num_examples': float(total),
  }
  if scores is not None:
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).ravel()
    if labels.size != total:
      raise ValueError(f'{labels.size} labels but {total} examples in the confusion matrix')

  if num_classes == 2:
    if positive_class not in (0, 1):
      raise ValueError(f'positive_class must be 0 or 1, got {positive_class}')
    metrics.update(_class_stats(confusion, positive_class))
    if scores is not None:
      if scores.ndim == 2:
        scores = scores[:, positive_class]
      metrics['roc_auc'] = roc_auc(scores, labels == positive_class)
    return metrics

  names = [str(k) for k in range(num_classes)] if class_names is None else list(class_names)
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for {num_classes} classes')
  per_class = [_class_stats(confusion, k) for k in range(num_classes)]
  if scores is not None:
    if scores.shape != (labels.size, num_classes):
      raise ValueError(f'multi-class scores must be [N, {num_classes}], got {scores.shape}')
    for k, stats in enumerate(per_class):
      stats['roc_auc'] = roc_auc(scores[:, k], labels == k)
  for metric in per_class[0]:
    # Plain mean, not nanmean: a macro AUC over only some classes would mislead.
    metrics[metric] = float(np.mean([stats[metric] for stats in per_class]))
  for name, stats in zip(names, per_class):
    for metric, value in stats.items():
      metrics[f'{metric}/{name}'] = value
  return metrics


# ---- Intervals over folds / seeds -------------------------------------------------------


class ConfidenceInterval(NamedTuple):
  mean: float
  low: float
  high: float

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2.0

  def format(self, digits: int = 4) -> str:
    """'0.9512 ± 0.0123' ('0.9512' alone when the interval is undefined)."""
    if math.isnan(self.half_width):
      return f'{self.mean:.{digits}f}'
    return f'{self.mean:.{digits}f} ± {self.half_width:.{digits}f}'


def t_quantile(probability: float, df: int) -> float:
  """Quantile of Student's t distribution with `df` degrees of freedom."""
  # scipy is a hard dependency of jax, so always installed; scipy.special is a much
  # lighter import than scipy.stats.
  from scipy import special  # pylint: disable=g-import-not-at-top  # keeps this module cheap
  return float(special.stdtrit(df, probability))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> ConfidenceInterval:
  """Mean and two-sided Student-t interval (sample std, n - 1 dof), e.g. over folds.

  With a single value the bounds are nan.
  """
  values = np.asarray(values, np.float64).ravel()
  if values.size == 0:
    raise ValueError('mean_ci of no values')
  mean = float(values.mean())
  if values.size == 1:
    return ConfidenceInterval(mean, math.nan, math.nan)
  std_error = values.std(ddof=1) / math.sqrt(values.size)
  half_width = t_quantile((1.0 + confidence) / 2.0, values.size - 1) * std_error
  return ConfidenceInterval(mean, mean - half_width, mean + half_width)


def wilson_ci(successes: int, trials: int, confidence: float = 0.95) -> ConfidenceInterval:
  """Proportion and Wilson score interval (sensitivity, specificity, accuracy of one
  run: a binomial count, where the normal interval misbehaves near 0 and 1)."""
  if trials <= 0:
    return ConfidenceInterval(math.nan, math.nan, math.nan)
  z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
  p = successes / trials
  denominator = 1.0 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denominator
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
  return ConfidenceInterval(p, max(0.0, centre - half), min(1.0, centre + half))


def _stratified_resamples(positive: np.ndarray, num_resamples: int, seed: int):
  """Index arrays of a stratified bootstrap: positives and negatives resampled
  separately, so every resample has both; in each, the positives come first."""
  rng = np.random.default_rng(seed)
  pos, neg = np.nonzero(positive)[0], np.nonzero(~positive)[0]
  for _ in range(num_resamples):
    yield np.r_[pos[rng.integers(0, pos.size, pos.size)],
                neg[rng.integers(0, neg.size, neg.size)]]


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
  tail = (1.0 - confidence) / 2.0
  low, high = np.quantile(values, [tail, 1.0 - tail])
  return float(low), float(high)


def auc_ci(scores: np.ndarray, labels: np.ndarray, confidence: float = 0.95,
           num_resamples: int = 2000, seed: int = 0) -> ConfidenceInterval:
  """ROC AUC and a stratified percentile-bootstrap interval (positives and negatives
  resampled separately, so every resample has both)."""
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel().astype(bool)
  auc = roc_auc(scores, positive)
  if math.isnan(auc):
    return ConfidenceInterval(math.nan, math.nan, math.nan)
  resampled_labels = np.sort(positive)[::-1]  # positives first, as in each resample
  values = np.array([roc_auc(scores[i], resampled_labels)
                     for i in _stratified_resamples(positive, num_resamples, seed)])
  return ConfidenceInterval(auc, *_percentiles(values, confidence))


def auc_difference_ci(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray,
                      confidence: float = 0.95, num_resamples: int = 2000,
                      seed: int = 0) -> ConfidenceInterval:
  """ROC AUC of model a minus that of model b on the same images, with a paired
  stratified bootstrap interval (both scored on each resample of the images). Narrower
  than two unpaired intervals side by side: how hard an image is counts for both."""
  scores_a = np.asarray(scores_a, np.float64).ravel()
  scores_b = np.asarray(scores_b, np.float64).ravel()
  positive = np.asarray(labels).ravel().astype(bool)
  if scores_a.shape != scores_b.shape:
    raise ValueError(f'{scores_a.size} and {scores_b.size} scores: not the same images')
  difference = roc_auc(scores_a, positive) - roc_auc(scores_b, positive)
  if math.isnan(difference):
    return ConfidenceInterval(math.nan, math.nan, math.nan)
  resampled_labels = np.sort(positive)[::-1]
  values = np.array([roc_auc(scores_a[i], resampled_labels)
                     - roc_auc(scores_b[i], resampled_labels)
                     for i in _stratified_resamples(positive, num_resamples, seed)])
  return ConfidenceInterval(difference, *_percentiles(values, confidence))


def binary_intervals(confusion: np.ndarray, scores: np.ndarray | None = None,
                     labels: np.ndarray | None = None,
                     confidence: float = 0.95) -> dict[str, ConfidenceInterval]:
  """95% intervals of one binary evaluation: Wilson for accuracy, sensitivity and
  specificity (from the confusion matrix), stratified bootstrap for ROC AUC."""
  confusion = np.asarray(confusion, np.int64)
  (tn, fp), (fn, tp) = confusion
  out = {'accuracy': wilson_ci(tn + tp, confusion.sum(), confidence),
         'sensitivity': wilson_ci(tp, tp + fn, confidence),
         'specificity': wilson_ci(tn, tn + fp, confidence)}
  if scores is not None:
    out['roc_auc'] = auc_ci(scores, labels, confidence)
  return out


def refit_threshold(scores: np.ndarray, labels: np.ndarray, per_class: int, rule: str, *,
                    target_sensitivity: float = 0.9, repeats: int = 20, seed: int = 0,
                    confidence: float = 0.95) -> dict:
  """What a site gets by refitting a binary model's threshold on a few of its own images.

  `repeats` times: draw `per_class` labelled images of each class at random (the
  calibration sample), fit the threshold on their scores with `rule` ('youden' or
  'sensitivity', as `choose_threshold`), and measure sensitivity, specificity and
  accuracy on all the OTHER images. Returns, per metric, the mean over the repeats and
  the central `confidence` range of the repeats (the spread due to which images were
  labelled, not a confidence interval of the mean), and the same for the threshold.

  Raises ValueError if a class has no image left to evaluate after the sample.
  """
  if rule not in ('youden', 'sensitivity'):
    raise ValueError(f'refit rule {rule!r}: one of youden, sensitivity (a fixed threshold '
                     'is not fitted).')
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel().astype(bool)
  by_class = [np.nonzero(~positive)[0], np.nonzero(positive)[0]]
  if per_class < 1 or min(len(i) for i in by_class) <= per_class:
    raise ValueError(f'refitting the threshold on {per_class} images per class needs more '
                     f'than that in each class; there are {len(by_class[0])} negative and '
                     f'{len(by_class[1])} positive images.')
  rng = np.random.default_rng(seed)
  draws = {k: [] for k in ('threshold', 'sensitivity', 'specificity', 'accuracy')}
  for _ in range(repeats):
    sample = np.concatenate([rng.choice(i, per_class, replace=False) for i in by_class])
    rest = np.ones(len(scores), bool)
    rest[sample] = False
    threshold = choose_threshold(scores[sample], positive[sample], rule,
                                 target_sensitivity=target_sensitivity)
    called = scores[rest] >= threshold
    truth = positive[rest]
    draws['threshold'].append(threshold)
    draws['sensitivity'].append(called[truth].mean())
    draws['specificity'].append((~called[~truth]).mean())
    draws['accuracy'].append((called == truth).mean())
  tail = (1.0 - confidence) / 2.0
  summary = {}
  for key, values in draws.items():
    low, high = np.quantile(values, [tail, 1.0 - tail])
    summary[key] = {'mean': float(np.mean(values)), 'low': float(low), 'high': float(high)}
  summary.update(per_class=int(per_class), rule=rule, repeats=int(repeats),
                 num_evaluated=int(len(scores) - 2 * per_class))
  return summary


def rates_at(scores: np.ndarray, labels: np.ndarray,
             threshold: float) -> dict[str, float | None]:
  """{'sensitivity', 'specificity'} of calling scores >= `threshold` positive; None for a
  class with no image."""
  called = np.asarray(scores).ravel() >= threshold
  positive = np.asarray(labels).ravel().astype(bool)
  return {'sensitivity': float(called[positive].mean()) if positive.any() else None,
          'specificity': float((~called[~positive]).mean()) if (~positive).any() else None}


def mixture_threshold(scores: np.ndarray, iterations: int = 500) -> dict:
  """A decision threshold from unlabelled scores: where two Gaussians fitted to them cross.

  For a site whose images carry no labels: a model that ranks them well but is
  miscalibrated there (its saved threshold fitted on another source) still tends to
  give two clusters of logits, one per class. A two-component Gaussian mixture is fitted
  to log(p / (1 - p)) by EM (start: the quartiles, the overall spread, equal weights);
  the threshold is the first logit between the two means where the upper component's
  posterior reaches 1/2, back on the probability scale. Returns {'threshold',
  'positive_share' (the upper component's weight: an estimate of the share of positive
  images), 'means', 'stds' (logits, lower component first), 'separation' (Ashman's D,
  sqrt(2) |mean difference| / sqrt(std_0^2 + std_1^2): above about 2 the two clusters
  are distinct; below it the fit splits one cluster as readily as two)}. It assumes
  both classes are present in numbers and that the ranking separates them;
  docs/results.md measures where it holds.

  Raises ValueError for fewer than 10 scores or scores that are all equal.
  """
  p = np.clip(np.asarray(scores, np.float64).ravel(), 1e-7, 1 - 1e-7)
  z = np.log(p / (1 - p))
  if z.size < 10 or np.ptp(z) == 0:
    raise ValueError(f'a mixture threshold needs at least 10 distinct scores; got {z.size} '
                     f'with spread {z.std():.3g}.')
  mean, std = np.quantile(z, [0.25, 0.75]), np.full(2, z.std())
  weight = np.full(2, 0.5)
  for _ in range(iterations):
    density = weight * np.exp(-0.5 * ((z[:, None] - mean) / std) ** 2) / std
    resp = density / np.maximum(density.sum(1, keepdims=True), 1e-300)
    weight = resp.mean(0)
    new_mean = (resp * z[:, None]).sum(0) / np.maximum(resp.sum(0), 1e-12)
    std = np.sqrt((resp * (z[:, None] - new_mean) ** 2).sum(0)
                  / np.maximum(resp.sum(0), 1e-12)) + 1e-3 * z.std()
    converged = np.abs(new_mean - mean).max() < 1e-8
    mean = new_mean
    if converged:
      break
  order = np.argsort(mean)
  mean, std, weight = mean[order], std[order], weight[order]
  grid = np.linspace(mean[0], mean[1], 2001)
  density = weight * np.exp(-0.5 * ((grid[:, None] - mean) / std) ** 2) / std
  upper = density[:, 1] >= density[:, 0]
  crossing = grid[np.argmax(upper)] if upper.any() else (mean[0] + mean[1]) / 2
  return {'threshold': float(1 / (1 + np.exp(-crossing))),
          'positive_share': float(weight[1]),
          'means': mean.tolist(), 'stds': std.tolist(),
          'separation': float(np.sqrt(2) * (mean[1] - mean[0]) / np.hypot(std[0], std[1]))}


def by_subgroup(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                group_names: Sequence[str], threshold: float,
                confidence: float = 0.95) -> list[dict]:
  """A binary evaluation broken down by subgroups of the test images.

  The use: a test set whose own classes were merged into the model's two (glioma,
  meningioma and pituitary all count as tumor) hides which kinds of image the model
  finds. Per group (`groups[i]` indexes `group_names`; empty groups are left out):
  `num_images`; `positive` (its images' label, or None if it holds both);
  `called_correctly`: the share decided right at `threshold` (a tumor group's
  sensitivity, a no-tumor group's specificity) with a Wilson interval; `roc_auc`: the
  group's images ranked against every image of the other label (a tumor type against
  all no-tumor images), with a stratified bootstrap interval; None where the other
  label has no image or the group holds both.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel().astype(bool)
  groups = np.asarray(groups).ravel()
  out = []
  for g, name in enumerate(group_names):
    members = groups == g
    n = int(members.sum())
    if not n:
      continue
    label = bool(positive[members][0]) if len(set(positive[members])) == 1 else None
    row = {'group': str(name), 'num_images': n, 'positive': label}
    if label is not None:
      called = scores[members] >= threshold
      correct = int((called == label).sum())
      row['called_correctly'] = list(wilson_ci(correct, n, confidence))
      others = positive != label
      if others.any():
        pick = members | others
        row['roc_auc'] = list(auc_ci(scores[pick], positive[pick], confidence))
    out.append(row)
  return out


# ---- Tables -----------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A Markdown pipe table padded to align in a console; numbers right-aligned."""
  cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  numeric = [bool(rows) and all(_looks_numeric(row[i]) for row in cells[1:])
             for i in range(len(header))]

  def line(row):
    padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric))
    return '| ' + ' | '.join(padded) + ' |'

  rule = '|' + '|'.join(('-' * (w + 1) + ':') if num else ('-' * (w + 2))
                        for w, num in zip(widths, numeric)) + '|'
  return '\n'.join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def _looks_numeric(text: str) -> bool:
  try:
    float(text.split(' ± ')[0])  # also a `ConfidenceInterval.format` cell
    return True
  except ValueError:
    return False


def format_table(metrics: Mapping[str, float],
                 confusion: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None,
                 digits: int = 4) -> str:
  """Markdown tables of `compute_metrics` output: summary, per class, confusion matrix.

  The per-class table is built from '<metric>/<class>' keys; the confusion matrix is
  shown when given, labelled with `class_names` (default: 0..K-1).
  """

  def fmt(value):
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)

  summary = [(key, fmt(int(value) if key == 'num_examples' else value))
             for key, value in metrics.items() if '/' not in key]
  sections = [markdown_table(('metric', 'value'), summary)]

  per_class: dict[str, dict[str, float]] = {}
  for key, value in metrics.items():
    metric, slash, name = key.partition('/')
    if slash:
      per_class.setdefault(name, {})[metric] = value
  if per_class:
    columns = [m for m in _PER_CLASS if any(m in row for row in per_class.values())]
    rows = [[name] + [fmt(row.get(m, math.nan)) for m in columns]
            for name, row in per_class.items()]
    rows.append(['macro'] + [fmt(metrics.get(m, math.nan)) for m in columns])
    sections.append(markdown_table(['class'] + columns, rows))

  if confusion is not None:
    confusion = np.asarray(confusion)
    names = (list(class_names) if class_names is not None else
             [str(k) for k in range(confusion.shape[0])])
    rows = [[name] + [int(c) for c in row] for name, row in zip(names, confusion)]
    sections.append(markdown_table(['true \\ predicted'] + names, rows))
  return '\n\n'.join(sections)
