"""Checkpoints: a damaged latest checkpoint falls back to the newest intact one."""

import logging
from pathlib import Path

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from spp_resnet.training.checkpoint import CheckpointError, Checkpointer


def _state(step: int) -> dict:
  return {'w': jnp.arange(6.0).reshape(2, 3) * step, 'b': jnp.full((3,), step, jnp.int32)}


def _iterator(position: int):
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(position):
    next(iterator)
  return iterator


def _damage(step_dir: Path, how: str):
  """Truncates or garbles every OCDBT data file of a checkpoint's state, or its metadata."""
  if how == 'metadata':
    (step_dir / 'state' / '_METADATA').write_text('{"tree_metadata": {')
    return
  files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  assert files
  for path in files:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if how == 'truncate' else bytes(len(data)))


@pytest.fixture
def two_checkpoints(tmp_path):
  checkpointer = Checkpointer(str(tmp_path))
  for step in (4, 8):
    checkpointer.save(step, _state(step), _iterator(step))
  checkpointer.wait()
  checkpointer.close()
  return tmp_path


@pytest.mark.parametrize('how', ['truncate', 'garble', 'metadata'])
def test_a_damaged_latest_checkpoint_falls_back_to_the_older_one(two_checkpoints, how,
                                                                 caplog):
  _damage(two_checkpoints / 'checkpoints' / '8', how)
  checkpointer = Checkpointer(str(two_checkpoints))
  iterator = _iterator(0)
  with caplog.at_level(logging.WARNING):
    state = checkpointer.restore(_state(0), iterator)
  assert checkpointer.restored_step == 4
  for key, value in _state(4).items():
    np.testing.assert_array_equal(state[key], value)
    assert state[key].dtype == value.dtype
  assert next(iterator) == 4  # the input position of the same step
  skipped = [r.getMessage() for r in caplog.records if 'Skipping checkpoint' in r.getMessage()]
  assert len(skipped) == 1
  assert skipped[0].startswith(
      f'Skipping checkpoint step 8 in {two_checkpoints / "checkpoints" / "8"}: it cannot '
      'be read (')
  # Asked for by its step, the damaged one fails in one line naming it.
  with pytest.raises(CheckpointError) as error:
    checkpointer.restore(_state(0), step=8)
  message = str(error.value)
  assert message.startswith(
      f'Checkpoint step 8 in {two_checkpoints / "checkpoints" / "8"} cannot be read: ')
  assert '\n' not in message and 'tensorstore_spec' not in message
  # The resumed run writes step 8 again, over the damaged one.
  checkpointer.save(8, _state(80))
  checkpointer.wait()
  np.testing.assert_array_equal(checkpointer.restore(_state(0))['w'], _state(80)['w'])
  assert checkpointer.restored_step == 8
  checkpointer.close()


def test_no_readable_checkpoint_is_one_line(two_checkpoints):
  for step in ('4', '8'):
    _damage(two_checkpoints / 'checkpoints' / step, 'truncate')
  checkpointer = Checkpointer(str(two_checkpoints))
  with pytest.raises(CheckpointError, match=r'^No checkpoint in .*checkpoints can be read '
                                            r'\(step 8: .*; step 4: .*\): delete the'):
    checkpointer.restore(_state(0))
  with pytest.raises(CheckpointError, match=r'^No checkpoint of step 5 in .* \(it has '
                                            r'steps 4, 8\)$'):
    checkpointer.restore(_state(0), step=5)
  checkpointer.close()


def test_a_target_of_another_structure_is_not_taken_for_damage(two_checkpoints, caplog):
  checkpointer = Checkpointer(str(two_checkpoints))
  with pytest.raises(ValueError, match='tree structures do not match'):
    checkpointer.restore({**_state(0), 'extra': jnp.zeros(2)})
  assert 'Skipping checkpoint' not in caplog.text
  checkpointer.close()


def test_partial_restore_reads_only_the_weights(two_checkpoints):
  """Inference reads a part of the state: what else the saving version kept (optimizer
  state, running sums of another layout) neither costs a read nor has to match."""
  checkpointer = Checkpointer(str(two_checkpoints))
  weights = checkpointer.restore({'w': _state(0)['w']}, partial=True)
  assert checkpointer.restored_step == 8 and set(weights) == {'w'}
  np.testing.assert_array_equal(weights['w'], _state(8)['w'])
  checkpointer.close()
  whole = Checkpointer(str(two_checkpoints))
  with pytest.raises(ValueError, match='tree structures do not match'):
    whole.restore({'w': _state(0)['w']})  # else the whole state must match
  whole.close()
