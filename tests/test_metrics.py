"""Tests for spp_resnet.evaluation.metrics against hand-computed values."""

import math

import numpy as np
import pytest

from spp_resnet.evaluation import metrics as M

# Binary, positive class 1: TP=40 FN=10 FP=5 TN=45 (rows true, columns predicted).
BINARY = np.array([[45, 5],
                   [10, 40]])

# Three classes, 16 examples, 12 correct.
THREE_CLASS = np.array([[5, 1, 0],
                        [2, 3, 1],
                        [0, 0, 4]])


def _numpy_confusion(labels, predictions, mask, num_classes):
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels[mask], predictions[mask]), 1)
  return confusion


def _pairwise_auc(scores, positive):
  """AUC by its definition: P(positive score > negative score) + P(tie) / 2."""
  pos, neg = scores[positive][:, None], scores[~positive][None, :]
  return ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)


# ---- Predictions, confusion matrix and decision threshold --------------------------------


def test_confusion_from_predictions_matches_definition():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 64)
  predictions = rng.integers(0, 4, 64)
  got = M.confusion_from_predictions(labels, predictions, 4)
  np.testing.assert_array_equal(got, _numpy_confusion(labels, predictions,
                                                      np.ones(64, bool), 4))
  np.testing.assert_array_equal(M.confusion_from_predictions([0, 0, 1, 1], [0, 1, 1, 1], 2),
                                [[1, 1], [0, 2]])


def test_predict_binary_at_threshold_and_multiclass_argmax():
  p1 = np.array([0.1, 0.3, 0.5, 0.7])
  probs = np.stack([1 - p1, p1], axis=-1)
  np.testing.assert_array_equal(M.predict(probs), [0, 0, 1, 1])
  np.testing.assert_array_equal(M.predict(probs, 0.25), [0, 1, 1, 1])
  np.testing.assert_array_equal(M.predict(np.eye(3)[[2, 0, 1]]), [2, 0, 1])


def test_choose_threshold_youden_separates_and_sits_between_scores():
  # Negatives 0.1..0.4, positives 0.35..0.9: J is maximal cutting between 0.4 and 0.45.
  neg = np.array([0.1, 0.2, 0.3, 0.4])
  pos = np.array([0.35, 0.45, 0.6, 0.9])
  scores, labels = np.r_[neg, pos], np.r_[np.zeros(4), np.ones(4)]
  t = M.choose_threshold(scores, labels, 'youden')
  assert t == pytest.approx((0.45 + 0.4) / 2)
  pred = scores >= t
  assert pred[labels == 1].mean() == 0.75 and (~pred[labels == 0]).mean() == 1.0
  assert M.choose_threshold(scores, labels, 'fixed', fixed=0.3) == 0.3


def test_choose_threshold_target_sensitivity_is_highest_reaching_it():
  neg = np.array([0.1, 0.2, 0.3, 0.4])
  pos = np.array([0.35, 0.45, 0.6, 0.9])
  scores, labels = np.r_[neg, pos], np.r_[np.zeros(4), np.ones(4)]
  t = M.choose_threshold(scores, labels, 'sensitivity', target_sensitivity=1.0)
  assert t == pytest.approx((0.35 + 0.3) / 2)  # must take 0.35 in, and 0.4 with it
  assert (scores[labels == 1] >= t).all()
  t = M.choose_threshold(scores, labels, 'sensitivity', target_sensitivity=0.5)
  assert (scores[labels == 1] >= t).mean() == 0.5 and t > 0.45


def test_choose_threshold_single_class_falls_back_to_fixed():
  assert M.choose_threshold([0.2, 0.9], [1, 1], 'youden') == 0.5
  with pytest.raises(ValueError, match='threshold rule'):
    M.choose_threshold([0.2, 0.9], [0, 1], 'best')


