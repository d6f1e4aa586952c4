r"""Trains and evaluates the SPP-ResNet brain-tumor classifier.

  python main.py --config=configs/default.py --workdir=runs/paper
  python main.py --config=configs/default.py --workdir=runs/paper --mode=eval

Re-running a command with the same --workdir resumes from its latest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                  'train: train (or resume) then evaluate; eval: restore the latest '
                  'checkpoint of --workdir and evaluate it.')
flags.DEFINE_string('eval_split', 'test', 'Split to evaluate in --mode=eval.')
config_flags.DEFINE_config_file('config', None, 'Path to an ml_collections config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Imported here so that --help and flag errors come back without loading JAX.
  import jax
  from spp_resnet import cli
  from spp_resnet.training import parallel, train, workdir_lock

  parallel.initialize_distributed()
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  with cli.exit_on_user_error(train.TrainingDivergedError, workdir_lock.WorkdirLockedError):
    if flags.FLAGS.mode == 'train':
      result = train.train_and_evaluate(config, workdir)
      title = 'Final evaluation (test)'
    else:
      result = train.evaluate_checkpoint(config, workdir, flags.FLAGS.eval_split)
      title = f'Checkpoint step {result.step} on {flags.FLAGS.eval_split}'
  if jax.process_index() == 0:
    print(f'\n{title}\n{result.table()}')


if __name__ == '__main__':
  from spp_resnet import cli
  cli.run(main)
