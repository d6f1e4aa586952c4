r"""Predictions of a trained run for unlabelled scans: files, folders or arrays.

  python -m spp_resnet.predict --workdir=RUN PATH... [--out=FILE.csv|FILE.json] [--cam]

PATHs are files or folders (searched recursively): PNG/JPEG/TIFF/BMP, DICOM, NIfTI and
figshare `.mat` files (`spp_resnet.inference.readers`). Each slice is preprocessed as the
run's training images were (`RestoredModel.prepare`) and classified in fixed-size batches
(the last one padded: one compile), on device, at the run's decision threshold, or at
--threshold: a probability, or a site threshold fitted on labelled images of the site
(`evaluate_external --save_threshold`, `inference/site_threshold.py`).
--fit_threshold=FILE fits a site threshold on the given scans themselves, without labels
(where two Gaussians fitted to the model's logits cross; a batch of the site's scans
holding both classes in numbers), writes it to FILE for later --threshold=FILE, and
decides these scans at it.

Output (--out, default WORKDIR/predictions/predictions.csv):
- CSV: one row per slice: path, slice (frame or slice number; empty for a 2-D file),
  P(class) for each class, the predicted class, the Grad-CAM overlay (with --cam) and
  the error that made a file be skipped (then nothing else is filled in). Files with
  several slices (NIfTI volumes, multi-frame DICOM) are summarized in FILE_volumes.csv:
  slices predicted per class, each class's highest probability and its slice, and the
  volume's class: binary, positive if any slice is; more classes, the class most slices
  have.
- JSON: the same as {"predictions": [...], "volumes": [...], "skipped": [...]}, with the
  run, checkpoint step, class names and threshold.
--cam writes each slice's Grad-CAM of its predicted class (or --cam_class) over the
model's input image, as PNG in OUT_DIR/gradcam/ (`spp_resnet.inference.gradcam`).

A file that cannot be read is logged by name, listed as skipped, and the rest go on.
In Python:

  predictor = Predictor.from_workdir('runs/scratch')
  report = predictor.predict('scans/')          # or a path list, a 2-D array, arrays
  report.probs, report.classes, report.write('predictions.csv')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import csv
import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Any

from absl import app, flags, logging
import jax
import numpy as np

from spp_resnet import cli
from spp_resnet.inference import gradcam as gradcam_lib
from spp_resnet.inference import readers
from spp_resnet.inference import site_threshold
from spp_resnet.training import parallel
from spp_resnet.training import restore

FLAGS = flags.FLAGS
LOG_EVERY_SECONDS = 10.0


@dataclasses.dataclass
class Prediction:
  path: str            # the file, or 'array[i]' for the i-th array given
  slice: int | None    # frame / slice number within the file; None for a 2-D file
  probs: np.ndarray    # [K] class probabilities
  predicted: int       # class index at the run's decision threshold
  cam: str = ''        # the Grad-CAM overlay PNG, when asked for


@dataclasses.dataclass
class VolumeSummary:
  """The slices of one multi-slice file (NIfTI volume, multi-frame DICOM) together."""
  path: str
  num_slices: int
  counts: np.ndarray         # [K] slices predicted as each class
  max_probs: np.ndarray      # [K] each class's highest probability over the slices
  max_slices: np.ndarray     # [K] the slice where it is reached
  predicted: int             # binary: positive if any slice is; else the most slices'

  @classmethod
  def of(cls, rows: Sequence[Prediction]) -> VolumeSummary:
    probs = np.stack([r.probs for r in rows])
    counts = np.bincount([r.predicted for r in rows], minlength=probs.shape[1])
    best = probs.argmax(axis=0)
    predicted = int(counts[1] > 0) if len(counts) == 2 else int(counts.argmax())
    return cls(rows[0].path, len(rows), counts, probs.max(axis=0),
               np.asarray([rows[i].slice for i in best]), predicted)


@dataclasses.dataclass
class Report:
  """Everything `Predictor.predict` found, in input order."""
  class_names: list[str]
  threshold: float | None
  predictions: list[Prediction]
  skipped: list[tuple[str, str]]  # (path, why)
  run: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def probs(self) -> np.ndarray:
    """[N, K] probabilities of every predicted slice."""
    return np.stack([p.probs for p in self.predictions]) if self.predictions else (
        np.zeros((0, len(self.class_names)), np.float32))

  @property
  def classes(self) -> np.ndarray:
    return np.asarray([p.predicted for p in self.predictions], np.int64)

  @property
  def volumes(self) -> list[VolumeSummary]:
    by_path = itertools.groupby((p for p in self.predictions if p.slice is not None),
                                key=lambda p: p.path)
    return [VolumeSummary.of(list(rows)) for _, rows in by_path]

  def write(self, path: str) -> list[str]:
    """CSV or JSON by the suffix of `path`; returns the files written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith('.json'):
      with open(path, 'w', encoding='utf-8') as f:
        json.dump(self._json(), f, indent=1)
      return [path]
    return self._write_csv(path)

  def _json(self) -> dict[str, Any]:
    names = self.class_names
    return {
        **self.run, 'class_names': names, 'threshold': self.threshold,
        'predictions': [
            {'path': p.path, 'slice': p.slice,
             'probs': dict(zip(names, map(float, p.probs))),
             'predicted': names[p.predicted], **({'cam': p.cam} if p.cam else {})}
            for p in self.predictions],
        'volumes': [
            {'path': v.path, 'slices': v.num_slices, 'predicted': names[v.predicted],
             'slices_per_class': dict(zip(names, map(int, v.counts))),
             'max_probs': dict(zip(names, map(float, v.max_probs))),
             'slice_of_max': dict(zip(names, map(int, v.max_slices)))}
            for v in self.volumes],
        'skipped': [{'path': path, 'error': why} for path, why in self.skipped],
    }

  def _write_csv(self, path: str) -> list[str]:
    names = self.class_names
    with open(path, 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['path', 'slice', *(f'p_{n}' for n in names), 'predicted', 'cam',
                       'error'])
      for p in self.predictions:
        writer.writerow([p.path, '' if p.slice is None else p.slice,
                         *(f'{q:.6f}' for q in p.probs), names[p.predicted], p.cam, ''])
      for skipped_path, why in self.skipped:
        writer.writerow([skipped_path, '', *[''] * len(names), '', '', why])
    written = [path]
    if volumes := self.volumes:
      stem, _ = os.path.splitext(path)
      written.append(f'{stem}_volumes.csv')
      with open(written[-1], 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['path', 'slices', 'predicted', *(f'slices_{n}' for n in names),
                         *(f'max_p_{n}' for n in names), *(f'slice_of_max_{n}' for n in names)])
        for v in volumes:
          writer.writerow([v.path, v.num_slices, names[v.predicted], *v.counts,
                           *(f'{q:.6f}' for q in v.max_probs), *v.max_slices])
    return written


