r"""Trains and evaluates the SPP-ResNet brain-tumor classifier.

  python main.py --config=configs/default.py --workdir=runs/paper
  python main.py --workdir=runs/paper --mode=eval [--eval_split=val] [--step=N]

(`spp-resnet` after `pip install -e .` is the same command; main.py at the repository
root calls this module.)

Re-running a command with the same --workdir resumes from its latest checkpoint.
Evaluation uses the run's own saved config (WORKDIR/config.json); `--config.*` overrides
may change only paths and the evaluation batch size.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                  'train: train (or resume) then evaluate; eval: restore the run in '
                  '--workdir (its kept or latest checkpoint) and evaluate it.')
flags.DEFINE_enum('eval_split', 'test', ['train', 'val', 'test'],
                  'Split to evaluate in --mode=eval.')
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate in --mode=eval (default: '
                     'the checkpoint kept on validation, else the latest).')
config_flags.DEFINE_config_file('config', None, 'Path to an ml_collections config file '
                                '(--mode=eval: optional, the run\'s own config is used).',
                                lock_config=True)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if flags.FLAGS.mode == 'train' and flags.FLAGS.config is None:
    raise app.UsageError('--config is required to train.')
  # Imported here so that --help and flag errors come back without loading JAX.
  import jax
  from spp_resnet import cli
  from spp_resnet.training import parallel, restore, train, workdir_lock

  parallel.initialize_distributed()
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  with cli.exit_on_user_error(train.TrainingDivergedError, workdir_lock.WorkdirError):
    if flags.FLAGS.mode == 'train':
      result = train.train_and_evaluate(config, workdir)
      title = 'Final evaluation (test)'
    else:
      overrides = cli.config_overrides(sys.argv, config) if config is not None else {}
      result = restore.evaluate_checkpoint(workdir, flags.FLAGS.eval_split,
                                           step=flags.FLAGS.step, overrides=overrides)
      what = 'Ensemble' if result.step is None else f'Checkpoint step {result.step}'
      title = f'{what} on {flags.FLAGS.eval_split}'
  if jax.process_index() == 0:
    print(f'\n{title}\n{result.table()}')


def run():
  """The `spp-resnet` console script and `python main.py`."""
  from spp_resnet import cli
  cli.run(main)


if __name__ == '__main__':
  run()