def test_refit_threshold_on_a_few_images_of_a_shifted_site():
  # A model that ranks perfectly, but whose scores at this site all sit below a threshold
  # fitted elsewhere (0.9): refitted on 3 images per class, it separates the other images.
  rng = np.random.default_rng(0)
  neg, pos = rng.uniform(0.0, 0.1, 40), rng.uniform(0.6, 0.7, 20)
  scores, labels = np.r_[neg, pos], np.r_[np.zeros(40), np.ones(20)]
  refit = M.refit_threshold(scores, labels, 3, 'youden', repeats=25, seed=1)
  assert refit['per_class'] == 3 and refit['repeats'] == 25 and refit['num_evaluated'] == 54
  assert 0.1 < refit['threshold']['low'] < refit['threshold']['high'] < 0.6
  for key in ('sensitivity', 'specificity', 'accuracy'):
    assert refit[key] == {'mean': 1.0, 'low': 1.0, 'high': 1.0}
  # Overlapping classes: the draws disagree, and the range says so.
  overlapping = rng.random(60)
  noisy = M.refit_threshold(overlapping, labels, 3, 'sensitivity', repeats=25)
  assert noisy['sensitivity']['low'] < noisy['sensitivity']['mean'] < 1.0
  assert noisy['threshold']['low'] < noisy['threshold']['high']
  assert noisy == M.refit_threshold(overlapping, labels, 3, 'sensitivity', repeats=25)
  for bad, match in (((3, 'fixed'), 'refit rule'), ((20, 'youden'), 'more than that')):
    with pytest.raises(ValueError, match=match):
      M.refit_threshold(scores, labels, bad[0], bad[1])


# ---- Host metrics -----------------------------------------------------------------------


def test_binary_metrics_hand_computed():
  m = M.compute_metrics(BINARY)
  assert m['accuracy'] == pytest.approx(0.85)
  assert m['num_examples'] == 100
  assert m['precision'] == pytest.approx(40 / 45)
  assert m['recall'] == m['sensitivity'] == pytest.approx(0.8)
  assert m['specificity'] == pytest.approx(0.9)
  assert m['f1'] == pytest.approx(2 * (40 / 45) * 0.8 / (40 / 45 + 0.8))
  assert m['f1'] == pytest.approx(80 / 95)
  assert 'roc_auc' not in m
  assert all(isinstance(v, float) for v in m.values())


def test_binary_positive_class_zero_swaps_roles():
  m = M.compute_metrics(BINARY, positive_class=0)  # TP=45 FN=5 FP=10 TN=40
  assert m['accuracy'] == pytest.approx(0.85)
  assert m['precision'] == pytest.approx(45 / 55)
  assert m['recall'] == pytest.approx(0.9)
  assert m['specificity'] == pytest.approx(0.8)
  assert m['f1'] == pytest.approx(90 / 105)


def test_three_class_hand_computed():
  m = M.compute_metrics(THREE_CLASS, class_names=['glioma', 'meningioma', 'pituitary'])
  assert m['accuracy'] == pytest.approx(12 / 16)
  # One vs rest: (TP, FN, FP, TN) = (5, 1, 2, 8), (3, 3, 1, 9), (4, 0, 1, 11).
  expected = {
      'glioma': dict(precision=5 / 7, recall=5 / 6, specificity=8 / 10, f1=10 / 13),
      'meningioma': dict(precision=3 / 4, recall=3 / 6, specificity=9 / 10, f1=6 / 10),
      'pituitary': dict(precision=4 / 5, recall=4 / 4, specificity=11 / 12, f1=8 / 9),
  }
  for name, values in expected.items():
    for metric, value in values.items():
      assert m[f'{metric}/{name}'] == pytest.approx(value), (metric, name)
    assert m[f'sensitivity/{name}'] == m[f'recall/{name}']
  for metric in ('precision', 'recall', 'specificity', 'f1'):
    macro = sum(v[metric] for v in expected.values()) / 3
    assert m[metric] == pytest.approx(macro), metric
  assert m['sensitivity'] == m['recall']


def test_default_class_names_are_indices():
  m = M.compute_metrics(THREE_CLASS)
  assert m['precision/0'] == pytest.approx(5 / 7)
  assert 'precision/2' in m


