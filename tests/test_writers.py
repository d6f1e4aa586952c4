"""Tests for spp_resnet.evaluation.writers and .plots (metric logs and figures)."""

import glob
import json
import logging as std_logging
import math
import os
import struct

import matplotlib.image
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from spp_resnet.evaluation import metrics, plots, writers

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _read_tfrecords(path):
  """Yields the payloads of a TFRecord file, checking both CRCs."""
  with open(path, 'rb') as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,), (header_crc,) = struct.unpack('<Q', header), struct.unpack(
        '<I', data[pos + 8:pos + 12])
    assert header_crc == masked_crc32c(header)
    payload = data[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])
    assert payload_crc == masked_crc32c(payload)
    yield payload
    pos += 16 + length


def _tensorboard_scalars(workdir):
  """{tag: [(step, value)]} from all event files under workdir/tensorboard."""
  scalars = {}
  paths = sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')))
  assert paths
  for path in paths:
    assert os.path.getsize(path) > 0
    for record in _read_tfrecords(path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


# ---- MetricWriter / read_metrics --------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(10, 1, {'train/loss': 0.5, 'train/accuracy': np.float32(0.75)})
    writer.write(20, 2, {'train/loss': np.array(0.25), 'test/accuracy': 0.9,
                         'test/precision/glioma': 1})
  rows = writers.read_metrics(tmp_path)
  assert rows == [
      {'step': 10, 'epoch': 1, 'train/loss': 0.5, 'train/accuracy': 0.75},
      {'step': 20, 'epoch': 2, 'train/loss': 0.25, 'test/accuracy': 0.9,
       'test/precision/glioma': 1.0},
  ]
  # Reopening appends.
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(30, 3, {'train/loss': math.nan})
  rows = writers.read_metrics(tmp_path)
  assert len(rows) == 3 and math.isnan(rows[-1]['train/loss'])


def test_read_metrics_missing_file(tmp_path):
  assert writers.read_metrics(tmp_path) == []


def test_truncated_last_line_is_skipped_and_appending_continues(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(1, 1, {'train/loss': 1.0})
    writer.write(2, 2, {'train/loss': 0.5})
  path = tmp_path / writers.METRICS_FILE
  text = path.read_text()
  path.write_text(text[:-10])  # killed in the middle of writing the second row
  assert [row['step'] for row in writers.read_metrics(tmp_path)] == [1]
  # A resumed run starts on a new line: only the fragment is lost.
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(2, 2, {'train/loss': 0.4})
  rows = writers.read_metrics(tmp_path)
  assert [(row['step'], row['train/loss']) for row in rows] == [(1, 1.0), (2, 0.4)]


def test_resumed_run_replaces_rows_logged_after_checkpoint(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    for step in (100, 200, 300):
      writer.write(step, step // 100, {'train/loss': 1.0})
    writer.write(300, 3, {'test/accuracy': 0.5})  # eval row at the same step is kept
  # Resumed from the checkpoint at step 200: steps 300+ are logged again.
  with writers.MetricWriter(tmp_path, resume_step=200) as writer:
    writer.write(300, 3, {'train/loss': 0.5})
    writer.write(400, 4, {'train/loss': 0.25})
  rows = writers.read_metrics(tmp_path)
  assert [(row['step'], row['train/loss']) for row in rows] == [
      (100, 1.0), (200, 1.0), (300, 0.5), (400, 0.25)]
  # Each row is in the file once: the superseded step-300 rows are gone from it.
  lines = (tmp_path / writers.METRICS_FILE).read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [100, 200, 300, 400]
  # TensorBoard purges later events at a session START logged at the resume step.
  starts = [event.step for path in glob.glob(str(tmp_path / 'tensorboard' / 'events*'))
            for event in map(event_pb2.Event.FromString, _read_tfrecords(path))
            if event.session_log.status == event_pb2.SessionLog.START]
  assert starts == [200]


def test_steps_going_backwards_replace_later_rows(tmp_path):
  # Without resume_step: a resumed run whose first row is below the last one logged.
  with writers.MetricWriter(tmp_path) as writer:
    for step in (100, 200, 300):
      writer.write(step, 1, {'train/loss': 1.0})
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(200, 1, {'train/loss': 0.5})
  rows = writers.read_metrics(tmp_path)
  assert [(row['step'], row['train/loss']) for row in rows] == [(100, 1.0), (200, 0.5)]


def test_tensorboard_events_are_readable(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(10, 1, {'train/loss': 0.5, 'test/accuracy': 0.8})
    writer.write(20, 2, {'train/loss': 0.25})
  scalars = _tensorboard_scalars(tmp_path)
  assert scalars['train/loss'] == [(10, 0.5), (20, 0.25)]
  assert scalars['test/accuracy'] == [(10, pytest.approx(0.8))]


def test_only_process_zero_writes(tmp_path):
  writer = writers.MetricWriter(tmp_path / 'run', process_index=1)
  writer.write(1, 1, {'train/loss': 1.0})
  writer.close()
  assert not (tmp_path / 'run').exists()


# ---- ProgressLogger ---------------------------------------------------------------------


class _FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_progress_logger(caplog):
  clock = _FakeClock()
  progress = writers.ProgressLogger(total_steps=1000, steps_per_epoch=100, batch_size=32,
                                    clock=clock)
  clock.now = 10.0
  with caplog.at_level(std_logging.INFO):
    rates = progress.log(250, {'loss': 0.123456, 'accuracy': 0.5})
  assert rates == {'steps_per_sec': 25.0, 'images_per_sec': 800.0}
  line = caplog.records[-1].getMessage()
  assert line == ('epoch 2.50/10 | step 250/1000 (25.0%) | loss 0.1235 accuracy 0.5'
                  ' | 800.0 img/s | ETA 0:00:30')
  clock.now = 30.0  # slower: 50 steps in 20 s
  with caplog.at_level(std_logging.INFO):
    rates = progress.log(300)
  assert rates['images_per_sec'] == pytest.approx(80.0)
  assert caplog.records[-1].getMessage().endswith('80.0 img/s | ETA 0:04:40')


# ---- Plots ------------------------------------------------------------------------------


def _assert_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and min(image.shape[:2]) > 50


def test_plot_roc(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.random(40) < 0.5
  scores = np.clip(0.4 * labels + 0.6 * rng.random(40), 0, 1)
  fpr, tpr, _ = metrics.roc_curve(scores, labels)
  path = tmp_path / 'plots' / 'roc.png'  # the directory is created
  plots.plot_roc({'spp': (fpr, tpr, metrics.roc_auc(scores, labels)),
                  'gap': (np.array([0, 0.5, 1]), np.array([0, 0.7, 1]), 0.6)}, path)
  _assert_png(path)


@pytest.mark.parametrize('normalize', [False, True])
def test_plot_confusion(tmp_path, normalize):
  path = tmp_path / 'confusion.png'
  confusion = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]])  # an empty row
  plots.plot_confusion(confusion, ['glioma', 'meningioma', 'pituitary'], path,
                       normalize=normalize)
  _assert_png(path)
  with pytest.raises(ValueError):
    plots.plot_confusion(confusion, ['a', 'b'], path)


def test_plot_training_curves_from_metrics_log(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    for epoch in range(1, 4):
      writer.write(epoch * 10, epoch, {'train/loss': 1.0 / epoch, 'train/accuracy': 0.5})
      writer.write(epoch * 10, epoch, {'test/loss': 1.2 / epoch, 'test/accuracy': 0.6})
  path = tmp_path / 'curves.png'
  plots.plot_training_curves(writers.read_metrics(tmp_path), path)
  _assert_png(path)
  with pytest.raises(ValueError):
    plots.plot_training_curves([{'epoch': 1, 'train/loss': 1.0}], path, metrics=('auc',))
