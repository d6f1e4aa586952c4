"""The sweep runner: grid parsing, planning, intervals, selection on validation, resuming,
and one tiny sweep end to end on the SYNTHETIC phantom (2 runs of a few steps)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spp_resnet.experiments import report
from spp_resnet.experiments import runs
from spp_resnet.experiments import sweep

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = 'phantom/easy=1,size=48,train=100,test=40'


def _config(**overrides):
  from configs import phantom
  config = phantom.get_config()
  for key, value in overrides.items():
    runs.set_field(config, key, value)
  return config


# ---- Grid ------------------------------------------------------------------------------

def test_grid_values_take_the_type_of_the_field():
  grid = sweep.parse_grid(_config(), [
      'optimizer.learning_rate=1e-4,1e-3,1',
      'batch_size=16, 32',
      'data.augment.hflip=true,False',
      'model.pooling=spp,"gap"',
      'model.head_hidden=(32,),(64, 64),[8]',
  ])
  assert grid == [('optimizer.learning_rate', (1e-4, 1e-3, 1.0)),
                  ('batch_size', (16, 32)),
                  ('data.augment.hflip', (True, False)),
                  ('model.pooling', ('spp', 'gap')),
                  ('model.head_hidden', ((32,), (64, 64), (8,)))]
  assert type(grid[0][1][2]) is float and type(grid[1][1][0]) is int
  assert sweep.split_values("1,(2,3),'a,b',[4, 5]") == ['1', '(2,3)', "'a,b'", '[4, 5]']
  # Without --sweep the config's own grid is used (several fields: ';' between them).
  config = _config()
  config.sweep_grid = 'num_epochs=1,2; optimizer.learning_rate=0.1,0.01'
  assert sweep.parse_grid(config, sweep.grid_specs(config, [])) == [
      ('num_epochs', (1, 2)), ('optimizer.learning_rate', (0.1, 0.01))]
  assert sweep.grid_specs(config, ['batch_size=8']) == ['batch_size=8']


@pytest.mark.parametrize('spec, message', [
    ('optimizer.learnin_rate=1e-3', "no field 'optimizer.learnin_rate' (did you mean "
                                    "'optimizer.learning_rate'?)"),
    ('batch_size=16,3.5', "'3.5' is not an int"),
    ('optimizer.learning_rate=1e-3,fast', "'fast' is not a float"),
    ('data.augment.hflip=yes', 'is not a bool'),
    ('model.head_hidden=(1.5,)', 'is not a tuple'),
    ('optimizer=1', 'is a group of fields'),
    ('batch_size', 'expected FIELD=VALUE1,VALUE2'),
    ('batch_size=16,16', 'listed twice'),
])
def test_grid_errors_name_the_field(spec, message):
  with pytest.raises(sweep.SweepError) as e:
    sweep.parse_grid(_config(), [spec])
  assert message in str(e.value), str(e.value)


def test_grid_errors_from_the_command_line_exit_2_and_write_nothing(tmp_path):
  for spec, message in (('optimizer.learnin_rate=1e-3', 'did you mean'),
                        ('batch_size=16,3.5', 'is not an int')):
    workdir = tmp_path / 'work'
    proc = subprocess.run(
        [sys.executable, '-m', 'spp_resnet.experiments.sweep', '--config=configs/phantom.py',
         f'--workdir={workdir}', f'--sweep={spec}'],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith('error: --sweep=')
    assert message in proc.stderr and 'Traceback' not in proc.stderr
    assert not workdir.exists()


@pytest.mark.parametrize('name, field, values, best', [
    ('epochs', 'num_epochs', (5, 10, 25, 50), 'num_epochs=25'),
    ('learning_rate', 'optimizer.learning_rate', (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
     'optimizer.learning_rate=1e-4'),
    ('batch_size', 'batch_size', (16, 32, 64), 'batch_size=32'),
])
def test_figure_configs_hold_their_grid_and_the_paper_claim(name, field, values, best):
  import importlib
  config = importlib.import_module(f'configs.sweeps.{name}').get_config()
  assert sweep.parse_grid(config, sweep.grid_specs(config, [])) == [(field, values)]
  assert config.paper_best.startswith(best)
  assert config.data.split.val_fraction > 0  # chosen on validation
  assert sweep.log_scale(values) == (name == 'learning_rate')
  # Bookkeeping fields are not part of what a run trains.
  assert 'sweep_grid' not in runs.comparable(config)
  assert not any('sweep_grid' in r or 'paper_best' in r for r in runs.reductions(config))


# ---- Planning --------------------------------------------------------------------------

def test_plan_is_the_cartesian_product_times_the_repeats():
  config = _config(**{'data.split.protocol': 'grouped'})
  grid = sweep.parse_grid(config, ['optimizer.learning_rate=1e-3,1e-2',
                                   'batch_size=8,16,32'])
  points, planned = sweep.plan(config, '/w', grid, folds=2, seeds=[])
  assert len(points) == 6 and len(planned) == 12
  assert list(points)[:2] == ['optimizer.learning_rate=0.001,batch_size=8',
                              'optimizer.learning_rate=0.001,batch_size=16']
  run = next(r for r in planned if r.variant == 'optimizer.learning_rate=0.01,batch_size=32'
             and r.repeat == 'fold1')
  assert run.workdir == '/w/runs/optimizer.learning_rate=0.01,batch_size=32/fold1'
  assert (run.config.optimizer.learning_rate, run.config.batch_size) == (0.01, 32)
  assert (run.config.data.split.num_folds, run.config.data.split.fold) == (2, 1)
  assert config.batch_size == 32 and config.optimizer.learning_rate == 0.01  # untouched
  assert {r.repeat for r in planned} == {'fold0', 'fold1'}
  # Seeds: every point on the same seeds; a field the repeats set cannot be swept.
  _, seeded = sweep.plan(_config(), '/w', [('num_epochs', (1, 2))], folds=1, seeds=[3, 4])
  assert [(r.variant, r.repeat, r.config.seed) for r in seeded] == [
      ('num_epochs=1', 'seed3', 3), ('num_epochs=1', 'seed4', 4),
      ('num_epochs=2', 'seed3', 3), ('num_epochs=2', 'seed4', 4)]
  with pytest.raises(sweep.SweepError, match='set per repeat'):
    sweep.plan(_config(), '/w', [('seed', (1, 2))], folds=1, seeds=[3])


# ---- Aggregation and selection ---------------------------------------------------------

def _result(repeat, test, val=None, metric='roc_auc'):
  """A run's result.json content with test metrics `test` and validation metrics `val`."""
  metrics = {k: test for k, _ in report.METRICS}
  selection = None
  if val is not None:
    selection = {'metric': metric, 'value': val, 'epoch': 3, 'step': 30, 'threshold': 0.5,
                 'threshold_rule': 'fixed',
                 'val_metrics': {'accuracy': val, 'roc_auc': val, 'sensitivity': val,
                                 'specificity': val, 'loss': 1 - val}}
  return {'protocol': 'original', 'variant': 'x', 'repeat': repeat, 'metrics': metrics,
          'confusion': [[4, 1], [1, 4]], 'class_names': ['no_tumor', 'tumor'],
          'probs': [[0.8, 0.2]] * 5 + [[0.3, 0.7]] * 5, 'labels': [0] * 5 + [1] * 5,
          'selection': selection, 'wall_s': 2.0,
          'split': {'counts': {'train': {}, 'test': {}}, 'num_train': 20, 'num_test': 10,
                    'num_records': 30}}