@pytest.mark.parametrize('num_classes', [2, 4])
def test_perfect_classifier(num_classes):
  m = M.compute_metrics(np.diag(np.arange(1, num_classes + 1)))
  for metric in ('accuracy', 'precision', 'recall', 'specificity', 'f1'):
    assert m[metric] == 1.0, metric


def test_all_wrong_classifier():
  m = M.compute_metrics(np.array([[0, 5], [7, 0]]))
  for metric in ('accuracy', 'precision', 'recall', 'specificity', 'f1'):
    assert m[metric] == 0.0, metric
  m = M.compute_metrics(np.array([[0, 2, 0], [0, 0, 3], [4, 0, 0]]))
  for metric in ('accuracy', 'precision', 'recall', 'f1'):
    assert m[metric] == 0.0, metric
  # One vs rest, rejecting a class it should not is still a true negative:
  # (TN, FP) = (3, 4), (4, 2), (2, 3).
  assert m['specificity'] == pytest.approx((3 / 7 + 4 / 6 + 2 / 5) / 3)


def test_zero_denominators_give_zero():
  # Never predicts the positive class: precision is 0/0.
  m = M.compute_metrics(np.array([[10, 0], [5, 0]]))
  assert (m['precision'], m['recall'], m['f1'], m['specificity']) == (0.0, 0.0, 0.0, 1.0)
  # No positives at all, none predicted: precision, recall and F1 are all 0/0.
  m = M.compute_metrics(np.array([[10, 0], [0, 0]]))
  assert (m['accuracy'], m['precision'], m['recall'], m['f1']) == (1.0, 0.0, 0.0, 0.0)
  # A class absent and never predicted drags the macro average down (as in sklearn).
  m = M.compute_metrics(np.array([[3, 0, 0], [0, 3, 0], [0, 0, 0]]))
  assert m['recall/2'] == 0.0 and m['recall'] == pytest.approx(2 / 3)
  # No examples.
  m = M.compute_metrics(np.zeros((2, 2), int))
  assert m['accuracy'] == 0.0 and m['num_examples'] == 0.0


def test_invalid_inputs():
  with pytest.raises(ValueError):
    M.compute_metrics(np.zeros((2, 3)))
  with pytest.raises(ValueError):
    M.compute_metrics(THREE_CLASS, class_names=['a', 'b'])
  with pytest.raises(ValueError):
    M.compute_metrics(BINARY, scores=np.zeros(100))  # labels missing
  with pytest.raises(ValueError):
    M.compute_metrics(BINARY, scores=np.zeros(3), labels=np.zeros(3))  # != 100 examples


# ---- ROC --------------------------------------------------------------------------------


def test_roc_auc_hand_computed_with_ties():
  # Positives {0.5, 0.5}, negatives {0.5, 0.1}: each positive ties one negative (1/2)
  # and beats the other (1), so AUC = (1.5 + 1.5) / 4.
  assert M.roc_auc([0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.75)
  # Positives {0.8, 0.4}, negatives {0.4, 0.2}: (1 + 1 + 0.5 + 1) / 4.
  assert M.roc_auc([0.8, 0.4, 0.4, 0.2], [1, 1, 0, 0]) == pytest.approx(0.875)
  assert M.roc_auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
  assert M.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
  assert M.roc_auc([0.3] * 4, [0, 1, 0, 1]) == 0.5


def test_roc_auc_equals_pairwise_definition():
  rng = np.random.default_rng(2)
  for _ in range(5):
    scores = np.round(rng.random(300), 1)  # coarse values: many ties
    positive = rng.random(300) < 0.4
    assert M.roc_auc(scores, positive) == pytest.approx(_pairwise_auc(scores, positive))


def test_roc_auc_undefined_is_nan():
  assert math.isnan(M.roc_auc([0.1, 0.9], [1, 1]))
  assert math.isnan(M.roc_auc([0.1, 0.9], [0, 0]))
  assert math.isnan(M.roc_auc([0.1, np.nan], [0, 1]))


def test_roc_curve_hand_computed():
  fpr, tpr, thresholds = M.roc_curve([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0])
  np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
  np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
  np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.1])


