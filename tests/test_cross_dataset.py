"""The cross-dataset matrix: a tiny phantom run against small real-MRI image folders."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spp_resnet.experiments import cross_dataset as xd
from spp_resnet.experiments.cross_dataset import DatasetSpec

ROOT = Path(__file__).resolve().parents[1]
BOHAJU = ROOT.parent / 'shared' / 'data' / 'bohaju_brain_tumor_sample'
PHANTOM = 'phantom/easy=1,size=48,train=64,test=32'


def _train_tiny(workdir: Path):
  """A ResNet-18 on 32 px, one epoch: seconds on 2 CPU cores. In this process: the
  evaluations after it reuse its imports and compiled eval step."""
  from configs import phantom
  from spp_resnet.training import train
  config = phantom.get_config()
  config.data.dataset = PHANTOM
  config.data.image_size = 32
  config.model.head_hidden = (32,)
  config.num_epochs = 1
  config.batch_size = 16
  config.eval_batch_size = 32
  train.train_and_evaluate(config, str(workdir))


# ---- Units -----------------------------------------------------------------------------

def test_parse_flags():
  assert xd.parse_runs(['a=/w/a', 'b.2=w/b']) == {'a': '/w/a', 'b.2': 'w/b'}
  assert xd.parse_datasets(['f=figshare_brain_tumor:/d/f', 'm=brain_tumor_mri/binary']) == {
      'f': DatasetSpec('figshare_brain_tumor', '/d/f'),
      'm': DatasetSpec('brain_tumor_mri/binary', '')}
  for parse, items, message in (
      (xd.parse_runs, ['a'], 'NAME=WORKDIR'), (xd.parse_runs, ['a=x', 'a=y'], 'twice'),
      (xd.parse_runs, ['a/b=x'], 'names a folder'), (xd.parse_runs, [], 'no runs'),
      (xd.parse_datasets, ['x=:/d'], 'REGISTRY_NAME'), (xd.parse_datasets, ['x=mix'], 'parts')):
    with pytest.raises(ValueError, match=message):
      parse(items)


def test_trained_on(tmp_path):
  (tmp_path / 'real').mkdir()
  os.symlink(tmp_path / 'real', tmp_path / 'link')
  real, link = str(tmp_path / 'real'), str(tmp_path / 'link')

  def config(dataset, manual_dir='', mix=''):
    return {'data': {'dataset': dataset, 'manual_dir': manual_dir, 'mix': mix}}

  # Same folder (symlinks resolved), whatever the names.
  assert xd.trained_on(config('image_folder', real), DatasetSpec('image_folder', link))
  assert not xd.trained_on(config('image_folder', real),
                           DatasetSpec('image_folder', str(tmp_path)))
  # Same registry dataset: another copy or config of it holds the same images.
  assert xd.trained_on(config('brain_tumor_mri/four_class', '/a'),
                       DatasetSpec('brain_tumor_mri/binary', '/b'))
  assert not xd.trained_on(config('brain_tumor', '/a'), DatasetSpec('figshare_brain_tumor'))
  assert xd.trained_on(config('phantom/easy=1,train=8'),
                       DatasetSpec('phantom/train=8,easy=1'))
  assert not xd.trained_on(config('phantom/easy=1'), DatasetSpec('phantom/easy=0'))
  # A mix: every part.
  mixed = config('mix', mix=f'brain_tumor=/a;image_folder={link}')
  assert xd.trained_on(mixed, DatasetSpec('image_folder', real))
  assert xd.trained_on(mixed, DatasetSpec('brain_tumor', '/elsewhere'))
  assert not xd.trained_on(mixed, DatasetSpec('figshare_brain_tumor', '/f'))


def test_cell_metrics_single_class():
  metrics = {'roc_auc': float('nan'), 'accuracy': 0.5, 'sensitivity': 0.5,
             'specificity': 0.0}
  values, why = xd.cell_metrics({'metrics': metrics, 'confusion': [[0, 0], [3, 3]],
                                 'num_images': 6})
  assert values == {'roc_auc': None, 'accuracy': 0.5, 'sensitivity': 0.5,
                    'specificity': None, 'num_images': 6}
  assert set(why) == {'roc_auc', 'specificity'}
  values, why = xd.cell_metrics({'metrics': metrics, 'confusion': [[4, 2], [0, 0]],
                                 'num_images': 6})
  assert values['sensitivity'] is None and values['specificity'] == 0.0


def test_cli_usage_error_is_fast_and_clear(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'spp_resnet.experiments.cross_dataset',
                         '--runs=bad', '--datasets=x=brain_tumor', f'--out={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and 'NAME=WORKDIR' in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


# ---- End to end --------------------------------------------------------------------------

def _bohaju_images(per_class: int):
  """{class (0/1): [paths]} of the first images of each class present here."""
  out = {0: [], 1: []}
  with open(BOHAJU / 'Brain Tumor.csv', newline='') as f:
    for row in csv.DictReader(f):
      path = BOHAJU / 'Brain Tumor' / 'Brain Tumor' / f'{row["Image"]}.jpg'
      label = int(row['Class'])
      if path.exists() and len(out[label]) < per_class:
        out[label].append(path)
  return out


@pytest.mark.skipif(not BOHAJU.is_dir(), reason='../shared/data not available')
@pytest.mark.slow
def test_matrix(tmp_path):
  # A tiny phantom run, and a copy of it that claims to be trained on a mix holding the
  # `both` folder (through a symlink): the 'trained on' cells of both rows.
  run = tmp_path / 'run'
  _train_tiny(run)
  images = _bohaju_images(6)
  both, tumor_only = tmp_path / 'both', tmp_path / 'tumor_only'
  for label, cls in ((0, 'no'), (1, 'yes')):
    (both / cls).mkdir(parents=True)
    for path in images[label]:
      shutil.copy(path, both / cls / path.name)
  for k, path in enumerate(images[1]):  # all tumor, two tumor types
    cls = tumor_only / ('glioma' if k % 2 else 'pituitary')
    cls.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, cls / path.name)
  mix_run = tmp_path / 'mix_run'
  shutil.copytree(run, mix_run)
  os.symlink(both, tmp_path / 'both_link')
  config = json.loads((mix_run / 'config.json').read_text())
  config['data'].update(dataset='mix', mix=f'image_folder={tmp_path / "both_link"}')
  (mix_run / 'config.json').write_text(json.dumps(config))

  out = tmp_path / 'out'
  datasets = {'phantom': DatasetSpec(PHANTOM), 'both': DatasetSpec('image_folder', str(both)),
              'tumor_only': DatasetSpec('image_folder', str(tumor_only))}
  # `copy`: the phantom run again, under another name: the paired comparison's zero.
  result = xd.build_matrix({'phantom': str(run), 'mix': str(mix_run), 'copy': str(run)},
                           datasets, str(out), data_dir=str(tmp_path / 'tfds'),
                           refit_threshold=2, baselines=('phantom',),
                           argv=['cross_dataset', '--x=1'])
  cells = result['cells']
  assert cells['phantom']['phantom'] == {'status': 'trained on'}
  assert cells['mix']['both'] == {'status': 'trained on'}
  for run_name, name in (('phantom', 'both'), ('phantom', 'tumor_only'),
                         ('mix', 'phantom'), ('mix', 'tumor_only')):
    cell = cells[run_name][name]
    assert cell['status'] == 'ok', cell
    # The cell is evaluate_external's own report.
    own = json.loads((out / run_name / name / 'metrics.json').read_text())
    assert cell['metrics']['accuracy'] == own['metrics']['accuracy']
    assert cell['metrics']['num_images'] == own['num_images']
    assert cell['wall_s'] > 0
    # The surest wrong calls, as the model saw them (one class: false negatives only).
    assert (out / run_name / name / 'errors.png').read_bytes()[:4] == b'\x89PNG'
  both_cell = cells['phantom']['both']
  assert both_cell['metrics']['num_images'] == 12
  assert all(isinstance(both_cell['metrics'][k], float)
             for k in ('roc_auc', 'accuracy', 'sensitivity', 'specificity'))
  assert cells['mix']['phantom']['metrics']['num_images'] == 96
  for run_name in ('phantom', 'mix'):  # one class: no AUC, no specificity
    cell = cells[run_name]['tumor_only']
    assert cell['metrics']['num_images'] == 6
    assert cell['metrics']['roc_auc'] is None and cell['metrics']['specificity'] is None
    assert isinstance(cell['metrics']['sensitivity'], float)
    assert cell['class_counts'] == {'glioma': 3, 'pituitary': 3}
    assert cell['class_mapping'] == {'glioma': 'tumor', 'pituitary': 'tumor'}
    # Broken down by its own classes: each tumor type's sensitivity, no ROC AUC.
    by_type = {r['group']: r for r in cell['by_their_class']}
    assert {k: (r['num_images'], r['counted_as']) for k, r in by_type.items()} == {
        'glioma': (3, 'tumor'), 'pituitary': (3, 'tumor')}
    assert all('roc_auc' not in r for r in by_type.values())
    found = sum(round(r['called_correctly'][0] * 3) for r in by_type.values())
    assert found == round(cell['metrics']['sensitivity'] * 6)
  assert 'by_their_class' not in cells['phantom']['both']  # no/yes: nothing merged

  assert json.loads((out / 'cross_dataset.json').read_text()) == result
  md = (out / 'cross_dataset.md').read_text()
  assert '`python -m spp_resnet.experiments.cross_dataset --x=1`' in md
  assert 'jax.devices()[0] = ' in md and 'UTC' in md
  section = md.split("## By the test sets' own classes")[1].split('##')[0]
  row = next(l for l in section.splitlines() if l.startswith('| mix ') and 'pituitary' in l)
  assert [c.strip() for c in row.strip('|').split('|')][:5] == [
      'mix', 'tumor_only', 'pituitary', 'tumor', '3']
  for title in ('## ROC AUC', '## Accuracy', '## Sensitivity', '## Specificity', '## Images',
                '## Run time per cell'):
    assert title in md
  auc = md.split('## ROC AUC')[1].split('##')[0]
  phantom_row = next(l for l in auc.splitlines() if l.startswith('| phantom'))
  cols = [c.strip() for c in phantom_row.strip('|').split('|')]
  threshold = result['runs']['phantom']['threshold']
  assert cols[1] == (f'{threshold:.4f}' if result['runs']['phantom']['threshold_known']
                     else '0.5 (default)')
  # The threshold refitted on 2 images per class of each test set: where both classes are.
  refit = both_cell['refit_threshold']
  assert refit['per_class'] == 2 and refit['num_evaluated'] == 8 and refit['rule'] == 'youden'
  assert 0 <= refit['sensitivity']['low'] <= refit['sensitivity']['mean'] <= 1
  assert 'skipped' in cells['phantom']['tumor_only']['refit_threshold']
  section = md.split('threshold refitted on 2 images per class')[1].split('##')[0]
  row = next(l for l in section.splitlines() if l.startswith('| phantom'))
  assert [c.strip() for c in row.strip('|').split('|')][1:] == ['trained on', ' / '.join(
      f'{refit[k]["mean"]:.3f} [{refit[k]["low"]:.3f}, {refit[k]["high"]:.3f}]'
      for k in ('sensitivity', 'specificity')), 'n/a']
  # A threshold fitted on each test set without its labels (two Gaussians on the logits).
  fit = both_cell['label_free_threshold']
  probs = [float(r['p_tumor']) for r in csv.DictReader(open(out / 'phantom' / 'both' /
                                                            'predictions.csv'))]
  from spp_resnet.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  assert fit['threshold'] == pytest.approx(metrics_lib.mixture_threshold(probs)['threshold'],
                                           abs=1e-3)  # the CSV keeps 9 digits
  assert 0 <= fit['sensitivity'] <= 1 and 0 <= fit['specificity'] <= 1
  assert 'at least 10' in cells['phantom']['tumor_only']['label_free_threshold']['skipped']
  section = md.split('threshold fitted on the test set without labels')[1].split('##')[0]
  row = next(l for l in section.splitlines() if l.startswith('| phantom'))
  assert [c.strip() for c in row.strip('|').split('|')][1:] == [
      'trained on', f'{fit["sensitivity"]:.3f} / {fit["specificity"]:.3f} '
      f'(at {fit["threshold"]:.3f}, D {fit["separation"]:.1f})', 'n/a']
  # Against the baseline, paired over the same images: the same model differs by 0.
  assert cells['copy']['both']['vs_baseline'] == [0.0, 0.0, 0.0]
  section = md.split('## ROC AUC against the baseline trained on the same data, paired')[1]
  section = section.split('##')[0]
  rows = {l.split('|')[1].strip(): [c.strip() for c in l.strip('|').split('|')][1:]
          for l in section.splitlines() if l.startswith('| ') and '\\ test' not in l}
  assert rows['copy'] == ['phantom', 'trained on', '+0.000 [+0.000, +0.000]', 'n/a']
  # `mix` was trained on other data than the baseline: nothing to compare it with.
  assert 'vs_baseline' not in cells['mix']['tumor_only']
  assert rows['mix'] == ['(none trained on the same data)', '', 'trained on', '']
  assert rows['phantom'] == ['phantom'] + ['(baseline)'] * 3
  low, high = both_cell['intervals']['roc_auc']  # 95% bootstrap interval over images
  assert low <= both_cell['metrics']['roc_auc'] <= high
  assert cols[2:] == ['trained on',
                      f'{both_cell["metrics"]["roc_auc"]:.3f} [{low:.3f}, {high:.3f}]', 'n/a']