def test_aggregate_gives_the_mean_and_t_interval_of_test_and_validation_metrics():
  agg = report.aggregate([_result('s0', 0.8, 0.6), _result('s1', 0.9, 0.7),
                          _result('s2', 1.0, 0.8)])
  # mean 0.9, sample std 0.1, t(0.975, 2) = 4.302653: half width 0.248414.
  acc = agg['metrics']['accuracy']
  assert acc['n'] == 3 and math.isclose(acc['mean'], 0.9)
  assert math.isclose(acc['high'] - acc['mean'], 4.302653 * 0.1 / math.sqrt(3), rel_tol=1e-5)
  assert math.isclose(acc['mean'] - acc['low'], acc['high'] - acc['mean'])
  assert report.fmt_ci(acc) == '0.900 [0.652, 1.000]'  # clipped to [0, 1]
  val = agg['val_metrics']
  assert math.isclose(val['roc_auc']['mean'], 0.7)
  assert math.isclose(val['recall']['mean'], 0.7)  # the train loop's 'sensitivity'
  assert 'precision' not in val and 'f1' not in val  # not recorded on validation
  assert agg['selection_metric'] == 'roc_auc' and agg['selected_epochs'] == [3, 3, 3]
  assert agg['wall_s'] == 6.0 and agg['confusion'] == [[12, 3], [3, 12]]
  # One run: the mean alone; runs without a validation split: no validation metrics.
  single = report.aggregate([_result('s0', 0.8)])
  assert math.isnan(single['metrics']['accuracy']['low'])
  assert report.fmt_ci(single['metrics']['accuracy']) == '0.800'
  assert 'val_metrics' not in single