def test_roc_curve_area_equals_auc():
  rng = np.random.default_rng(3)
  scores = np.round(rng.random(200), 2)
  positive = rng.random(200) < 0.5
  fpr, tpr, _ = M.roc_curve(scores, positive)
  assert fpr[-1] == tpr[-1] == 1.0
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
  assert area == pytest.approx(M.roc_auc(scores, positive))
  with pytest.raises(ValueError):
    M.roc_curve([0.1, 0.2], [1, 1])


def test_binary_auc_from_probabilities_or_positive_scores():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 2, 50)
  p1 = np.clip(0.3 * labels + 0.7 * rng.random(50), 0, 1)
  probs = np.stack([1 - p1, p1], axis=1)
  confusion = _numpy_confusion(labels, (p1 > 0.5).astype(int), np.ones(50, bool), 2)
  expected = _pairwise_auc(p1, labels == 1)
  assert M.compute_metrics(confusion, p1, labels)['roc_auc'] == pytest.approx(expected)
  assert M.compute_metrics(confusion, probs, labels)['roc_auc'] == pytest.approx(expected)
  # With class 0 as positive the scores are 1 - p1: the same ranking, reversed.
  m0 = M.compute_metrics(confusion, probs, labels, positive_class=0)
  assert m0['roc_auc'] == pytest.approx(expected)


def test_multiclass_one_vs_rest_auc():
  rng = np.random.default_rng(5)
  labels = np.arange(60) % 3
  logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  confusion = _numpy_confusion(labels, probs.argmax(1), np.ones(60, bool), 3)
  m = M.compute_metrics(confusion, probs, labels, class_names=['a', 'b', 'c'])
  per_class = [_pairwise_auc(probs[:, k], labels == k) for k in range(3)]
  for name, auc in zip('abc', per_class):
    assert m[f'roc_auc/{name}'] == pytest.approx(auc)
  assert m['roc_auc'] == pytest.approx(np.mean(per_class))
  with pytest.raises(ValueError):
    M.compute_metrics(confusion, probs[:, 0], labels)


# ---- Intervals --------------------------------------------------------------------------


@pytest.mark.parametrize('probability, df, expected', [
    (0.975, 1, 12.7062), (0.975, 4, 2.7764), (0.975, 9, 2.2622),
    (0.975, 29, 2.0452), (0.95, 10, 1.8125), (0.995, 5, 4.0321),
])
def test_t_quantile_table_values(probability, df, expected):
  assert M.t_quantile(probability, df) == pytest.approx(expected, abs=1e-4)


def test_mean_ci():
  ci = M.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
  # std = sqrt(2.5), standard error = sqrt(2.5 / 5), t(0.975, 4) = 2.776445.
  half = 2.776445 * math.sqrt(0.5)
  assert ci.mean == 3.0
  assert (ci.low, ci.high) == (pytest.approx(3 - half), pytest.approx(3 + half))
  assert ci.half_width == pytest.approx(half)
  assert ci.format(2) == '3.00 ± 1.96'
  single = M.mean_ci([0.9])
  assert single.mean == 0.9 and math.isnan(single.low) and single.format(2) == '0.90'
  assert M.mean_ci([0.5, 0.5, 0.5]).half_width == 0.0


# ---- Tables -----------------------------------------------------------------------------


def _check_aligned(table):
  lines = table.splitlines()
  assert len({len(line) for line in lines}) == 1, table
  assert set(lines[1]) <= set('|-:')


def test_format_table_binary():
  text = M.format_table(M.compute_metrics(BINARY), confusion=BINARY,
                        class_names=['no tumor', 'tumor'])
  summary, confusion = text.split('\n\n')
  _check_aligned(summary)
  _check_aligned(confusion)
  assert '| accuracy     | 0.8500 |' in summary
  assert '| num_examples |    100 |' in summary
  assert 'true \\ predicted | no tumor | tumor' in confusion
  assert '| tumor            |       10 |    40 |' in confusion


