"""Ensembles (`config.ensemble_size`): members trained as ordinary runs on one split, the
mean of their probabilities, a threshold fitted on the ensemble's validation output, and
every tool that takes a run taking the ensemble."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import phantom as phantom_config
from spp_resnet import config_validation
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import evaluate_external
from spp_resnet.inference import export as export_lib
from spp_resnet.inference import gradcam
from spp_resnet.training import parallel, restore
from spp_resnet.training import train as train_lib
from spp_resnet.training.optimizer import create_optimizer
from tests.test_train import run_main

ENSEMBLE = ['--config.data.dataset=phantom/easy=1,train=128,test=48',
            '--config.data.split.val_fraction=0.25',
            '--config.selection.threshold=youden',
            '--config.model.backbone=lenet',
            '--config.optimizer.name=adam', '--config.optimizer.learning_rate=1e-3',
            '--config.num_epochs=2',
            '--config.ensemble_size=2']


def _table_value(text: str, key: str) -> str:
  """The last '| key | value |' row of a printed metrics table."""
  rows = [line for line in text.splitlines() if line.startswith(f'| {key} ')]
  return rows[-1].split('|')[2].strip()


def test_probs_of_stacked_weights_are_the_mean_of_the_members():
  config = phantom_config.get_config()
  config.data.image_size, config.model.backbone = 32, 'lenet'
  mesh = parallel.create_mesh()
  tx = create_optimizer(config.optimizer, 1, 1)
  weights = []
  for seed in (0, 1):
    config.seed = seed
    graphdef, state = train_lib.create_train_state(config, 2, tx, mesh)
    weights.append(train_lib.inference_weights(state))
  batch = {'image': np.random.default_rng(0).integers(0, 256, (5, 32, 32, 1), np.uint8)}
  single = [train_lib.make_predict_fn(graphdef, 'none', mesh)(w, batch) for w in weights]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *weights)
  mean = train_lib.make_predict_fn(graphdef, 'none', mesh, members=2)(stacked, batch)
  assert not np.allclose(single[0], single[1], atol=1e-3)  # two different networks
  np.testing.assert_allclose(mean, (single[0] + single[1]) / 2, atol=1e-6)


@pytest.mark.parametrize('size', [0, 65])
def test_ensemble_size_is_validated(size):
  config = phantom_config.get_config()
  config.ensemble_size = size
  with pytest.raises(config_validation.ConfigError, match='ensemble_size'):
    config_validation.validate(config)


@pytest.fixture(scope='module')
def ensemble_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ensemble')
  return workdir, run_main(workdir, *ENSEMBLE).stdout


@pytest.mark.slow
def test_ensemble_averages_members_fits_threshold_on_validation(ensemble_run):
  workdir, stdout = ensemble_run
  ensemble = restore.restore_for_inference(str(workdir))
  members = [restore.restore_for_inference(str(workdir / 'members' / f'seed_{seed}'))
             for seed in (0, 1)]
  assert ensemble.members == 2 and ensemble.step is None
  assert [m.config.seed for m in members] == [0, 1]
  assert ensemble.description == 'ensemble of 2 runs (members/seed_0, members/seed_1)'

  # Its probabilities are the mean of its members'.
  images = export_lib.sample_images(ensemble, 6)
  member_probs = [m.probs(images) for m in members]
  assert not np.allclose(member_probs[0], member_probs[1], atol=1e-4)
  np.testing.assert_allclose(ensemble.probs(images), np.mean(member_probs, 0), atol=1e-6)

  # The members share one split; the threshold is fitted on the ensemble's validation
  # output and saved; each member keeps its own selection.
  ens_splits, _ = restore.predict_splits(ensemble, ('val', 'test'))
  for member in members:
    splits, _ = restore.predict_splits(member, ('val', 'test'))
    for name in ('val', 'test'):
      np.testing.assert_array_equal(splits[name][1], ens_splits[name][1])
    assert member.selection['epoch'] >= 1
  probs, labels = ens_splits['val']
  selection = json.loads((workdir / 'selection.json').read_text())
  assert selection['threshold'] == pytest.approx(
      metrics_lib.choose_threshold(probs[:, 1], labels, 'youden'))
  assert selection['value'] == pytest.approx(metrics_lib.roc_auc(probs[:, 1], labels))
  assert [m['workdir'] for m in selection['members']] == ['members/seed_0', 'members/seed_1']
  assert ensemble.threshold == selection['threshold']

  # The test split, once, at that threshold; --mode=eval reproduces it.
  test_probs, test_labels = ens_splits['test']
  expected = train_lib.metrics_from_probs(test_probs, test_labels, ensemble.class_names,
                                          selection['threshold'])
  evaluated = run_main(workdir, mode='eval', config=None).stdout
  assert evaluated.splitlines()[1] == 'Ensemble on test'
  for key in ('accuracy', 'sensitivity', 'specificity', 'roc_auc'):
    assert _table_value(stdout, key) == _table_value(evaluated, key) == (
        f'{expected.metrics[key]:.4f}')


@pytest.mark.slow
def test_ensemble_resumes_without_training_again(ensemble_run):
  workdir, stdout = ensemble_run
  history = {seed: (workdir / 'members' / f'seed_{seed}' / 'metrics.jsonl').read_text()
             for seed in (0, 1)}
  again = run_main(workdir, *ENSEMBLE).stdout
  for seed, text in history.items():
    assert (workdir / 'members' / f'seed_{seed}' / 'metrics.jsonl').read_text() == text
  assert _table_value(again, 'roc_auc') == _table_value(stdout, 'roc_auc')
  # Another config in the same workdir: refused in one line, nothing trained.
  other = run_main(workdir, *ENSEMBLE, '--config.model.dropout=0.1', check=False)
  assert other.returncode == 2 and 'model.dropout' in other.stderr.splitlines()[-1]


@pytest.mark.slow
def test_tools_take_an_ensemble(ensemble_run, tmp_path):
  workdir, _ = ensemble_run
  ensemble = restore.restore_for_inference(str(workdir))
  images = export_lib.sample_images(ensemble, 4)
  expected = ensemble.probs(images)
  # Grad-CAM's probabilities are the ensemble's; its maps are scaled to peak 1.
  probs, maps = gradcam.GradCAM(ensemble)(images)
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  assert maps.shape[:2] == (4, 2) and maps.max() == pytest.approx(1.0)
  # The exported function computes the same probabilities.
  np.testing.assert_allclose(export_lib.probs_function(ensemble)(images), expected,
                             atol=1e-5)
  assert export_lib.describe(ensemble, 'stablehlo')['model'].startswith('ensemble of 2')
  # An outside dataset: the report names the ensemble.
  summary = evaluate_external.evaluate_external(
      str(workdir), 'phantom/easy=1,train=32,test=16', out=str(tmp_path / 'ext'))
  assert summary['model'] == ensemble.description and summary['step'] is None
  assert 'ensemble of 2 runs' in (tmp_path / 'ext' / 'metrics.md').read_text()
  with pytest.raises(config_validation.ConfigError, match='--step'):
    restore.restore_for_inference(str(workdir), step=4)
  with pytest.raises(ValueError, match='no single network'):
    _ = ensemble.model


@pytest.mark.slow
def test_a_member_of_another_config_is_refused(ensemble_run, tmp_path):
  workdir, _ = ensemble_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  config_path = copy / 'members' / 'seed_1' / 'config.json'
  config = json.loads(config_path.read_text())
  config['optimizer']['learning_rate'] = 0.5
  config_path.write_text(json.dumps(config))
  with pytest.raises(config_validation.ConfigError, match='seed_1 is not a member'):
    restore.restore_for_inference(str(copy))