@dataclasses.dataclass
class _Batch:
  slices: list[readers.Slice]
  images: np.ndarray  # uint8 [batch_size, S, S, 1], zero-padded past len(slices)


class Predictor:
  """A trained run applied to unlabelled images (see the module docstring)."""

  def __init__(self, restored, *, batch_size: int = 32,
               dicom_window: str | tuple[float, float] = 'file',
               nifti_axis: str | int = 'axial'):
    if jax.process_count() > 1:
      raise ValueError('Prediction runs on one host.')
    self.restored = restored
    devices = restored.mesh.size
    self.batch_size = -(-batch_size // devices) * devices  # whole batches per device
    self.read_options = {'dicom_window': dicom_window, 'nifti_axis': nifti_axis}
    self._gradcam = None

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, *, threshold: str = '',
                   **kwargs) -> Predictor:
    """The run's kept checkpoint and threshold (`restore.restore_for_inference`);
    `threshold`: a probability or site threshold file to decide at instead."""
    restored = restore.restore_for_inference(workdir, step)
    if threshold:
      restored = site_threshold.apply(restored, threshold)
    return cls(restored, **kwargs)

  @property
  def class_names(self) -> list[str]:
    return self.restored.class_names

  def predict(self, inputs: str | os.PathLike | np.ndarray | Iterable[Any], *,
              cam_dir: str = '', cam_class: str = '') -> Report:
    """Predictions for `inputs`: a path (file or folder), a 2-D image array, or a
    sequence of those. `cam_dir`: also write Grad-CAM overlays there, of the predicted
    class or of `cam_class`."""
    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
      inputs = [inputs]
    inputs = list(inputs)
    report = Report(self.class_names, self.restored.threshold, [], [], run={
        'workdir': self.restored.workdir, 'step': self.restored.step,
        'model': self.restored.description,
        **({'threshold_source': self.restored.threshold_source}
           if self.restored.threshold_source else {})})
    cam_target = None
    if cam_class:
      if cam_class not in self.class_names:
        raise ValueError(f'cam_class {cam_class!r} is not one of {self.class_names}.')
      cam_target = self.class_names.index(cam_class)
    if cam_dir and self._gradcam is None:
      self._gradcam = gradcam_lib.GradCAM(self.restored)
    cam_names = _CamNames(cam_dir, [x for x in inputs if not isinstance(x, np.ndarray)])
    progress = _Progress()

    def finish(batch: _Batch, outputs) -> None:
      outputs = jax.device_get(outputs)
      probs, maps = outputs if cam_dir else (outputs, None)
      probs = np.asarray(probs)[:len(batch.slices)]
      for i, (item, p, c) in enumerate(zip(batch.slices, probs, self.restored.decide(probs))):
        row = Prediction(item.path, item.index, p, int(c))
        if maps is not None:
          row.cam = cam_names.path(item)
          gradcam_lib.save_overlay(row.cam, batch.images[i],
                                   maps[i, int(c) if cam_target is None else cam_target])
        report.predictions.append(row)
      progress.update(len(batch.slices))

    pending = None  # the batch on device while the host reads the next one
    for batch in self._batches(self._slices(inputs, report.skipped, progress)):
      outputs = self._dispatch(batch.images, with_cam=bool(cam_dir))
      if pending is not None:
        finish(*pending)
      pending = batch, outputs
    if pending is not None:
      finish(*pending)
    progress.done(len(report.skipped))
    return report

  def _dispatch(self, images: np.ndarray, with_cam: bool):
    if with_cam:
      return self._gradcam.dispatch(images)
    return self.restored.batch_probs(parallel.global_batch({'image': images},
                                                           self.restored.mesh))

  def _slices(self, inputs: list[Any], skipped: list[tuple[str, str]],
              progress: _Progress) -> Iterator[tuple[readers.Slice, np.ndarray]]:
    """(slice, its preprocessed uint8 [S, S, 1] image) of every readable input."""
    for i, item in enumerate(inputs):
      if isinstance(item, np.ndarray):
        yield readers.Slice(f'array[{i}]', None, item), self.restored.prepare(item)
        continue
      for path in readers.find_scans([os.fspath(item)]):
        progress.files += 1
        try:
          slices = readers.read_slices(path, **self.read_options)
          prepared = [self.restored.prepare(s.image) for s in slices]
        except ImportError:
          raise  # a missing optional package: every such file would fail
        except Exception as e:  # pylint: disable=broad-except  # any unreadable file
          why = str(e) if isinstance(e, readers.ReadError) else f'{type(e).__name__}: {e}'
          logging.warning('Skipped %s: %s', path, why)
          skipped.append((path, why))
          continue
        yield from zip(slices, prepared)

  def _batches(self, items: Iterator[tuple[readers.Slice, np.ndarray]]) -> Iterator[_Batch]:
    size = self.restored.image_size
    while chunk := list(itertools.islice(items, self.batch_size)):
      images = np.zeros((self.batch_size, size, size, 1), np.uint8)
      images[:len(chunk)] = np.stack([image for _, image in chunk])
      yield _Batch([s for s, _ in chunk], images)