def test_format_table_multiclass():
  names = ['glioma', 'meningioma', 'pituitary']
  text = M.format_table(M.compute_metrics(THREE_CLASS, class_names=names), digits=3)
  summary, per_class = text.split('\n\n')
  _check_aligned(summary)
  _check_aligned(per_class)
  assert 'glioma' not in summary
  header = per_class.splitlines()[0]
  assert [cell.strip() for cell in header.split('|')[1:-1]] == [
      'class', 'precision', 'recall', 'sensitivity', 'specificity', 'f1']
  assert per_class.splitlines()[-1].startswith('| macro ')
  assert '0.714' in per_class  # precision of glioma, 5 / 7


def test_markdown_table_with_intervals():
  ci = M.mean_ci([0.9, 0.92, 0.94])
  table = M.markdown_table(['model', 'accuracy'], [['spp', ci.format()], ['gap', 0.9]])
  _check_aligned(table)
  assert table.splitlines()[1].endswith(':|')  # numeric column right-aligned


def test_wilson_interval_known_values():
  # 8 of 10: Wilson 95% = [0.4902, 0.9433] (standard tables).
  ci = M.wilson_ci(8, 10)
  assert ci.mean == 0.8
  assert (ci.low, ci.high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
  ci = M.wilson_ci(10, 10)
  assert ci.high == 1.0 and ci.low == pytest.approx(0.7225, abs=1e-4)
  assert math.isnan(M.wilson_ci(0, 0).mean)


def test_binary_intervals_contain_the_estimates():
  rng = np.random.default_rng(0)
  labels = rng.random(200) < 0.4
  scores = np.where(labels, rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200))
  confusion = M.confusion_from_predictions(labels, scores >= 0.5, 2)
  got = M.binary_intervals(confusion, scores, labels)
  m = M.compute_metrics(confusion, scores=scores, labels=labels)
  for key in ('accuracy', 'sensitivity', 'specificity', 'roc_auc'):
    assert got[key].mean == pytest.approx(m[key])
    assert got[key].low < m[key] < got[key].high
  assert 0.05 < got['roc_auc'].high - got['roc_auc'].low < 0.25


def test_paired_auc_difference():
  rng = np.random.default_rng(0)
  labels = rng.random(300) < 0.4
  difficulty = rng.normal(size=300)  # shared by both models: what pairing cancels
  a = labels * 1.0 + difficulty + 0.5 * rng.normal(size=300)
  b = labels * 0.7 + difficulty + 0.5 * rng.normal(size=300)
  ci = M.auc_difference_ci(a, b, labels)
  assert ci.mean == pytest.approx(M.roc_auc(a, labels) - M.roc_auc(b, labels))
  assert ci.low < ci.mean < ci.high
  # Narrower than the two unpaired intervals side by side would suggest.
  unpaired = [M.auc_ci(s, labels) for s in (a, b)]
  assert ci.high - ci.low < sum(u.high - u.low for u in unpaired) / 2
  same = M.auc_difference_ci(a, a, labels)
  assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
  with pytest.raises(ValueError, match='same images'):
    M.auc_difference_ci(a, b[:-1], labels)


