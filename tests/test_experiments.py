"""The ablation runner and the external evaluation, end to end on the SYNTHETIC phantom.

A tiny ResNet-18 (32 px, one epoch) keeps every training run to seconds; what is tested
is the plumbing: planning, the per-variant configs, result tables with intervals, JSON,
plots, 'not run' rows for missing ImageNet weights, resuming, and a checkpoint evaluated
on a plain class-per-folder directory of PNG files.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from spp_resnet.data import splits as splits_lib
from spp_resnet.experiments import ablation
from spp_resnet.experiments import evaluate_external as ext
from spp_resnet.experiments import runs as runs_lib
from spp_resnet.training import restore

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = 'phantom/easy=1,size=48,train=100,test=40'
TINY = [
    f'--config.data.dataset={PHANTOM}',
    '--config.data.image_size=32',
    '--config.model.head_hidden=(32,)',
    '--config.num_epochs=1',
    '--config.batch_size=16',
    '--config.eval_batch_size=32',
    '--config.data.split.num_test=20',
]


def _env(tmp):
  # No ImageNet file anywhere we look, and no download attempt.
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'SPP_RESNET_OFFLINE': '1',
          'KERAS_HOME': str(tmp / 'keras'), 'TORCH_HOME': str(tmp / 'torch')}


def _run(args, tmp, check=True):
  proc = subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=_env(tmp),
                        capture_output=True, text=True)
  if check and proc.returncode != 0:
    raise AssertionError(f'{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                         f'{proc.stderr[-6000:]}')
  return proc


# ---- Units -----------------------------------------------------------------------------

def _base_config():
  from configs import phantom
  return phantom.get_config()


def test_plan_variants_differ_only_in_pooling_and_init():
  config = _base_config()
  runs = ablation.plan(config, '/w', ablation.VARIANTS, ['paper', 'grouped'], folds=3,
                       seeds=[])
  assert len(runs) == 2 * 4 * 3
  by_key = {(r.protocol, r.variant, r.repeat): r.config for r in runs}
  # The paper protocol repeats over random splits; grouped is a k-fold.
  assert {r.repeat for r in runs if r.protocol == 'paper'} == {'split0', 'split1', 'split2'}
  assert {r.repeat for r in runs if r.protocol == 'grouped'} == {'fold0', 'fold1', 'fold2'}
  assert by_key[('paper', 'basic', 'split2')].data.split.seed == 2
  assert by_key[('paper', 'basic', 'split2')].seed == config.seed
  seeded = ablation.plan(config, '/w', ['basic'], ['paper', 'grouped'], folds=2, seeds=[3, 4])
  assert [(r.repeat, r.config.seed, r.config.data.split.seed) for r in seeded] == [
      ('seed3', 3, 3), ('seed4', 4, 4), ('seed3_fold0', 3, 3), ('seed3_fold1', 3, 3),
      ('seed4_fold0', 4, 4), ('seed4_fold1', 4, 4)]
  assert by_key[('grouped', 'basic', 'fold1')].data.split.num_folds == 3
  assert by_key[('grouped', 'basic', 'fold1')].data.split.fold == 1
  flat = {k: runs_lib.flatten(c.to_dict()) for k, c in by_key.items()}
  basic, spp_tl = flat[('grouped', 'basic', 'fold1')], flat[('grouped', 'spp_tl', 'fold1')]
  diff = {k for k in basic if basic[k] != spp_tl[k]}
  assert diff == {'model.pooling', 'pretrained.source'}, diff
  assert (basic['model.pooling'], spp_tl['model.pooling']) == ('gap', 'spp')
  assert basic['pretrained.source'] == ''
  # A v1.5 ResNet-18 (the phantom's) takes torchvision weights; every variant gets their
  # input normalization, so all four see identical inputs.
  assert spp_tl['pretrained.source'] == 'imagenet_torchvision'
  assert basic['data.normalization'] == spp_tl['data.normalization'] == 'imagenet'


def test_reductions_list_what_differs_from_the_paper():
  config = _base_config()
  text = ' '.join(runs_lib.reductions(config, exclude=ablation.VARIANT_FIELDS))
  assert '`data.image_size`: 224 → 64' in text
  assert '`model.backbone`: resnet50 → resnet18' in text
  assert 'model.pooling' not in text  # set per variant, not a reduction


def test_grouped_split_subsample_keeps_groups_whole():
  rng = np.random.default_rng(0)
  n = 400
  labels = rng.integers(0, 2, n)
  hashes = rng.integers(0, 2**62, n, dtype=np.uint64)
  hashes[1::2] = hashes[0::2]  # pairs of near (here: equal) duplicates, label of the first
  labels[1::2] = labels[0::2]
  meta = {'label': labels, 'sha256': np.array([f'{i:064x}' for i in range(n)]),
          'phash': np.array([f'{h:016x}' for h in hashes]),
          'patient_id': np.array([''] * n)}
  config = dict(protocol='grouped', per_class=0, num_test=0, test_fraction=0.2, num_folds=3,
                near_duplicate_threshold=0, seed=5, max_per_class=50)
  folds = [splits_lib.make_splits(meta, ml_collections.ConfigDict({**config, 'fold': f}))
           for f in range(3)]
  subset = np.sort(np.concatenate([folds[0]['train'], folds[0]['test']]))
  for s in folds:  # the same subset for every fold; test folds partition it
    np.testing.assert_array_equal(np.sort(np.concatenate([s['train'], s['test']])), subset)
  np.testing.assert_array_equal(np.sort(np.concatenate([s['test'] for s in folds])), subset)
  for c in (0, 1):
    assert 50 <= np.sum(labels[subset] == c) <= 51
  ids = splits_lib.group_ids(meta, near_duplicate_threshold=0)
  for s in folds:
    assert not set(ids[s['train']]) & set(ids[s['test']])
  assert set(ids[subset]) == set(ids[np.isin(ids, ids[subset])])  # whole groups only
  # max_per_class = 0 is the unchanged full split.
  full = splits_lib.make_splits(meta, ml_collections.ConfigDict(
      {**config, 'fold': 0, 'max_per_class': 0}))
  assert len(full['train']) + len(full['test']) == n


def test_class_mapping():
  binary = ['no_tumor', 'tumor']
  np.testing.assert_array_equal(ext.map_classes(['No', 'Yes'], binary), [0, 1])
  four = ['glioma_tumor', 'meningioma_tumor', 'no_tumor', 'pituitary_tumor']
  np.testing.assert_array_equal(ext.map_classes(four, binary), [1, 1, 0, 1])
  np.testing.assert_array_equal(ext.map_classes(['notumor', 'Healthy', 'Glioma'], binary),
                                [0, 0, 1])
  three = ['glioma', 'meningioma', 'pituitary']
  np.testing.assert_array_equal(ext.map_classes(['Pituitary Tumor', 'glioma_tumor'], three),
                                [2, 0])
  with pytest.raises(ext.MappingError, match=r"\['no_tumor'\].*--class_map"):
    ext.map_classes(four, three)
  np.testing.assert_array_equal(
      ext.map_classes(four, three, ignore=['no_tumor']), [0, 1, -1, 2])
  np.testing.assert_array_equal(ext.map_classes(['cats', 'dogs'], binary,
                                                {'cats': 'tumor', 'dogs': 'no_tumor'}), [1, 0])
  with pytest.raises(ext.MappingError, match='cats'):
    ext.map_classes(['cats', 'dogs'], binary)


# ---- End to end --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ablation_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('ablation')
  workdir = tmp / 'work'
  args = ['spp_resnet.experiments.ablation', '--config=configs/phantom.py',
          f'--workdir={workdir}', '--protocols=paper,grouped', '--folds=2',
          '--variants=basic,spp_tl',
          f'--config.pretrained.cache_dir={tmp / "weights"}', *TINY]
  proc = _run(args, tmp)
  return tmp, workdir, proc


@pytest.mark.slow
def test_ablation_tables_json_and_plots(ablation_run):
  tmp, workdir, proc = ablation_run
  md = (workdir / 'results.md').read_text()
  assert md in proc.stdout
  summary = json.loads((workdir / 'results.json').read_text())
  assert set(summary['protocols']) == {'paper', 'grouped'}
  for protocol, repeats in (('paper', ['split0', 'split1']), ('grouped', ['fold0', 'fold1'])):
    p = summary['protocols'][protocol]
    assert p['repeats'] == repeats
    basic = p['variants']['basic']
    assert basic['status'] == 'ok' and basic['n_runs'] == 2
    for key in ('accuracy', 'precision', 'recall', 'specificity', 'f1', 'roc_auc'):
      ci = basic['metrics'][key]
      assert ci['n'] == 2 and ci['low'] <= ci['mean'] <= ci['high'], (key, ci)
      assert np.isclose(ci['mean'], np.mean(basic['per_run'][key]))
    # The TL variants: no weights file anywhere, so reported, not substituted.
    assert p['variants']['spp_tl']['status'] == ablation.NOT_RUN_NO_WEIGHTS
    assert p['variants']['spp']['status'] == 'not run (not requested)'
    for name in p['plots']:
      data = (workdir / name).read_bytes()
      assert data[:8] == b'\x89PNG\r\n\x1a\n', name
    plots = {Path(n).name for n in p['plots']}
    assert {f'roc_{protocol}.png', f'confusion_{protocol}_basic.png',
            f'curves_{protocol}_basic.png'} <= plots
  # The paper protocol's 20 random test images; the grouped folds split all 140.
  paper_runs = summary['protocols']['paper']['variants']['basic']['runs']
  assert [r['split']['num_test'] for r in paper_runs.values()] == [20, 20]
  grouped_runs = summary['protocols']['grouped']['variants']['basic']['runs']
  assert sum(r['split']['num_test'] for r in grouped_runs.values()) == 140
  for r in grouped_runs.values():
    assert r['split']['leakage']['any_groups'] == 0
  assert '| ResNet-18 +SPP+TL' in md and ablation.NOT_RUN_NO_WEIGHTS in md
  assert '--variants=tl,spp_tl' in md  # how to run the TL rows
  assert '`data.image_size`: 224 → 32' in md  # the reductions are stated
  assert 'Train/test leakage per run' in md


@pytest.mark.slow
def test_ablation_resumes_without_training_and_refuses_another_config(ablation_run):
  tmp, workdir, _ = ablation_run
  results = sorted(workdir.glob('runs/*/*/*/result.json'))
  assert len(results) == 4
  mtimes = [p.stat().st_mtime_ns for p in results]
  args = ['spp_resnet.experiments.ablation', '--config=configs/phantom.py',
          f'--workdir={workdir}', '--protocols=paper,grouped', '--folds=2',
          '--variants=basic,spp_tl',
          f'--config.pretrained.cache_dir={tmp / "weights"}', *TINY]
  proc = _run(args, tmp)  # the same command again: every run is finished
  assert [p.stat().st_mtime_ns for p in results] == mtimes
  assert 'train_and_evaluate' not in proc.stderr and 'Training ' not in proc.stderr
  summary = json.loads((workdir / 'results.json').read_text())
  assert summary['protocols']['grouped']['variants']['basic']['n_runs'] == 2
  # A different config in the same workdir is refused rather than mixed in.
  proc = _run(args + ['--config.num_epochs=2', '--report_only'], tmp, check=False)
  assert proc.returncode == 2 and 'different config' in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope='module')
def outside_folder(ablation_run):
  """The paper-protocol run's own test images, as PNGs under other class names."""
  from PIL import Image
  from spp_resnet.data import sources
  tmp, workdir, _ = ablation_run
  run_dir = workdir / 'runs' / 'paper' / 'basic' / 'split0'
  config = restore.load_run_config(str(run_dir))
  pooled = sources.load_pooled(config.data.dataset)
  test_idx = splits_lib.make_splits(pooled.metadata, config.data.split)['test']
  folder = tmp / 'outside'
  names = {0: 'Healthy', 1: 'Tumor'}
  for i in test_idx:
    record = pooled.source[int(i)]
    d = folder / names[int(record['label'])]
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(record['image'])[..., 0]).save(d / f'slice_{int(i)}.png')
  return folder, test_idx


