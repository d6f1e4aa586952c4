"""End-to-end training: it learns, resumes exactly after SIGKILL, is data-parallel."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from spp_resnet.evaluation.writers import read_metrics

ROOT = Path(__file__).resolve().parents[1]

# A small model on small phantom images: each run takes seconds on 2 CPU cores.
TINY = [
    '--config.data.image_size=32',
    '--config.model.head_hidden=(32,)',
    '--config.batch_size=16',
    '--config.eval_batch_size=32',
    '--config.num_epochs=3',
    '--config.log_every_steps=5',
    '--config.checkpoint_every_steps=4',
    # Two kept: a resumed run needs one; 100+ MB each, and the suite's disk use counts.
    '--config.keep_checkpoints=2',
]


def run_main(workdir, *overrides, env=None, mode='train', check=True, wait=True,
             config='configs/phantom.py', extra=()):
  """main.py on `config` with TINY and `overrides` (config=None: no --config at all)."""
  config_flags = [f'--config={config}', *TINY, *overrides] if config else []
  cmd = [sys.executable, str(ROOT / 'main.py'), f'--workdir={workdir}', f'--mode={mode}',
         *config_flags, *extra]
  full_env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True)
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                         f'{proc.stderr[-6000:]}')
  return proc


def final_state(workdir):
  """(step, state) of the latest checkpoint, restored onto this process's one device.

  An explicit target lets a checkpoint written on 4 devices load here.
  """
  root = Path(workdir) / 'checkpoints'
  step = max(int(p.name) for p in root.iterdir() if p.name.isdigit())
  path = root / str(step) / 'state'
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, 'item_metadata', metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  return step, checkpointer.restore(path, target)


def flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# 96 training images: 6 steps an epoch, 12 in all, checkpoints at steps 4, 8 and 12.
SMALL = ['--config.data.dataset=phantom/easy=1,train=96,test=32', '--config.num_epochs=2']


@pytest.mark.slow
def test_training_learns_and_eval_restores_metrics(tmp_path):
  workdir = tmp_path / 'learn'
  # Adam: the phantom's SGD at lr 0.01 needs more than 3 epochs at 32 px (1 x 1 maps).
  adam = ['--config.optimizer.name=adam', '--config.optimizer.learning_rate=1e-3']
  # 75 steps: checkpoints at 25, 50 and 75, all kept (--step picks an older one below).
  every_25 = ['--config.checkpoint_every_steps=25', '--config.keep_checkpoints=3']
  run_main(workdir, *adam, *every_25, '--config.profile_steps=(2,3)')
  history = read_metrics(workdir)
  assert [row['epoch'] for row in history] == [1, 2, 3]
  assert list((workdir / 'profile').glob('plugins/profile/*/*.xplane.pb'))
  # The phantom lesions are learnable: clearly better than the majority class.
  assert history[-1]['test/accuracy'] >= 0.8, history[-1]
  assert history[-1]['train/loss'] < history[0]['train/loss']
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  # Observability: the epoch's learning rate, norms, throughput and input wait.
  last = history[-1]
  assert 0 < last['train/learning_rate'] < history[0]['train/learning_rate'] <= 1e-3  # cosine
  assert last['train/grad_norm'] > 0 and last['train/param_norm'] > 0
  assert last['train/images_per_sec'] > 0 and last['train/data_wait_s'] >= 0
  # Where the time went: every phase measured, together within the run's total.
  timing = json.loads((workdir / 'timing.json').read_text())
  phases = ('data', 'init', 'restore', 'compile', 'train', 'eval', 'checkpoint', 'profile',
            'test')
  assert list(timing) == [*phases, 'total'], timing
  assert all(timing[k] >= 0 for k in phases) and timing['compile'] > 0 < timing['train']
  assert sum(timing[k] for k in phases) <= timing['total'] + 0.01
  # --mode=eval restores the checkpoint and reproduces the last reported metrics exactly.
  evaluation = run_main(workdir, *adam, *every_25, mode='eval')
  for key in ('accuracy', 'f1', 'roc_auc', 'specificity'):
    value = history[-1][f'test/{key}']
    assert f'{value:.4f}' in evaluation.stdout, (key, value, evaluation.stdout)
  # Without --config, from the run's own config.json: the same numbers; --step picks a
  # checkpoint; a field that changes the model is refused in one line.
  own = run_main(workdir, mode='eval', config=None)
  assert evaluation.stdout.split('Checkpoint step')[1] == own.stdout.split('Checkpoint step')[1]
  at_25 = run_main(workdir, mode='eval', config=None, extra=['--step=25'])
  assert 'Checkpoint step 25 on test' in at_25.stdout
  refused = run_main(workdir, '--config.model.head_hidden=(16,)', mode='eval', check=False)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines()[-1].startswith(
      f'error: {workdir} is evaluated with its own config')
  assert 'model.head_hidden: [32] -> [16] would change what was trained' in refused.stderr
  no_val = run_main(workdir, mode='eval', config=None, extra=['--eval_split=val'],
                    check=False)
  assert no_val.returncode == 2
  assert no_val.stderr.strip().splitlines()[-1] == (
      f"error: --eval_split='val': {workdir} has the splits train, test (it was trained "
      'without a validation split).')
  # The Python API restores the same model: the same metrics, in this process.
  from spp_resnet.training import restore
  result = restore.evaluate_checkpoint(str(workdir))
  for key in ('accuracy', 'f1', 'roc_auc', 'specificity'):
    assert result.metrics[key] == history[-1][f'test/{key}'], key
  restored = restore.restore_for_inference(str(workdir))
  assert (restored.class_names, restored.threshold) == (result.class_names, 0.5)
  # Re-running the workdir with a config that trains something else is refused in one
  # line, before anything in it is touched.
  saved = (workdir / 'config.json').read_text()
  other = run_main(workdir, *adam, *every_25, '--config.model.head_hidden=(16,)',
                   check=False)
  assert other.returncode == 2
  assert other.stderr.strip().splitlines()[-1].startswith('error: ')
  # (TINY has head_hidden=(32,): the last override wins, it is not appended to.)
  assert 'model.head_hidden: [32] -> [16]' in other.stderr
  assert (workdir / 'config.json').read_text() == saved
  assert read_metrics(workdir) == history


BOHAJU = ROOT.parent / 'shared' / 'data' / 'bohaju_brain_tumor_sample'


@pytest.mark.skipif(not BOHAJU.is_dir(), reason='../shared/data not available')
@pytest.mark.slow
def test_real_mri_training_beats_the_majority_class(tmp_path):
  """The paper's own dataset (the 316 real Bohaju slices there are here), a leakage-safe
  grouped split, a small ResNet-18 on 48 px: test accuracy clearly above always
  answering the test split's majority class."""
  from spp_resnet.data import sources, splits
  from spp_resnet.training.restore import load_run_config
  workdir = tmp_path / 'bohaju'
  run_main(workdir, '--config.data.dataset=brain_tumor',
           f'--config.data.manual_dir={BOHAJU}', f'--config.data.data_dir={tmp_path / "tfds"}',
           '--config.data.split.protocol=grouped', '--config.data.split.test_fraction=0.3',
           '--config.data.image_size=48', '--config.num_epochs=6',
           '--config.optimizer.name=adam', '--config.optimizer.learning_rate=1e-3')
  last = read_metrics(workdir)[-1]
  config = load_run_config(str(workdir))
  pooled = sources.load_pooled('brain_tumor', data_dir=str(tmp_path / 'tfds'),
                                manual_dir=str(BOHAJU))
  test = splits.make_splits(pooled.metadata, config.data.split)['test']
  majority = np.bincount(np.asarray(pooled.metadata['label'])[test]).max() / len(test)
  assert last['test/num_examples'] == len(test) > 80
  assert last['test/accuracy'] >= majority + 0.1, (last, majority)
  assert last['test/roc_auc'] >= 0.8, last


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
  reference_dir = tmp_path / 'reference'
  run_main(reference_dir, *SMALL)
  workdir = tmp_path / 'killed'
  proc = run_main(workdir, *SMALL, wait=False)
  checkpoints = workdir / 'checkpoints'
  deadline = time.time() + 300
  # Kill mid-training, once the first checkpoint (step 4 of 12) is complete: Orbax
  # renames its temporary directory to the step number when the save is done.
  while not (checkpoints / '4').is_dir():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_at_kill = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert steps_at_kill[-1] < 12, f'run finished before the kill: {steps_at_kill}'
  resumed = run_main(workdir, *SMALL)
  assert 'Resuming from the checkpoint' in resumed.stderr
  step_a, state_a = final_state(reference_dir)
  step_b, state_b = final_state(workdir)
  assert step_a == step_b == 12
  a, b = flat(state_a), flat(state_b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert _without_timings(read_metrics(reference_dir)) == _without_timings(read_metrics(workdir))


def _without_timings(rows):
  """Metric rows without the wall-clock figures (throughput, input wait)."""
  return [{k: v for k, v in row.items() if k not in ('train/images_per_sec',
                                                      'train/data_wait_s')} for row in rows]


# Three steps: within float tolerance. Over more steps max-pool and ReLU decisions flip on
# reduction-order noise and runs drift apart (measured: 1e-7 after 3 steps, 1e-2 after 12).
FEW_STEPS = ['--config.data.dataset=phantom/easy=1,train=48,test=16', '--config.num_epochs=1']


def _train_params(workdir, env):
  run_main(workdir, *FEW_STEPS, env=env)
  return flat(final_state(workdir)[1]['params'])


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  one = _train_params(tmp_path / 'one', {'XLA_FLAGS': '--xla_force_host_platform_device_count=1'})
  four = _train_params(tmp_path / 'four',
                       {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  for key in one:
    np.testing.assert_allclose(one[key], four[key], rtol=2e-4, atol=2e-5, err_msg=key)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _two_processes(workdir, *overrides):
  port = _free_port()
  procs = [run_main(workdir, *FEW_STEPS, *overrides, wait=False, env={
      'JAX_COORDINATOR_ADDRESS': f'localhost:{port}', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': str(i), 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'})
      for i in range(2)]
  return procs, [p.communicate(timeout=600)[0] for p in procs]


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
  workdir = tmp_path / 'distributed'
  procs, outputs = _two_processes(workdir)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  assert 'Process 1 of 2' in outputs[1]
  # Mixup across CPU processes would hang in its first step (the reversed batch moves
  # between them, a collective-permute that jax 0.10's CPU collectives never finish):
  # refused at once, in one line naming the field.
  procs, outputs = _two_processes(tmp_path / 'mixup', '--config.loss.mixup_alpha=0.2')
  for p, out in zip(procs, outputs):
    assert p.returncode == 2, out[-3000:]
    assert 'error: config.loss.mixup_alpha=0.2: cannot be used by 2 CPU processes' in out
  single = _train_params(tmp_path / 'single',
                         {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  both = flat(final_state(workdir)[1]['params'])
  for key in single:
    np.testing.assert_allclose(single[key], both[key], rtol=2e-4, atol=2e-5, err_msg=key)


@pytest.mark.slow
def test_divergence_is_one_line_and_keeps_only_finite_checkpoints(tmp_path):
  workdir = tmp_path / 'nan'
  fast = ['--config.log_every_steps=2', '--config.checkpoint_every_steps=2', *SMALL]
  proc = run_main(workdir, *fast, '--config.optimizer.learning_rate=1e3', check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and 'futures after shutdown' not in proc.stderr
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('error: Training diverged: ') and 'step None' not in line
  step, state = final_state(workdir)
  assert f'The last checkpoint (step {step})' in line
  assert all(np.isfinite(v).all() for v in flat(state).values())
  # The advice works: a lower learning rate is accepted for resuming this workdir.
  again = run_main(workdir, *fast, '--config.optimizer.learning_rate=1e-4', check=False)
  assert 'another config' not in again.stderr
  assert f'Resuming from the checkpoint at step {step}' in again.stderr


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path):
  import json
  import socket
  workdir = tmp_path / 'locked'
  workdir.mkdir()
  lock = workdir / 'run.lock'
  # A live holder (this test's own process): refused in one line, the lock left alone.
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid()}))
  proc = run_main(workdir, *SMALL, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(f'error: {workdir} is in use')
  assert lock.exists() and not (workdir / 'checkpoints').exists()
  # A holder that is gone (a killed run): taken over, trained, released.
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead.pid}))
  run_main(workdir, *SMALL)
  assert not lock.exists() and (workdir / 'checkpoints').is_dir()


@pytest.mark.slow
def test_a_workdir_that_cannot_be_written_is_one_line(tmp_path):
  # /proc refuses new files even to root (chmod would not stop root).
  proc = run_main('/proc/spp_resnet_run', *SMALL, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'error: --workdir=/proc/spp_resnet_run is not writable (')


@pytest.mark.slow
def test_an_ibn_resnet_trains_and_restores_to_the_same_predictions(tmp_path):
  """IBN-Net's instance norms (model.ibn) go through training, the checkpoint and the
  restored model; its parameters are the ones the checkpoint holds."""
  from spp_resnet.training import restore
  workdir = tmp_path / 'ibn'
  run_main(workdir, *SMALL, '--config.model.ibn=b')
  last = read_metrics(workdir)[-1]
  assert np.isfinite(last['train/loss'])
  result = restore.evaluate_checkpoint(str(workdir))
  for key in ('accuracy', 'roc_auc', 'loss'):
    assert result.metrics[key] == last[f'test/{key}'], key
  params = flat(final_state(workdir)[1]['params'])
  assert any('sum_norm' in key for key in params) and any("'stem_bn']['scale'" in key
                                                          for key in params)
