"""Orbax checkpoints of the train state together with the input iterator's position.

Each checkpoint holds the train state and the Grain iterator state of the same step, so a
run restarted in the same workdir continues with exactly the batches it would have seen.
Orbax writes to a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint intact. A checkpoint damaged afterwards (a full
disk, a bad copy) is skipped when restoring the latest one: the next older one is used,
with a warning naming the one skipped.
"""

from __future__ import annotations

import json
import os
import re

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored; the message names its step and folder."""


_TENSORSTORE_ERROR = re.compile(r'^[A-Z_]+: ')  # 'DATA_LOSS: ...', 'OUT_OF_RANGE: ...'


def _is_damage(error: Exception) -> bool:
  """Whether a restore failed on the checkpoint's files, not on a target that does not
  fit them (another state structure: a ValueError that callers handle themselves)."""
  if isinstance(error, (OSError, json.JSONDecodeError)):
    return True
  if isinstance(error, ValueError):
    return bool(_TENSORSTORE_ERROR.match(str(error)))
  return isinstance(error, KeyError) and 'not found in the checkpoint' in str(error)


def _reason(error: Exception) -> str:
  """The gist of a restore error, in one line.

  TensorStore's read the code, every layer it opened, the failing file and the cause,
  then its whole JSON spec: 'OUT_OF_RANGE: Error opening "cast" driver: ...: Error
  reading ... of local file "F": Requested byte range ... [tensorstore_spec=...]'.
  """
  text = (str(error) or type(error).__name__).split(' [tensorstore_spec')[0]
  parts = text.splitlines()[0].split(': ')
  if len(parts) > 3:  # the code, then the file and the cause
    parts = [parts[0], *parts[-2:]]
  return ': '.join(parts)[:500]


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, name: str = 'checkpoints'):
    self.directory = os.path.join(os.path.abspath(workdir), name)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'data'))
    self.restored_step: int | None = None  # the step the last `restore` read

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, data_iterator=None) -> None:
    """Saves `step`, replacing a checkpoint of that step: one a run resumed from an
    older step (after skipping a damaged one) writes again."""
    if step in self._manager.all_steps():
      self._manager.delete(step)
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, target, data_iterator=None, step: int | None = None, *,
              partial: bool = False):
    """Restores into `target`'s structure, dtypes and shardings (and the iterator).

    `target` is a state of the same structure (arrays or ShapeDtypeStructs); only its
    shapes, dtypes and shardings are used. step=None: the newest checkpoint that can be
    read; one that cannot is skipped with a warning naming it. The step restored is
    `self.restored_step`. `partial=True`: `target` names a part of the saved state (a
    train state's weights, e.g.) and only that part is read: what inference needs, and
    readable whatever else the saving version kept in its state.

    Raises:
      FileNotFoundError: there is no checkpoint.
      CheckpointError: `step` is not there or its files cannot be read, or (step=None)
        no checkpoint's can.
      ValueError: `target` does not fit the checkpoint (another structure).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    if step is not None and step not in steps:
      raise CheckpointError(f'No checkpoint of step {step} in {self.directory} (it has '
                            f'steps {", ".join(map(str, sorted(steps)))})')
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    unreadable = []
    for candidate in steps if step is None else [step]:
      items = {'state': ocp.args.PyTreeRestore(
          abstract, ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True) if partial else ocp.args.StandardRestore(abstract)}
      if data_iterator is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(**items))
      except (ValueError, OSError, KeyError) as e:
        if not _is_damage(e):
          raise
        if step is not None:
          raise CheckpointError(f'Checkpoint step {step} in {self.step_directory(step)} '
                                f'cannot be read: {_reason(e)}') from e
        logging.warning('Skipping checkpoint step %d in %s: it cannot be read (%s); '
                        'trying the next older one.', candidate,
                        self.step_directory(candidate), _reason(e))
        unreadable.append(f'{candidate}: {_reason(e)}')
        continue
      self.restored_step = candidate
      return restored['state']
    raise CheckpointError(f'No checkpoint in {self.directory} can be read (step '
                          f'{"; step ".join(unreadable)}): delete the folder to start over')

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
