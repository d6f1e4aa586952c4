"""Per-epoch metric logging: JSON lines + TensorBoard, and a console progress line.

`workdir/metrics.jsonl` holds one JSON object per `write` call:
  {"step": 1234, "epoch": 3, "train/loss": 0.41, ...}
It is the source of truth for tables and plots (`read_metrics`); the TensorBoard
events under `workdir/tensorboard/` are for browsing.
"""

from collections.abc import Callable, Mapping
import datetime
import json
import os
import time

from absl import logging
import numpy as np
import tensorboardX

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
_RESUME_KEY = 'resume_step'  # marker line of resumed runs of earlier versions


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and TensorBoard events.

  Only process 0 writes (in a multi-host job every process may call `write`);
  elsewhere it is a no-op. `resume_step`: the checkpoint step a resumed run restarts
  from; what the interrupted run logged after it is dropped from the JSON file (each
  row is kept once) and superseded in TensorBoard.
  """

  def __init__(self, workdir: str | os.PathLike, process_index: int = 0,
               resume_step: int | None = None):
    self._enabled = process_index == 0
    self.path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not self._enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      # Keep each row once: drop what the interrupted run logged after its checkpoint
      # (it is logged again), and any fragment a kill left, in one atomic rewrite.
      kept = [r for r in read_metrics(workdir) if r['step'] <= resume_step]
      with open(self.path + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(r, allow_nan=True) + '\n' for r in kept)
      os.replace(self.path + '.tmp', self.path)
    ends_mid_line = os.path.exists(self.path) and _last_byte(self.path) not in (b'', b'\n')
    self._file = open(self.path, 'a', encoding='utf-8')
    if ends_mid_line:
      # A killed run left half a line; start on a fresh one so that only the fragment
      # is unreadable, not also the next row.
      self._file.write('\n')
    self._tensorboard = tensorboardX.SummaryWriter(
        os.path.join(os.fspath(workdir), TENSORBOARD_DIR), purge_step=resume_step)

  def write(self, step: int, epoch: int, scalars: Mapping[str, float]) -> None:
    """Logs `scalars` (Python, NumPy or fetched JAX scalars) at `step`."""
    if not self._enabled:
      return
    values = {key: float(np.asarray(value)) for key, value in scalars.items()}
    row = {'step': int(step), 'epoch': int(epoch), **values}
    # allow_nan: a diverged loss is written as NaN (which json.loads reads back).
    self._file.write(json.dumps(row, allow_nan=True) + '\n')
    self._file.flush()  # a killed run keeps everything written so far
    for key, value in values.items():
      self._tensorboard.add_scalar(key, value, global_step=int(step))
    self._tensorboard.flush()

  def write_step(self, step: int, scalars: Mapping[str, float]) -> None:
    """Logs `scalars` at `step` to TensorBoard only (metrics.jsonl: one row an epoch)."""
    if not self._enabled:
      return
    for key, value in scalars.items():
      self._tensorboard.add_scalar(key, float(np.asarray(value)), global_step=int(step))

  def close(self) -> None:
    if self._enabled and not self._file.closed:
      self._file.close()
      self._tensorboard.close()

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _last_byte(path: str) -> bytes:
  with open(path, 'rb') as f:
    f.seek(0, os.SEEK_END)
    if f.tell() == 0:
      return b''
    f.seek(-1, os.SEEK_END)
    return f.read(1)


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The rows of `workdir/metrics.jsonl`, in order; [] if there is none.

  Lines that do not parse (a row cut short by a killed run) are skipped with a
  warning. Rows of an interrupted run past the step the next run resumed from are
  dropped: at its resume marker, or else when steps go backwards.
  """
  path = os.path.join(os.fspath(workdir), METRICS_FILE)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        logging.warning('%s:%d: skipping unreadable line %r', path, line_number, line[:80])
        continue
      if _RESUME_KEY in row:
        rows = [r for r in rows if r['step'] <= row[_RESUME_KEY]]
        continue
      if rows and row['step'] < rows[-1]['step']:
        rows = [r for r in rows if r['step'] < row['step']]
      rows.append(row)
  return rows


class ProgressLogger:
  """Logs one console line per call: epoch/step progress, loss etc., images/s, ETA.

  It never touches device arrays: pass scalars already fetched to the host (the
  fetch at the log interval is the only sync point of the training loop). Throughput
  is measured between consecutive calls, so the first one includes compilation.
  """

  def __init__(self, total_steps: int, steps_per_epoch: int, batch_size: int,
               start_step: int = 0, clock: Callable[[], float] = time.perf_counter):
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    self._clock = clock
    self._last_step = start_step
    self._last_time = clock()

  def log(self, step: int, scalars: Mapping[str, float] | None = None) -> dict[str, float]:
    """Logs progress at `step` (steps done so far) and returns the throughput,
    {'steps_per_sec', 'images_per_sec'}, e.g. to pass on to `MetricWriter`."""
    now = self._clock()
    elapsed = now - self._last_time
    steps_per_sec = (step - self._last_step) / elapsed if elapsed > 0 else 0.0
    self._last_step, self._last_time = step, now

    num_epochs = self.total_steps / self.steps_per_epoch
    parts = [f'epoch {step / self.steps_per_epoch:.2f}/{num_epochs:g}',
             f'step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%)']
    if scalars:
      parts.append(' '.join(f'{key} {float(value):.4g}' for key, value in scalars.items()))
    parts.append(f'{steps_per_sec * self.batch_size:.1f} img/s')
    if steps_per_sec > 0:
      eta_seconds = round((self.total_steps - step) / steps_per_sec)
      parts.append(f'ETA {datetime.timedelta(seconds=eta_seconds)}')
    logging.info(' | '.join(parts))
    return {'steps_per_sec': steps_per_sec,
            'images_per_sec': steps_per_sec * self.batch_size}