@pytest.mark.slow
def test_evaluate_external_on_a_class_per_folder_directory(ablation_run, outside_folder):
  """The paper-protocol run's own test images, written as PNGs under other class names,
  give back exactly the metrics the run reported."""
  from PIL import Image
  tmp, workdir, _ = ablation_run
  folder, test_idx = outside_folder
  run_dir = workdir / 'runs' / 'paper' / 'basic' / 'split0'
  assert tuple(restore.load_run_config(str(run_dir)).model.head_hidden) == (32,)
  out = tmp / 'external_out'
  proc = _run(['spp_resnet.experiments.evaluate_external', f'--workdir={run_dir}',
               '--dataset=image_folder', f'--manual_dir={folder}',
               f'--data_dir={tmp / "tfds"}', f'--out={out}'], tmp)
  got = json.loads((out / 'metrics.json').read_text())
  want = json.loads((run_dir / 'result.json').read_text())
  assert got['num_images'] == len(test_idx) == 20
  assert got['class_mapping'] == {'Healthy': 'no_tumor', 'Tumor': 'tumor'}
  assert got['confusion'] == want['confusion']
  for key in ('accuracy', 'precision', 'recall', 'specificity', 'f1', 'roc_auc'):
    assert np.isclose(got['metrics'][key], want['metrics'][key], atol=1e-6), key
  for name in ('roc.png', 'confusion.png', 'confusion_normalized.png', 'errors.png'):
    assert (out / name).read_bytes()[:4] == b'\x89PNG'
  assert 'accuracy' in (out / 'metrics.md').read_text()
  assert len((out / 'predictions.csv').read_text().splitlines()) == 21
  assert 'Written to' in proc.stdout

  # Class names that mean nothing to a tumor model: a clear error, no evaluation.
  odd = tmp / 'odd'
  for cls in ('cats', 'dogs'):
    (odd / cls).mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(odd / cls / 'x.png')
  with pytest.raises(ext.MappingError, match=r"Cannot map the dataset's classes \['cats', "):
    ext.evaluate_external(str(run_dir), 'image_folder', manual_dir=str(odd),
                          data_dir=str(tmp / 'tfds'), out=str(tmp / 'odd_out'))