def test_the_best_point_is_chosen_on_validation_never_on_test():
  aggregates = {
      'lr=0.1': report.aggregate([_result('s0', 0.99, 0.70), _result('s1', 0.98, 0.72)]),
      'lr=0.01': report.aggregate([_result('s0', 0.80, 0.90), _result('s1', 0.82, 0.88)]),
      'lr=0.001': report.aggregate([_result('s0', 0.85, 0.80), _result('s1', 0.84, 0.81)]),
  }
  assert sweep.best_point(aggregates, 'roc_auc') == 'lr=0.01'  # not the best test point
  assert sweep.best_point(aggregates, 'recall') == 'lr=0.01'
  assert sweep.best_point(aggregates, 'loss') == 'lr=0.01'  # lower is better
  assert sweep.best_point(aggregates, 'f1') is None  # not measured on validation
  no_val = {'a': report.aggregate([_result('s0', 0.9)]),
            'b': report.aggregate([_result('s0', 0.7)])}
  assert sweep.best_point(no_val, 'roc_auc') is None
  # The default: the runs' own selection metric, else the config's, else ROC AUC.
  config = _config()
  assert sweep.resolve_select_metric('', [_result('s0', 0.9, 0.8, metric='f1')],
                                     config) == 'f1'
  assert sweep.resolve_select_metric('accuracy', [_result('s0', 0.9, 0.8)],
                                     config) == 'accuracy'
  assert sweep.resolve_select_metric('', [_result('s0', 0.9)], config) == 'roc_auc'


@pytest.mark.slow
def test_finished_runs_are_reused_and_another_config_is_refused(tmp_path, monkeypatch):
  """A workdir whose runs all have a result.json: a report, no training."""
  config = _config()
  grid_specs = ['optimizer.learning_rate=0.1,0.01', 'batch_size=8,16']
  _, _, planned = sweep.prepare(config, str(tmp_path), grid_specs, folds=1, seeds=[0, 1])
  assert len(planned) == 8
  # The test metric is best at lr 0.1, batch 8; the validation metric at lr 0.01, batch 16.
  scores = {'optimizer.learning_rate=0.1,batch_size=8': (0.99, 0.70),
            'optimizer.learning_rate=0.1,batch_size=16': (0.95, 0.75),
            'optimizer.learning_rate=0.01,batch_size=8': (0.90, 0.80),
            'optimizer.learning_rate=0.01,batch_size=16': (0.85, 0.90)}
  for run in planned:
    test, val = scores[run.variant]
    result = _result(run.repeat, test, val + (0.01 if run.repeat == 'seed1' else 0.0))
    result['config_fields'] = runs.to_json(runs.comparable(run.config))
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, 'result.json'), 'w') as f:
      json.dump(result, f)

  def no_training(*args):
    raise AssertionError(f'trained a finished run: {args[0].workdir}')

  monkeypatch.setattr(runs, 'train_one', no_training)
  summary = sweep.run_sweep(config, str(tmp_path), sweep=grid_specs, folds=1, seeds=[0, 1],
                            argv=['sweep.py', '--sweep=...'], title='fake')
  assert summary['selected'] == 'optimizer.learning_rate=0.01,batch_size=16'
  assert summary['selected_values'] == {'optimizer.learning_rate': 0.01, 'batch_size': 16}
  assert summary['select_metric'] == 'roc_auc'
  point = summary['points']['optimizer.learning_rate=0.1,batch_size=8']
  assert point['status'] == 'ok' and point['n_runs'] == 2
  assert math.isclose(point['val_metrics']['roc_auc']['mean'], 0.705)
  md = (tmp_path / 'results.md').read_text()
  assert '## Validation (the selection is made on these)' in md
  assert '**`optimizer.learning_rate=0.01,batch_size=16`**' in md
  for name in ('roc_auc_vs_optimizer.learning_rate.png', 'accuracy_vs_batch_size.png',
               'confusion_selected_optimizer.learning_rate=0.01,batch_size=16.png'):
    assert (tmp_path / 'plots' / name).read_bytes()[:4] == b'\x89PNG', name
  # The same workdir with another config: refused before anything is trained.
  config.num_epochs = 3
  with pytest.raises(runs.RunnerError, match='different config'):
    sweep.run_sweep(config, str(tmp_path), sweep=grid_specs, folds=1, seeds=[0, 1])


