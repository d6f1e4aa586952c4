"""Orbax checkpoints of the train state together with the input iterator's position.

Each checkpoint holds the train state and the Grain iterator state of the same step, so a
run restarted in the same workdir continues with exactly the batches it would have seen.
Orbax writes to a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, save_every_steps: int = 0,
               name: str = 'checkpoints'):
    self.directory = os.path.join(os.path.abspath(workdir), name)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'data'))
    self.save_every_steps = save_every_steps

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator=None) -> None:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, target, data_iterator=None, step: int | None = None):
    """Restores into `target`'s structure, dtypes and shardings (and the iterator).

    `target` is a state of the same structure (arrays or ShapeDtypeStructs); only its
    shapes, dtypes and shardings are used.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    items = {'state': ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
