"""scripts/common_threshold.py: the best single threshold over several sites, and each's."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.test_label_free_threshold_study import write_predictions

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import common_threshold as common_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
sys.path.pop(0)

# Two sites that one model ranks perfectly, the second with every score shifted down:
# each has thresholds that separate it, but none separates both.
SOURCE = (np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.array([0, 0, 0, 1, 1, 1]))
SHIFTED = (np.array([0.05, 0.06, 0.07, 0.15, 0.16, 0.17]), np.array([0, 0, 0, 1, 1, 1]))


def test_each_site_alone_is_separable_but_no_threshold_serves_both():
  assert common_lib.best_common_threshold({'a': SOURCE}) == (0.7, 1.0)
  assert common_lib.best_common_threshold({'b': SHIFTED}) == (0.15, 1.0)
  # Thresholds 0.15-0.17 find all of the shifted site's tumors at the cost of the source's
  # negatives 0.2 and 0.3 (specificity 1/3) and lose the shifted tumors from there up:
  # the best worst-case is 1/3, and of the tied thresholds the middle one is kept.
  threshold, worst = common_lib.best_common_threshold({'a': SOURCE, 'b': SHIFTED})
  assert threshold == pytest.approx(0.16) and worst == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match='c: needs images of both classes'):
    common_lib.best_common_threshold({'a': SOURCE, 'c': (np.array([0.5]), np.array([1]))})


def test_table_reads_every_threshold_on_every_site():
  lines = common_lib.table({'a': SOURCE, 'b': SHIFTED}).splitlines()
  assert lines[0] == ('| threshold best for | threshold | worst of sens. / spec. | '
                      'a (n=6): sens. / spec. | b (n=6): sens. / spec. |')
  assert lines[2] == '| all sets | 0.1600 | 0.333 | 1.000 / 0.333 | 0.667 / 1.000 |'
  assert lines[3] == '| a alone | 0.7000 | 1.000 | 1.000 / 1.000 | 0.000 / 1.000 |'
  assert lines[4] == '| b alone | 0.1500 | 1.000 | 1.000 / 0.333 | 1.000 / 1.000 |'


def test_command_line_reads_predictions_files(tmp_path):
  write_predictions(tmp_path / 'a.csv', *SOURCE)
  write_predictions(tmp_path / 'b.csv', *SHIFTED)
  proc = subprocess.run(
      [sys.executable, 'scripts/common_threshold.py', f'a={tmp_path / "a.csv"}',
       f'b={tmp_path / "b.csv"}'], cwd=ROOT, capture_output=True, text=True, check=True)
  assert '| all sets | 0.1600 | 0.333 |' in proc.stdout
  proc = subprocess.run([sys.executable, 'scripts/common_threshold.py', str(tmp_path / 'a.csv')],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode != 0 and 'give NAME=PATH/predictions.csv' in proc.stderr


@pytest.mark.slow
def test_a_runs_own_test_split_is_a_site(phantom_run, tmp_path):
  write_predictions(tmp_path / 'b.csv', *SHIFTED)
  proc = subprocess.run(
      [sys.executable, 'scripts/common_threshold.py', f'--run={phantom_run}',
       f'b={tmp_path / "b.csv"}'], cwd=ROOT, capture_output=True, text=True, check=True)
  # The phantom run has no validation split: only its test split (100 slices) is read.
  assert '| own test (n=100): sens. / spec. | b (n=6): sens. / spec. |' in proc.stdout
  assert '| own test alone |' in proc.stdout and 'own val' not in proc.stdout