class _CamNames:
  """Overlay file names that mirror the inputs' paths below their common folder."""

  def __init__(self, cam_dir: str, paths: Sequence[Any]):
    self.cam_dir = cam_dir
    folders = [os.path.abspath(p if os.path.isdir(p) else os.path.dirname(p) or '.')
               for p in map(os.fspath, paths)]
    self.root = os.path.commonpath(folders) if folders else ''

  def path(self, item: readers.Slice) -> str:
    name = (os.path.relpath(os.path.abspath(item.path), self.root)
            if os.path.exists(item.path) else item.path)
    if item.index is not None:
      name += f'_slice{item.index:03d}'
    path = os.path.join(self.cam_dir, name + '.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


class _Progress:
  """A log line every LOG_EVERY_SECONDS: files read, slices predicted, throughput."""

  def __init__(self):
    self.files = self.slices = 0
    self.start = self.last = time.perf_counter()

  def update(self, slices: int) -> None:
    self.slices += slices
    now = time.perf_counter()
    if now - self.last >= LOG_EVERY_SECONDS:
      self.last = now
      logging.info('%d files read, %d slices predicted (%.1f slices/s)', self.files,
                   self.slices, self.slices / (now - self.start))

  def done(self, skipped: int) -> None:
    seconds = time.perf_counter() - self.start
    logging.info('Predicted %d slices of %d files in %.1f s (%.1f slices/s); %d files '
                 'skipped.', self.slices, self.files, seconds,
                 self.slices / max(seconds, 1e-9), skipped)


def fit_site_threshold(predictor: 'Predictor', report: Report, path: str,
                       **about: Any) -> Report:
  """Fits a site threshold on `report`'s slices without labels (rule 'mixture'), writes
  it to `path`, and returns the report decided at it."""
  record = site_threshold.fit(predictor.restored, report.probs[:, 1], None, 'mixture',
                              num_files=len({p.path for p in report.predictions}), **about)
  site_threshold.write(record, path)
  threshold = record['threshold']
  logging.info('Site threshold %.4f fitted on %d slices without labels (%.3f called %s); '
               'written to %s.', threshold, record['num_images'], record['called_positive'],
               report.class_names[1], path)
  if 'warning' in record:
    logging.warning('Site threshold %s: %s.', path, record['warning'])
  return dataclasses.replace(
      report, threshold=threshold,
      predictions=[dataclasses.replace(p, predicted=int(p.probs[1] >= threshold))
                   for p in report.predictions],
      run={**report.run, 'threshold_source': f'site threshold {path} (fitted on these scans)'})


def _define_flags():
  flags.DEFINE_string('workdir', None, 'The trained run (checkpoints/, config.json).')
  flags.DEFINE_string('out', '', 'Output file, .csv or .json (default '
                      'WORKDIR/predictions/predictions.csv).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the kept or latest one).')
  flags.DEFINE_integer('batch_size', 32, 'Slices per device batch.')
  flags.DEFINE_bool('cam', False, 'Also write Grad-CAM overlays (PNG) to OUT_DIR/gradcam/.')
  flags.DEFINE_string('threshold', '', "Decide at this P(positive), or at a site threshold "
                      "file (evaluate_external --save_threshold), instead of the run's.")
  flags.DEFINE_string('cam_class', '', 'The class the Grad-CAM explains (default: the '
                      'predicted one).')
  flags.DEFINE_string('dicom_window', 'file', "DICOM VOI window: 'file' (the file's own), "
                      "'none', or CENTER,WIDTH in the rescaled units.")
  flags.DEFINE_string('nifti_axis', 'axial', 'NIfTI slicing axis: axial, coronal, '
                      'sagittal (after reorienting to RAS+), or 0, 1, 2.')
  flags.DEFINE_string('fit_threshold', '', 'Fit a site threshold on these scans without '
                      'labels (two Gaussians on the logits), write it to this JSON file, '
                      'and decide the scans at it.')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give the files or folders to predict: '
                         'python -m spp_resnet.predict --workdir=RUN PATH...')
  with cli.exit_on_user_error(ValueError, ImportError):
    axis = FLAGS.nifti_axis
    predictor = Predictor.from_workdir(
        FLAGS.workdir, FLAGS.step, threshold=FLAGS.threshold, batch_size=FLAGS.batch_size,
        dicom_window=readers.parse_window(FLAGS.dicom_window),
        nifti_axis=int(axis) if axis.isdigit() else axis)
    out = FLAGS.out or os.path.join(FLAGS.workdir, 'predictions', 'predictions.csv')
    cam_dir = os.path.join(os.path.dirname(os.path.abspath(out)), 'gradcam') if FLAGS.cam else ''
    if FLAGS.fit_threshold and (FLAGS.threshold or cam_dir):
      raise ValueError('--fit_threshold decides at the threshold it fits: not with '
                       '--threshold, nor with --cam (run --cam again with --threshold=FILE).')
    report = predictor.predict(paths, cam_dir=cam_dir, cam_class=FLAGS.cam_class)
    if FLAGS.fit_threshold and report.predictions:
      report = fit_site_threshold(predictor, report, FLAGS.fit_threshold,
                                  command=' '.join(sys.argv))
    written = report.write(out)
  print(f'{len(report.predictions)} slices predicted, {len(report.skipped)} files skipped; '
        f'written to {", ".join(written)}' + (f' and {cam_dir}' if cam_dir else ''))
  if not report.predictions:
    raise SystemExit(1)


def run():
  """The console script (pyproject.toml) and `python -m`."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