def test_the_ablation_table_shows_the_validation_metric_where_runs_have_one(tmp_path):
  from spp_resnet.experiments import ablation
  config = _config()
  planned = ablation.plan(config, str(tmp_path), ['basic', 'spp'], ['original'], folds=2,
                          seeds=[])
  results = {r.key: _result(r.repeat, 0.9, 0.8 if r.variant == 'spp' else None)
             for r in planned}
  md, summary = ablation.build_report(str(tmp_path), config, planned, results, {}, ['x'],
                                      'fake', 1.0)
  table_header = next(line for line in md.splitlines() if line.startswith('| variant'))
  assert 'val. ROC AUC' in table_header
  spp = summary['protocols']['original']['variants']['spp']
  assert math.isclose(spp['val_metrics']['roc_auc']['mean'], 0.8)
  assert 'val_metrics' not in summary['protocols']['original']['variants']['basic']
  without = {k: _result(k[2], 0.9) for k in results}
  md, _ = ablation.build_report(str(tmp_path), config, planned, without, {}, ['x'], 'fake', 1.0)
  assert 'val.' not in md


# ---- End to end --------------------------------------------------------------------------

@pytest.mark.slow
def test_a_tiny_sweep_end_to_end(tmp_path):
  """Two values of num_epochs on the phantom, one run each, with a validation split.

  A constant learning rate without warm-up makes both runs compile the same step, so the
  second one takes it from the compilation cache.
  """
  workdir = tmp_path / 'work'
  args = [sys.executable, '-m', 'spp_resnet.experiments.sweep', '--config=configs/phantom.py',
          f'--workdir={workdir}', '--sweep=num_epochs=1,2', '--seeds=0',
          f'--config.data.dataset={PHANTOM}', '--config.data.image_size=32',
          '--config.model.head_hidden=(32,)', '--config.batch_size=16',
          '--config.eval_batch_size=32', '--config.optimizer.schedule=constant',
          '--config.optimizer.warmup_epochs=0', '--config.data.split.val_fraction=0.2']
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-6000:]
  summary = json.loads((workdir / 'results.json').read_text())
  assert list(summary['points']) == ['num_epochs=1', 'num_epochs=2']
  for name, point in summary['points'].items():
    assert point['status'] == 'ok' and point['n_runs'] == 1
    assert 0.0 <= point['metrics']['accuracy']['mean'] <= 1.0
    result = json.loads((workdir / 'runs' / name / 'seed0' / 'result.json').read_text())
    assert result['selection']['metric'] == summary['select_metric']
    assert result['split']['num_val'] > 0
  assert summary['selected'] in summary['points']
  md = (workdir / 'results.md').read_text()
  assert md in proc.stdout
  assert '# Sweep: ' + PHANTOM in md and '`num_epochs` ∈ {1, 2}' in md
  assert '`data.image_size`: 224 → 32' in md  # reductions are stated ...
  assert '`num_epochs`:' not in md  # ... but not the swept field
  assert (workdir / 'plots' / 'accuracy_vs_num_epochs.png').read_bytes()[:4] == b'\x89PNG'
