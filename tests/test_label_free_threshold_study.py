"""scripts/label_free_threshold_study.py: batches drawn from a cell's predictions.csv."""

import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import label_free_threshold_study as study_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
sys.path.pop(0)


def _cell(n_neg=300, n_pos=200, shift=-4.0, seed=0):
  """Two well separated clusters of logits, both shifted far below 0 (a new site)."""
  rng = np.random.default_rng(seed)
  logits = np.r_[rng.normal(-2 + shift, 1, n_neg), rng.normal(2 + shift, 1, n_pos)]
  return 1 / (1 + np.exp(-logits)), np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]


def test_batches_have_the_asked_size_and_share_and_are_scored_on_the_whole_set():
  scores, labels = _cell()
  rows = study_lib.study(scores, labels, sizes=[50, 1000], shares=[0.1, 0.5], draws=40)
  # N = 1000 needs more images than the set has: left out; the whole set comes last.
  assert [(r['n'], r['share']) for r in rows] == [(50, 0.1), (50, 0.5), (500, 0.4)]
  big, whole = rows[1], rows[2]
  assert big['draws'] == 40 and len(big['sensitivity']) + big['refused'] == 40
  # Half tumors in 50: the fitted share is near 0.5, and the threshold (scored on all
  # 500) keeps both rates high although 0.5 would call nothing a tumor.
  assert np.median(big['estimated_share']) == pytest.approx(0.5, abs=0.05)
  assert np.median(big['sensitivity']) > 0.95 and np.median(big['specificity']) > 0.95
  assert whole['draws'] == 1 and whole['estimated_share'][0] == pytest.approx(0.4, abs=0.03)
  # 5 tumors in 50 are harder to find as a cluster than 25: a wider spread.
  low = rows[0]
  assert np.percentile(low['sensitivity'], 5) < np.percentile(big['sensitivity'], 5)
  # One draw is a random batch too, not the whole set.
  one = study_lib.study(*_cell(n_neg=400, n_pos=100), sizes=[50], shares=[0.5], draws=1)[0]
  assert one['draws'] == 1 and one['n'] == 50
  assert one['estimated_share'][0] == pytest.approx(0.5, abs=0.1)  # the set's is 0.2
  table = study_lib.format_study(rows)
  assert table.splitlines()[0].startswith('|   N | tumor share | draws |')
  assert len(table.splitlines()) == 2 + 3


def write_predictions(path, scores, labels):
  """A binary predictions.csv as evaluate_external writes it (also tests/test_common_threshold)."""
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['filename', 'their_class', 'true', 'predicted', 'p_no_tumor', 'p_tumor'])
    for i, (p, y) in enumerate(zip(scores, labels)):
      name = ['no_tumor', 'tumor'][y]
      w.writerow([f'{i}.jpg', name, name, 'no_tumor', 1 - p, p])


def test_command_line_reads_a_predictions_csv(tmp_path):
  scores, labels = _cell(n_neg=60, n_pos=40)
  path = tmp_path / 'predictions.csv'
  write_predictions(path, scores, labels)
  got = study_lib.read_predictions(str(path))
  np.testing.assert_allclose(got[0], scores, rtol=1e-6)
  assert got[1].tolist() == labels.tolist() and got[2] == 'tumor'
  proc = subprocess.run(
      [sys.executable, 'scripts/label_free_threshold_study.py', str(path), '--sizes=20',
       '--shares=0.5', '--draws=10'], cwd=ROOT, capture_output=True, text=True, check=True)
  assert '100 images, 40 tumor; ROC AUC 0.999' in proc.stdout
  assert '|  20 |       0.500 |    10 |' in proc.stdout
  bad = tmp_path / 'four.csv'
  bad.write_text('filename,true,p_a,p_b,p_c\nx,a,0.2,0.3,0.5\n', encoding='utf-8')
  with pytest.raises(ValueError, match='two p_<class> columns'):
    study_lib.read_predictions(str(bad))