@pytest.mark.slow
def test_site_threshold_is_fitted_saved_and_used_by_evaluation_and_predict(ablation_run, outside_folder):
  """--save_threshold fits the run's rule on the site's images; --threshold (the file or
  a number) then decides evaluate_external and predict; other weights are refused."""
  import csv
  from spp_resnet.evaluation import metrics as M
  from spp_resnet.inference import predict as predict_lib
  from spp_resnet.inference import site_threshold
  tmp, workdir, _ = ablation_run
  run_dir = str(workdir / 'runs' / 'paper' / 'basic' / 'split0')
  folder, _ = outside_folder
  site = tmp / 'site' / 'a.json'
  common = dict(manual_dir=str(folder), data_dir=str(tmp / 'tfds'))
  fitted = ext.evaluate_external(run_dir, 'image_folder', out=str(tmp / 'site_fit'),
                                 save_threshold=str(site), **common)
  with open(tmp / 'site_fit' / 'predictions.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  probs = np.asarray([float(r['p_tumor']) for r in rows])
  truth = np.asarray([r['true'] == 'tumor' for r in rows])
  record = json.loads(site.read_text())
  # The run's rule is a fixed 0.5: a site threshold is fitted by Youden's J instead.
  assert fitted['threshold'] == 0.5 and record['rule'] == 'youden'
  threshold = record['threshold']  # the CSV's probabilities have 9 significant digits
  assert np.isclose(threshold, M.choose_threshold(probs, truth, 'youden'), rtol=1e-7)
  assert threshold != 0.5
  assert record['class_counts'] == {'no_tumor': 10, 'tumor': 10}
  assert record['in_sample']['sensitivity'] == (probs[truth] >= threshold).mean()
  assert 'Site threshold saved to' in (tmp / 'site_fit' / 'metrics.md').read_text()

  at_site = ext.evaluate_external(run_dir, 'image_folder', out=str(tmp / 'site_eval'),
                                  threshold=str(site), **common)
  called = probs >= threshold
  assert at_site['threshold'] == threshold
  assert at_site['threshold_source'] == f'site threshold {site}'
  assert at_site['confusion'] == [[int((~called & ~truth).sum()), int((called & ~truth).sum())],
                                  [int((~called & truth).sum()), int((called & truth).sum())]]
  assert ext.evaluate_external(run_dir, 'image_folder', out=str(tmp / 'site_eval'),
                               threshold='1.0', **common)['metrics']['recall'] == 0.0

  report = predict_lib.Predictor.from_workdir(run_dir, threshold=str(site)).predict(folder)
  by_file = {os.path.basename(p.path): p for p in report.predictions}
  for row in rows:
    prediction = by_file[os.path.basename(row['filename'])]
    np.testing.assert_allclose(prediction.probs[1], float(row['p_tumor']), atol=1e-5)
    assert prediction.predicted == (float(row['p_tumor']) >= threshold)
  assert report.threshold == threshold and report.run['threshold_source'].endswith('a.json')

  # The file belongs to these weights: another model's, a bad number, no file: refused.
  other = tmp / 'site' / 'other.json'
  other.write_text(json.dumps({**record, 'weights_sha256': '0' * 16}))
  for spec, why in ((other, 'fitted for other weights'), ('1.5', r'lies in \[0, 1\]'),
                    (tmp / 'none.json', 'no such file'),
                    (tmp / 'site_fit' / 'metrics.json', 'not a site threshold file')):
    with pytest.raises(site_threshold.SiteThresholdError, match=why):
      predict_lib.Predictor.from_workdir(run_dir, threshold=str(spec))
  # One class only: no threshold to fit, nothing written.
  tumors = tmp / 'tumors_only'
  (tumors / 'Tumor').mkdir(parents=True)
  for png in (folder / 'Tumor').glob('*.png'):
    (tumors / 'Tumor' / png.name).write_bytes(png.read_bytes())
  with pytest.raises(site_threshold.SiteThresholdError, match='both classes'):
    ext.evaluate_external(run_dir, 'image_folder', manual_dir=str(tumors),
                          data_dir=str(tmp / 'tfds'), out=str(tmp / 'tumors_out'),
                          save_threshold=str(tmp / 'site' / 'b.json'))
  assert not (tmp / 'site' / 'b.json').exists()


@pytest.mark.slow
def test_table3_rows_per_backbone(tmp_path):
  """Several backbones (configs/table3.py): a row per backbone and variant, each with its
  own ImageNet source; LeNet has none, AlexNet's file is missing offline."""
  from configs import table3
  config = table3.get_config('cpu')
  config.ablation_backbones = ('lenet', 'alexnet', 'resnet18')
  runs = ablation.plan(config, '/w', ablation.VARIANTS, ['paper'], folds=1, seeds=[])
  by_variant = {r.variant: r.config for r in runs}
  assert list(by_variant) == ['lenet_spp', 'lenet_spp_tl', 'alexnet_spp', 'alexnet_spp_tl',
                              'resnet18_spp', 'resnet18_spp_tl']
  assert [(c.model.backbone, c.model.pooling, c.pretrained.source, c.data.normalization)
          for c in list(by_variant.values())[:4]] == [
              ('lenet', 'spp', '', 'none'), ('lenet', 'spp', '', 'none'),
              ('alexnet', 'spp', '', 'imagenet'),
              ('alexnet', 'spp', 'imagenet_torchvision', 'imagenet')]
  workdir = tmp_path / 'work'
  _run(['spp_resnet.experiments.ablation', '--config=configs/table3.py:cpu',
        f'--workdir={workdir}', '--protocols=paper', '--folds=1',
        "--config.ablation_backbones=('lenet','alexnet')",
        f'--config.pretrained.cache_dir={tmp_path / "weights"}', *TINY], tmp_path)
  rows = json.loads((workdir / 'results.json').read_text())['protocols']['paper']['variants']
  assert rows['lenet_spp']['status'] == rows['alexnet_spp']['status'] == 'ok'
  assert rows['lenet_spp_tl']['status'] == 'not run (no ImageNet weights exist for LeNet-5)'
  assert rows['alexnet_spp_tl']['status'] == ablation.NOT_RUN_NO_WEIGHTS
  md = (workdir / 'results.md').read_text()
  assert re.search(r'\| LeNet-5 \+SPP +\| 0\.9230 ', md)
  assert re.search(r'\| AlexNet \+SPP\+TL +\| 0\.9050 ', md)
  assert 'alexnet-owt-7be5be79.pth' in md and "Neamah et al.'s Table 3" in md


def test_site_threshold_text_of_a_label_free_fit_on_one_class():
  """A mixture threshold saved from a tumor-only folder: no specificity to report, and
  the text says the labels did not fit it (no crash on the missing class)."""
  site = {'rule': 'mixture', 'threshold': 0.25, 'num_images': 40,
          'class_counts': {'no_tumor': 0, 'tumor': 40},
          'in_sample': {'sensitivity': 0.9, 'specificity': None}}
  text = ext._site_text(site, 'site.json')
  assert 'P(positive) >= 0.2500 (mixture)' in text
  assert 'sensitivity 0.9000, specificity n/a' in text
  assert 'without their labels' in text and 'optimistic' not in text
  labelled = {**site, 'rule': 'youden', 'in_sample': {'sensitivity': 0.9, 'specificity': 0.8}}
  assert 'optimistic' in ext._site_text(labelled, 'site.json')
  assert 'Warning' not in text
  overlapping = ext._site_text({**site, 'warning': 'the two clusters of logits overlap'},
                               'site.json')
  assert overlapping.endswith('**Warning:** the two clusters of logits overlap.\n')
