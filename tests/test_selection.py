"""Model selection on a validation split: leakage-safe carving, keep-best checkpoint, a
decision threshold fitted on validation, saved, and used by every later evaluation."""

import json

import ml_collections
import numpy as np
import pytest

from spp_resnet.data import splits as splits_lib
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.evaluation.writers import read_metrics
from tests.test_train import run_main


def _metadata(n=400, seed=0):
  """Labels, hashes and patients with many duplicate groups (as in real MRI sets)."""
  rng = np.random.default_rng(seed)
  group = rng.integers(0, n // 4, n)  # ~4 images a group: same pixels
  labels = (group % 3 == 0).astype(np.int64)  # a group never has two labels
  return {'label': labels,
          'sha256': np.array([f'{g:064x}' for g in group]),
          'phash': np.array([f'{(int(g) * 0x9E3779B97F4A7C15) % 2**64:016x}' for g in group]),
          'patient_id': np.array([''] * n)}


def _split_config(**overrides):
  config = ml_collections.ConfigDict({
      'protocol': 'grouped', 'per_class': 0, 'num_test': 0, 'test_fraction': 0.2,
      'num_folds': 0, 'fold': 0, 'near_duplicate_threshold': 0, 'max_per_class': 0,
      'seed': 0, 'val_fraction': 0.0})
  config.update(overrides)
  return config


@pytest.mark.parametrize('protocol', ['grouped', 'stratified', 'paper'])
def test_validation_is_carved_from_train_and_never_shares_a_group(protocol):
  meta = _metadata()
  extra = {'per_class': 1000, 'num_test': 40} if protocol == 'paper' else {}
  without = splits_lib.make_splits(meta, _split_config(protocol=protocol, **extra))
  split = splits_lib.make_splits(meta, _split_config(protocol=protocol, val_fraction=0.25,
                                                     **extra))
  # The test split does not move; train and val partition the old train split.
  np.testing.assert_array_equal(split['test'], without['test'])
  np.testing.assert_array_equal(np.sort(np.r_[split['train'], split['val']]), without['train'])
  # Whole duplicate groups on one side, even under the slice-level protocols.
  assert not set(meta['sha256'][split['train']]) & set(meta['sha256'][split['val']])
  # About the fraction asked, with both classes in it.
  assert 0.18 < len(split['val']) / len(without['train']) < 0.32
  assert set(meta['label'][split['val']]) == {0, 1}


def test_validation_without_hashes_groups_patients():
  meta = _metadata()
  meta = {'label': meta['label'], 'patient_id': np.array([f'p{i // 5}' for i in range(400)])}
  train, val = splits_lib.carve_validation(meta, np.arange(400), val_fraction=0.2, seed=1)
  assert not set(meta['patient_id'][train]) & set(meta['patient_id'][val])


SELECT = ['--config.data.dataset=phantom/easy=1,train=128,test=48',
          '--config.data.split.val_fraction=0.25',
          '--config.selection.threshold=youden',
          '--config.selection.early_stopping_patience=2',
          '--config.optimizer.name=adam', '--config.optimizer.learning_rate=1e-3',
          '--config.num_epochs=5']


@pytest.mark.slow
def test_keep_best_threshold_saved_and_used_by_eval(tmp_path):
  workdir = tmp_path / 'select'
  proc = run_main(workdir, *SELECT)
  selection = json.loads((workdir / 'selection.json').read_text())
  assert selection['metric'] == 'roc_auc' and selection['threshold_rule'] == 'youden'
  assert 0.0 < selection['threshold'] < 1.0
  assert (workdir / 'best_checkpoint' / str(selection['step'])).is_dir()

  history = read_metrics(workdir)
  epochs = [row for row in history if 'train/loss' in row]
  # Validation every epoch; the test split once, at the end, in its own row.
  assert all('val/roc_auc' in row and 'test/accuracy' not in row for row in epochs)
  assert [row for row in history if 'test/accuracy' in row] == history[-1:]
  best = max(epochs, key=lambda row: row['val/roc_auc'])  # first maximum is kept
  assert selection['epoch'] == best['epoch']
  assert selection['value'] == pytest.approx(best['val/roc_auc'])
  # Early stopping: trained until `patience` epochs passed without a better validation.
  assert epochs[-1]['epoch'] == min(5, selection['epoch'] + 2)

  # Eval mode restores the kept checkpoint and its threshold: the same test metrics, and
  # the same validation AUC the selection recorded.
  assert f'>= {selection["threshold"]:.4f}' in proc.stdout
  test_row = history[-1]
  out = run_main(workdir, *SELECT, mode='eval').stdout
  for key in ('accuracy', 'sensitivity', 'specificity', 'roc_auc'):
    assert f'| {key} ' in out and f'{test_row[f"test/{key}"]:.4f}' in out
  # A config that trains something else, or a mistyped workdir: one line, nothing made.
  other = run_main(workdir, *SELECT, '--config.model.head_hidden=(8,)', mode='eval',
                   check=False)
  assert other.returncode == 2 and 'model.head_hidden' in other.stderr.splitlines()[-1]
  missing = run_main(tmp_path / 'typo', *SELECT, mode='eval', check=False)
  assert missing.returncode == 2 and missing.stderr.splitlines()[-1].startswith('error: ')
  assert not (tmp_path / 'typo').exists()
  val = run_main(workdir, *SELECT, '--eval_split=val', mode='eval').stdout
  assert f'{selection["value"]:.4f}' in val
  assert f'step {selection["step"]}' in val


def test_checkpoints_before_min_epoch_fraction_are_not_kept(tmp_path, monkeypatch):
  from spp_resnet.training import train
  monkeypatch.setattr(train, 'inference_weights', lambda state: state)
  config = ml_collections.ConfigDict({'num_epochs': 8, 'selection': {
      'metric': 'roc_auc', 'threshold': 'youden', 'fixed_threshold': 0.5,
      'target_sensitivity': 0.9, 'early_stopping_patience': 0,
      'min_epoch_fraction': 0.25}})
  rng = np.random.default_rng(0)
  labels = np.arange(40) % 2

  def val(auc_noise):  # a validation result whose ROC AUC falls with auc_noise
    p1 = np.clip(labels + auc_noise * rng.standard_normal(40), 0, 1) * 0.9 + 0.05
    return train.metrics_from_probs(np.stack([1 - p1, p1], -1), labels,
                                    ['no_tumor', 'tumor'])

  selector = train._Selector(config, str(tmp_path))
  state = {'w': np.zeros(3, np.float32)}
  # Epoch 1 scores best of all, but 1 < 0.25 * 8: logged, not kept.
  assert not selector.update(val(0.0), state, step=10, epoch=1)
  assert selector.describe() == 'none yet, eligible from epoch 2'
  assert not (tmp_path / 'selection.json').exists()
  assert selector.update(val(1.0), state, step=20, epoch=2)  # the first eligible epoch
  assert json.loads((tmp_path / 'selection.json').read_text())['epoch'] == 2
  selector.close()


def test_threshold_is_applied_to_test_predictions():
  # The train loop's host-side metrics at a threshold = the definition.
  rng = np.random.default_rng(0)
  p1 = rng.random(50)
  labels = (rng.random(50) < p1).astype(np.int64)
  from spp_resnet.training import train
  result = train.metrics_from_probs(np.stack([1 - p1, p1], -1), labels,
                                    ['no_tumor', 'tumor'], threshold=0.3)
  tp = np.sum((p1 >= 0.3) & (labels == 1))
  assert result.metrics['sensitivity'] == pytest.approx(tp / labels.sum())
  assert result.confusion.sum() == 50 and result.threshold == 0.3
  assert result.metrics['roc_auc'] == pytest.approx(metrics_lib.roc_auc(p1, labels))


def test_external_validation_dataset_is_the_whole_val_split():
  meta = _metadata()
  meta['dataset'] = np.where(np.arange(400) < 100, 'brain_tumor', 'brain_tumor_mri/binary')
  split = splits_lib.make_splits(meta, _split_config(val_dataset='brain_tumor'))
  np.testing.assert_array_equal(split['val'], np.arange(100))
  rest = np.sort(np.r_[split['train'], split['test']])
  np.testing.assert_array_equal(rest, np.arange(100, 400))
  # The protocol split of the other parts is the one they would get on their own.
  own = splits_lib.make_splits({k: v[100:] for k, v in meta.items()}, _split_config())
  np.testing.assert_array_equal(split['test'], own['test'] + 100)
  with pytest.raises(ValueError, match='one part of the mix'):
    splits_lib.make_splits(meta, _split_config(val_dataset='figshare_brain_tumor'))
