r"""Evaluates a trained run's checkpoint on every image of another dataset.

  python -m spp_resnet.experiments.evaluate_external --workdir=TRAINED_RUN \
      --dataset=image_folder --manual_dir=DIR [--out=DIR]

TRAINED_RUN is a `main.py` or ablation run directory (it holds `checkpoints/`,
`config.json` and `class_names.json`). The run's own saved config rebuilds the model and
its preprocessing (image size, contrast stretching, input normalization); the latest
checkpoint (or --step) is restored. The other dataset is any registry name
(`image_folder` = a folder with one sub-folder per class, or `brain_tumor`,
`brain_tumor_mri/four_class`, ...); ALL its images are evaluated, whatever its own
train/test folders.

Its class names are mapped onto the model's: equal names after normalization
('Glioma_Tumor', 'glioma tumor' and 'glioma' are one class; 'notumor' is 'no_tumor'),
and for a binary tumor model (['no_tumor', 'tumor']) 'no', 'normal', 'healthy' ->
no_tumor and 'yes', 'glioma', 'meningioma', 'pituitary', ... -> tumor. Anything else
stops with an error naming the classes; map them with --class_map=theirs=ours,... or
leave them out with --ignore_classes=a,b.

Writes to --out (default TRAINED_RUN/external/<dataset>): metrics.md (the metrics table,
per class and confusion matrix, with the checkpoint, the mapping and the class counts),
metrics.json, predictions.csv (file, true and predicted class, probabilities), roc.png
(binary; one vs rest for more classes), confusion.png, confusion_normalized.png and, for a
binary model, errors.png (the false positives and negatives it was surest of, as the model
saw them).

A threshold fitted on the training source often does not carry over to another scanner
or hospital (docs/results.md). --refit_threshold=N measures what refitting it on N
labelled images per class of THIS dataset gives: over --refit_repeats random draws of
the N + N images, the threshold is fitted on them (the run's rule; Youden's J for a run
with a fixed threshold) and the model measured on all the other images. The report adds
the mean and the spread over the draws; the saved threshold and the run are unchanged.

Every binary report also gives what a threshold fitted on these images WITHOUT their
labels gives (two Gaussians fitted to the logits, `metrics.mixture_threshold`).

To deploy at that site: --save_threshold=FILE fits the threshold on ALL the evaluated
images (the same rule; --site_rule=mixture: without their labels) and writes it for
these weights; --threshold=FILE (or a number)
evaluates at it instead of the run's, e.g. on held-out images of the same site, and
`spp_resnet.predict --threshold=FILE` predicts with it (`inference/site_threshold.py`).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import re
import sys
import time

from absl import app, flags, logging
import numpy as np

from spp_resnet import cli
# The mapping rules live in the data layer (data.mix uses them too).
from spp_resnet.data.class_mapping import MappingError, map_classes
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import report

FLAGS = flags.FLAGS

# ---------------------------------------------------------------------------------------
# Main.

def evaluate_external(workdir: str, dataset: str, *, manual_dir: str = '', data_dir: str = '',
                      out: str = '', class_map: dict[str, str] | None = None,
                      ignore_classes: list[str] | None = None, step: int | None = None,
                      batch_size: int = 0, refit_threshold: int = 0, refit_repeats: int = 20,
                      threshold: str = '', save_threshold: str = '', site_rule: str = '',
                      argv: list[str] | None = None) -> dict:
  """Evaluates WORKDIR's checkpoint on all of `dataset`; writes the report to `out`.

  `threshold`: decide at this probability or site threshold file instead of the run's;
  `save_threshold`: also fit a site threshold on these images and write it there, by
  `site_rule` ('' = the run's rule on the labels; 'mixture' = from the images alone).
  """
  import jax  # pylint: disable=g-import-not-at-top  # not before --help (nor below)
  from spp_resnet.data import batching, preprocess, sources  # pylint: disable=g-import-not-at-top
  from spp_resnet.evaluation import plots  # pylint: disable=g-import-not-at-top
  from spp_resnet.inference import site_threshold  # pylint: disable=g-import-not-at-top
  from spp_resnet.training import restore, train  # pylint: disable=g-import-not-at-top

  if jax.process_count() > 1:
    raise ValueError('evaluate_external runs on one host.')
  start = time.perf_counter()
  config = restore.load_run_config(workdir)
  model_classes = restore.load_class_names(workdir, config)
  pooled = sources.load_pooled(dataset, data_dir=data_dir or config.data.data_dir,
                               manual_dir=manual_dir)
  mapping = map_classes(pooled.class_names, model_classes, class_map, ignore_classes)
  ext_labels = np.asarray(pooled.metadata['label'], np.int64)
  keep = np.nonzero(mapping[ext_labels] >= 0)[0]
  if not len(keep):
    raise MappingError('No images left to evaluate after --ignore_classes.')
  restored = restore.restore_for_inference(workdir, step)
  if threshold:
    restored = site_threshold.apply(restored, threshold)
  t0 = time.perf_counter()
  prep = preprocess.Preprocessor.from_config(config.data)
  images, labels = batching.preprocess_split(pooled.source, keep, prep)
  logging.info('Preprocessed %d images of %s in %.1f s.', len(keep), dataset,
               time.perf_counter() - t0)
  labels = mapping[labels].astype(np.int32)

  num_classes = len(model_classes)
  batch_size = batch_size or int(config.eval_batch_size)
  batch_size = max(jax.device_count(), batch_size - batch_size % jax.device_count())
  batch = batching.EvalBatch(lambda pos: {'image': images[pos], 'label': labels[pos]},
                             len(labels), batch_size, batch_size, 0, images.shape[1])
  probs, in_order = train.predict_probs(
      restored.batch_probs, restored.mesh,
      map(batch, range(math.ceil(len(labels) / batch_size))))
  result = train.metrics_from_probs(probs, in_order, model_classes, restored.threshold)
  result.step = step = restored.step
  normalization = restored.normalization
  refit = _refit(result, config, refit_threshold, refit_repeats) if refit_threshold else None
  label_free = _label_free(result) if num_classes == 2 else None
  their = ext_labels[keep]
  by_their_class = None
  if num_classes == 2 and len(np.unique(their)) > len(np.unique(mapping[their])):
    # Their classes merged into ours (three tumor types -> tumor): which kinds are found.
    by_their_class = metrics_lib.by_subgroup(
        result.probs[:, 1], result.labels, their, pooled.class_names,
        0.5 if result.threshold is None else result.threshold)
    for row in by_their_class:
      row['counted_as'] = model_classes[mapping[pooled.class_names.index(row['group'])]]
  command = ('python -m spp_resnet.experiments.evaluate_external '
             + ' '.join((argv or sys.argv)[1:]))
  counts = {name: int(np.sum(ext_labels[keep] == i)) for i, name in enumerate(pooled.class_names)}
  site = None
  if save_threshold:
    site = site_threshold.fit(restored, result.probs[:, 1], result.labels, site_rule,
                              dataset=dataset,
                              manual_dir=manual_dir, their_class_counts=counts,
                              command=command)
  # Created only now: a mapping error or a missing checkpoint leaves no empty folder.
  slug = re.sub(r'[^A-Za-z0-9]+', '_', f'{dataset}_{os.path.basename(os.path.normpath(manual_dir))}'
                if manual_dir else dataset).strip('_')
  out = out or os.path.join(workdir, 'external', slug)
  os.makedirs(out, exist_ok=True)

  # ---- Reports.
  mapped = {name: (model_classes[m] if m >= 0 else '(left out)')
            for name, m in zip(pooled.class_names, mapping)}
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  device = report.device()
  wall = time.perf_counter() - start
  header = [
      f'# {os.path.normpath(workdir)} on {dataset}'
      + (f' ({manual_dir})' if manual_dir else ''), '',
      f'- Command: `{command}`',
      f'- Model: {restored.description} of `{os.path.normpath(workdir)}` (trained on '
      f'`{config.data.dataset}`, split `{config.data.split.protocol}`, model '
      f'{config.model.backbone} {config.model.variant}, pooling {config.model.pooling}, '
      f'weights {config.pretrained.source or "random init"}), image size '
      f'{config.data.image_size}, input normalization {normalization}, decision '
      f'threshold {_threshold_text(result.threshold, config, restored.threshold_source)}',
      f'- Evaluated: all {len(keep)} images of the dataset (every split); per class '
      f'{counts}', f'- Class mapping (theirs -> model): {mapped}',
      f'- Device: {device}; date: {now}; run time {wall:.0f} s', '', '',
  ]
  refit_text = _by_their_class_text(by_their_class) if by_their_class else ''
  refit_text += _label_free_text(label_free) if label_free else ''
  refit_text += _refit_text(refit) if refit else ''
  if site:
    site_threshold.write(site, save_threshold)
    refit_text += _site_text(site, save_threshold)
  with open(os.path.join(out, 'metrics.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(header) + result.table() + '\n' + refit_text)
  intervals = {}
  if num_classes == 2:  # 95% intervals over the images (one model, one dataset)
    intervals = {k: [ci.low, ci.high] for k, ci in metrics_lib.binary_intervals(
        result.confusion, result.probs[:, 1], result.labels).items()
                 if not math.isnan(ci.low)}  # undefined on a one-class dataset
  summary = {'workdir': os.path.abspath(workdir), 'dataset': dataset, 'manual_dir': manual_dir,
             'step': step, 'model': restored.description, 'num_images': int(len(keep)),
             'class_counts': counts,
             'class_mapping': mapped, 'model_classes': list(model_classes),
             'threshold': result.threshold,
             'metrics': result.metrics, 'intervals': intervals,
             'confusion': np.asarray(result.confusion).tolist(),
             'command': command, 'date': now, 'device': device, 'wall_s': wall}
  if by_their_class:
    summary['by_their_class'] = by_their_class
  if label_free:
    summary['label_free_threshold'] = label_free
  if refit:
    summary['refit_threshold'] = refit
  if restored.threshold_source:
    summary['threshold_source'] = restored.threshold_source
  if site:
    summary['saved_threshold'] = {'path': save_threshold, **site}
  with open(os.path.join(out, 'metrics.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1, allow_nan=True)
  filenames = np.asarray(pooled.metadata.get('filename', np.arange(len(ext_labels))))[keep]
  predicted = metrics_lib.predict(result.probs, result.threshold)
  with open(os.path.join(out, 'predictions.csv'), 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['filename', 'their_class', 'true', 'predicted']
               + [f'p_{c}' for c in model_classes])
    for fn, ext, t, p, pr in zip(filenames, their, result.labels, predicted,
                                 result.probs):
      fn = fn.decode() if isinstance(fn, bytes) else str(fn)
      w.writerow([fn, pooled.class_names[ext], model_classes[t], model_classes[p]]
                 + [f'{x:.9g}' for x in pr])  # float32 in full: saturated outputs stay ranked
  # Plots.
  curves = {}
  positives = range(1, 2) if num_classes == 2 else range(num_classes)
  for k in positives:
    is_k = result.labels == k
    if 0 < is_k.sum() < len(is_k):
      fpr, tpr, _ = metrics_lib.roc_curve(result.probs[:, k], is_k)
      name = model_classes[k] if num_classes == 2 else f'{model_classes[k]} vs rest'
      curves[name] = (fpr, tpr, metrics_lib.roc_auc(result.probs[:, k], is_k))
  if curves:
    plots.plot_roc(curves, os.path.join(out, 'roc.png'), title=f'ROC on {dataset}')
  else:
    logging.warning('No ROC curve: the evaluated images hold only one class.')
  if num_classes == 2:
    _plot_errors(images, result.probs[:, 1], result.labels, predicted, their, pooled.class_names,
                 filenames, os.path.join(out, 'errors.png'), dataset)
  plots.plot_confusion(result.confusion, model_classes, os.path.join(out, 'confusion.png'),
                       title=f'{dataset}: counts')
  plots.plot_confusion(result.confusion, model_classes,
                       os.path.join(out, 'confusion_normalized.png'), normalize=True,
                       title=f'{dataset}: row-normalized')
  print('\n'.join(header) + result.table() + ('\n' + refit_text if refit_text else ''))
  print(f'\nWritten to {out}')
  return summary


def _plot_errors(images, scores, labels, predicted, their, their_names, filenames, path,
                 dataset, per_row: int = 8) -> None:
  """errors.png: the wrong calls the model was surest of, as the model saw them
  (preprocessed): what a source has that the training set lacked is often plain to see."""
  from spp_resnet.evaluation import plots  # pylint: disable=g-import-not-at-top
  def name(i):
    fn = filenames[i]
    return os.path.basename(fn.decode() if isinstance(fn, bytes) else str(fn))[:18]

  def row(wrong, surest_first):
    picked = np.nonzero(wrong)[0]
    picked = picked[np.argsort(surest_first(scores[picked]), kind='stable')][:per_row]
    return [(images[i], f'{their_names[their[i]]} p={scores[i]:.2f}\n'
             f'{name(i)}') for i in picked]
  plots.plot_image_rows({
      'false positives, highest P(positive) first': row((labels == 0) & (predicted == 1),
                                                        lambda s: -s),
      'false negatives, lowest P(positive) first': row((labels == 1) & (predicted == 0),
                                                       lambda s: s)},
      path, title=f'{dataset}: the surest wrong calls at the threshold')


def _refit(result, config, per_class: int, repeats: int) -> dict:
  """`metrics.refit_threshold` on this dataset, or {'skipped': why} where it cannot be."""
  from spp_resnet.inference import site_threshold  # pylint: disable=g-import-not-at-top
  if result.probs.shape[1] != 2:
    return {'skipped': 'a multi-class model has no threshold'}
  rule, target = site_threshold.rule_of(config)
  try:
    return metrics_lib.refit_threshold(
        result.probs[:, 1], result.labels, per_class, rule, repeats=repeats,
        target_sensitivity=target)
  except ValueError as e:  # e.g. a single-class dataset
    logging.warning('Threshold not refitted: %s', e)
    return {'skipped': str(e)}


BY_THEIR_CLASS_HEADER = ('their class', 'counted as', 'images', 'decided right [95%]',
                         'ROC AUC against the other class [95%]')


def by_their_class_cells(row: dict) -> list[str]:
  """One row of `metrics.by_subgroup` (with 'counted_as') as table cells."""
  def interval(key: str) -> str:
    if key not in row:
      return 'n/a'
    value, low, high = row[key]
    return f'{value:.3f} [{low:.3f}, {high:.3f}]'
  return [row['group'], row['counted_as'], str(row['num_images']),
          interval('called_correctly'), interval('roc_auc')]


def _by_their_class_text(rows: list[dict]) -> str:
  return '\n'.join([
      '', "## By the dataset's own classes", '',
      "The dataset's classes before they were merged into the model's: the share of each "
      "one's images decided right at the threshold (a tumor type's sensitivity, a "
      "no-tumor class's specificity; Wilson 95% interval) and each one ranked against all "
      'images of the other class (ROC AUC, stratified bootstrap 95% interval; n/a where '
      'the dataset has no image of the other class).', '',
      metrics_lib.markdown_table(BY_THEIR_CLASS_HEADER, [by_their_class_cells(r) for r in rows]),
      ''])


def read_binary_predictions(path: str) -> tuple[list[str], np.ndarray, np.ndarray, str]:
  """(filenames, P(positive class), 0/1 labels, positive class name) from the
  predictions.csv of a binary evaluation. ValueError if it is not binary."""
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  columns = [k for k in (rows[0] if rows else {}) if k.startswith('p_')]
  if len(columns) != 2:
    raise ValueError(f'{path}: expected a binary predictions.csv (two p_<class> columns), '
                     f'got {columns or "no rows"}')
  positive = columns[1][2:]
  return ([r['filename'] for r in rows], np.array([float(r[columns[1]]) for r in rows]),
          np.array([r['true'] == positive for r in rows], np.int64), positive)


def _label_free(result) -> dict:
  """What a threshold fitted on these images without their labels gives (mixture)."""
  scores = result.probs[:, 1]
  try:
    fitted = metrics_lib.mixture_threshold(scores)
  except ValueError as e:
    return {'skipped': str(e)}
  return {**fitted, **metrics_lib.rates_at(scores, result.labels, fitted['threshold'])}


def _label_free_text(fit: dict) -> str:
  if 'skipped' in fit:
    return f'\nNo label-free threshold on these images: {fit["skipped"]}\n'
  def share(key):
    return 'n/a' if fit[key] is None else f'{fit[key]:.4f}'
  return (f'\n## A threshold from these images without their labels\n\n'
          f'Two Gaussians fitted to the model\'s logits on these images cross at P(positive) '
          f'{fit["threshold"]:.4f} (`metrics.mixture_threshold`; it puts '
          f'{fit["positive_share"]:.3f} of the images in the upper one; their separation, '
          f"Ashman's D, is {fit['separation']:.2f}: about 2 or more for two distinct "
          'clusters). At it: sensitivity '
          f'{share("sensitivity")}, specificity {share("specificity")} (the labels only score '
          'it). `--site_rule=mixture --save_threshold=FILE` saves it; '
          '`spp_resnet.predict --fit_threshold=FILE` fits it on unlabelled scans.\n')


def _refit_text(refit: dict) -> str:
  if 'skipped' in refit:
    return f'\nThreshold not refitted on this dataset: {refit["skipped"]}\n'
  n = refit['per_class']
  rows = [[key, f'{v["mean"]:.4f}', f'[{v["low"]:.4f}, {v["high"]:.4f}]']
          for key, v in ((k, refit[k]) for k in ('threshold', 'sensitivity', 'specificity',
                                                  'accuracy'))]
  return '\n'.join([
      '', f'## Threshold refitted on {n} labelled images per class of this dataset', '',
      f'{refit["repeats"]} random draws of {n} images per class; each time the threshold '
      f'is fitted on them ({refit["rule"]}) and the model measured on the other '
      f'{refit["num_evaluated"]} images. Mean over the draws and the central 95% of the '
      'draws (how much it depends on which images were labelled).', '',
      metrics_lib.markdown_table(['', 'mean', 'central 95% of draws'], rows), ''])


def _site_text(site: dict, path: str) -> str:
  rule = site['rule'] + (f' {site["target_sensitivity"]}' if 'target_sensitivity' in site else '')
  rates = ', '.join(f'{k} ' + ('n/a' if v is None else f'{v:.4f}')
                    for k, v in site['in_sample'].items())
  how = ('without their labels, which only score it here'
         if site['rule'] == 'mixture' else
         'optimistic: fitted on them; --refit_threshold=N estimates it on held-out images')
  return (f'\n## Site threshold saved to {path}\n\n'
          f'P(positive) >= {site["threshold"]:.4f} ({rule}), fitted on all '
          f'{site["num_images"]} images above {site["class_counts"]}: {rates} on those same '
          f'images ({how}). Use it with --threshold={path} here or in spp_resnet.predict.\n'
          + (f'\n**Warning:** {site["warning"]}.\n' if 'warning' in site else ''))


def _threshold_text(threshold, config, source: str = '') -> str:
  if threshold is None:
    return 'none (argmax)'
  if source:
    return f'P(positive) >= {threshold:.4f} ({source})'
  rule = config.get('selection', {}).get('threshold', 'fixed')
  fitted = 'fitted on the run\'s validation split' if rule != 'fixed' else 'fixed'
  return f'P(positive) >= {threshold:.4f} ({rule}, {fitted})'


def _parse_map(items: list[str]) -> dict[str, str]:
  out = {}
  for item in items:
    theirs, sep, ours = item.partition('=')
    if not sep or not theirs or not ours:
      raise MappingError(f'--class_map: {item!r} is not theirs=ours.')
    out[theirs] = ours
  return out


def _define_flags():
  flags.DEFINE_string('workdir', None, 'The trained run (checkpoints/, config.json).')
  flags.DEFINE_string('dataset', 'image_folder', 'Registry name of the other dataset.')
  flags.DEFINE_string('manual_dir', '', 'Its folder (image_folder: one sub-folder per class).')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir for its prepared copy (default: the '
                      "run's data.data_dir).")
  flags.DEFINE_string('out', '', 'Output folder (default WORKDIR/external/<dataset>).')
  flags.DEFINE_list('class_map', [], 'theirs=ours,... for classes not mapped by name.')
  flags.DEFINE_list('ignore_classes', [], 'Their classes whose images are left out.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('batch_size', 0, "Eval batch size (default: the run's).")
  flags.DEFINE_integer('refit_threshold', 0, 'Also measure the model with its threshold '
                       'refitted on this many labelled images per class of this dataset '
                       '(0 = no).')
  flags.DEFINE_integer('refit_repeats', 20, 'Random draws of those images.')
  flags.DEFINE_string('threshold', '', "Decide at this P(positive), or at a site threshold "
                      "file (--save_threshold), instead of the run's saved threshold.")
  flags.DEFINE_string('save_threshold', '', 'Fit a threshold on all these images (the '
                      "run's rule) and write it to this JSON file, for --threshold here and "
                      'in spp_resnet.predict.')
  flags.DEFINE_enum('site_rule', '', ['', 'mixture'], "How --save_threshold fits: '' = the "
                    "run's rule on the labels; 'mixture' = from the images alone (labels "
                    'unused: where two Gaussians fitted to the logits cross).')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.refit_threshold < 0 or FLAGS.refit_repeats < 1:
    raise app.UsageError('--refit_threshold must be >= 0 and --refit_repeats >= 1.')
  from spp_resnet.inference import site_threshold  # pylint: disable=g-import-not-at-top
  with cli.exit_on_user_error(MappingError, site_threshold.SiteThresholdError):
    evaluate_external(FLAGS.workdir, FLAGS.dataset, manual_dir=FLAGS.manual_dir,
                      data_dir=FLAGS.data_dir, out=FLAGS.out,
                      class_map=_parse_map(FLAGS.class_map),
                      ignore_classes=FLAGS.ignore_classes, step=FLAGS.step,
                      batch_size=FLAGS.batch_size, refit_threshold=FLAGS.refit_threshold,
                      refit_repeats=FLAGS.refit_repeats, threshold=FLAGS.threshold,
                      save_threshold=FLAGS.save_threshold, site_rule=FLAGS.site_rule,
                      argv=sys.argv)


def run():
  """The console script (pyproject.toml) and `python -m`."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