def test_by_subgroup_on_a_hand_worked_example():
  # A tumor model on a test set with its own classes: 0 no, 1 glioma, 2 pituitary,
  # 3 meningioma (no image: left out).
  scores = np.array([0.1, 0.2, 0.6,    # no: one false alarm at 0.5
                     0.9, 0.7, 0.55,   # glioma: all found
                     0.4, 0.15, 0.3])  # pituitary: none found
  groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
  labels = groups > 0
  rows = M.by_subgroup(scores, labels, groups, ['no', 'glioma', 'pituitary', 'meningioma'],
                       threshold=0.5)
  assert [r['group'] for r in rows] == ['no', 'glioma', 'pituitary']
  no, glioma, pituitary = rows
  assert (no['positive'], glioma['positive']) == (False, True)
  assert [r['num_images'] for r in rows] == [3, 3, 3]
  # Decided right at 0.5: 2 of 3 no (specificity), 3 of 3 glioma, 0 of 3 pituitary.
  assert no['called_correctly'][0] == pytest.approx(2 / 3)
  assert glioma['called_correctly'][0] == 1.0 and pituitary['called_correctly'][0] == 0.0
  assert glioma['called_correctly'][1:] == list(M.wilson_ci(3, 3))[1:]
  # Each tumor type ranked against the three no-tumor images: glioma 8 of 9 pairs
  # (0.55 below the false alarm at 0.6); pituitary 0.4 > 0.1, 0.2; 0.15 > 0.1; 0.3 > 0.1, 0.2: 5 of 9.
  assert glioma['roc_auc'][0] == pytest.approx(8 / 9)
  assert pituitary['roc_auc'][0] == pytest.approx(5 / 9)
  assert pituitary['roc_auc'][1] <= 5 / 9 <= pituitary['roc_auc'][2]
  # The no-tumor group against all six tumors: tumors above 0.1, 0.2, 0.6: 6 + 5 + 2.
  assert no['roc_auc'][0] == pytest.approx(13 / 18)
  # A one-label test set has no ROC AUC; a mixed group no label.
  only_tumors = M.by_subgroup(scores[3:], labels[3:], groups[3:] - 1, ['g', 'p'], 0.5)
  assert all('roc_auc' not in r for r in only_tumors)
  mixed = M.by_subgroup(scores, labels, np.zeros(9, int), ['all'], 0.5)
  assert mixed == [{'group': 'all', 'num_images': 9, 'positive': None}]


def test_mixture_threshold_finds_two_clusters_without_labels():
  # A model miscalibrated at a new site: both clusters of logits shifted far below 0, 30%
  # positives. The crossing of the fitted Gaussians separates them; 0.5 would not.
  rng = np.random.default_rng(0)
  labels = rng.random(400) < 0.3
  logits = np.where(labels, rng.normal(-1.0, 0.5, 400), rng.normal(-5.0, 0.5, 400))
  scores = 1 / (1 + np.exp(-logits))
  fit = M.mixture_threshold(scores)
  assert fit['positive_share'] == pytest.approx(labels.mean(), abs=0.02)
  assert fit['means'] == [pytest.approx(-5.0, abs=0.15), pytest.approx(-1.0, abs=0.15)]
  called = scores >= fit['threshold']
  assert called[labels].mean() > 0.98 and (~called[~labels]).mean() > 0.98
  assert (scores[labels] >= 0.5).mean() < 0.05  # a fixed 0.5 finds almost none
  # Equal spreads and weights: the crossing sits half way (logit -3).
  assert np.log(fit['threshold'] / (1 - fit['threshold'])) == pytest.approx(-3.0, abs=0.3)
  # Ashman's D of the two clusters: sqrt(2) * 4 / sqrt(0.5 ** 2 * 2) = 8; one cluster
  # split in two by the fit: well below 2.
  assert fit['separation'] == pytest.approx(8.0, rel=0.1)
  one = M.mixture_threshold(1 / (1 + np.exp(-rng.normal(0.0, 1.0, 400))))
  assert one['separation'] < 2.0
  with pytest.raises(ValueError, match='at least 10'):
    M.mixture_threshold(scores[:9])
  with pytest.raises(ValueError, match='at least 10'):
    M.mixture_threshold(np.full(50, 0.3))


def test_rates_at_a_threshold():
  scores, labels = np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0])
  assert M.rates_at(scores, labels, 0.5) == {'sensitivity': 0.5, 'specificity': 0.5}
  assert M.rates_at(scores, labels, 0.05) == {'sensitivity': 1.0, 'specificity': 0.0}
  assert M.rates_at(scores[:2], labels[:2], 0.5) == {'sensitivity': 0.5, 'specificity': None}
