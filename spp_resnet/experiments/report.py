"""What the runners' reports share: intervals over repeats, table cells, captions, plots.

Every number in a report is the mean and two-sided 95% Student-t interval of one metric
over a variant's repeats (folds, random splits or seeds). Test metrics come from each
run's `metrics`; validation metrics, where the train loop selected a model on a
validation split, from its `selection['val_metrics']`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import datetime
import json
import math
import os
import platform
import shlex

import numpy as np

from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import runs

METRICS = (('accuracy', 'accuracy'), ('precision', 'precision'),
           ('recall', 'recall / sensitivity'), ('specificity', 'specificity'),
           ('f1', 'F1'), ('roc_auc', 'ROC AUC'))
METRIC_LABELS = {**dict(METRICS), 'sensitivity': 'sensitivity', 'loss': 'loss'}
# The train loop's validation metrics may name recall 'sensitivity'.
_ALIASES = {'recall': ('recall', 'sensitivity'), 'sensitivity': ('sensitivity', 'recall')}


def metric_value(metrics: Mapping | None, key: str) -> float | None:
  for name in _ALIASES.get(key, (key,)):
    if metrics and metrics.get(name) is not None:
      return metrics[name]
  return None


def validation_metrics(result: Mapping) -> dict | None:
  """The run's metrics on its validation split at the selected epoch; None without one."""
  selection = result.get('selection')
  if not selection:
    return None
  values = dict(selection.get('val_metrics') or {})
  if selection.get('metric') and selection.get('value') is not None:
    values.setdefault(selection['metric'], selection['value'])
  return values


def selection_metric(results) -> str | None:
  """The metric the train loop selected models by, in the first run that has one."""
  for r in results:
    if (r.get('selection') or {}).get('metric'):
      return r['selection']['metric']
  return None


def higher_is_better(metric: str) -> bool:
  return 'loss' not in metric


# ---------------------------------------------------------------------------------------
# Intervals.

def ci(values) -> dict | None:
  """Mean and 95% t-interval of the values that are there (None and nan dropped)."""
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return None
  interval = metrics_lib.mean_ci(values)
  return {'mean': interval.mean, 'low': interval.low, 'high': interval.high,
          'n': len(values)}


def fmt_ci(interval, digits: int = 3, clip: bool = True) -> str:
  """'0.912 [0.850, 0.974]'; bounds clipped to [0, 1] for rates; the mean alone if n < 2."""
  if interval is None:
    return 'n/a'
  if interval['n'] < 2 or math.isnan(interval['low']):
    return f'{interval["mean"]:.{digits}f}'
  lo, hi = interval['low'], interval['high']
  if clip:
    lo, hi = max(0.0, lo), min(1.0, hi)
  return f'{interval["mean"]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]'


def aggregate(results: list[dict]) -> dict:
  """Per-metric mean and 95% t-interval over repeats (test, and validation where the runs
  selected on one), summed confusion, split sizes and training time."""
  out = {'n_runs': len(results), 'repeats': [r['repeat'] for r in results],
         'metrics': {}, 'per_run': {}}
  for key, _ in METRICS:
    values = [r['metrics'].get(key) for r in results]
    out['metrics'][key] = ci(values)
    out['per_run'][key] = values
  val = [validation_metrics(r) for r in results]
  if any(v is not None for v in val):
    chosen = selection_metric(results)
    # The table's metrics first, then whatever else the train loop measured (e.g. loss).
    known = {k for k, _ in METRICS} | {'sensitivity', 'num_examples'}  # = recall; a count
    extra = [k for v in val if v for k, x in v.items()
             if k not in known and '/' not in k and isinstance(x, (int, float))
             and not isinstance(x, bool)]
    keys = [k for k, _ in METRICS] + extra
    out['val_metrics'], out['val_per_run'] = {}, {}
    for key in dict.fromkeys(keys):
      values = [metric_value(v, key) for v in val]
      if any(x is not None for x in values):
        out['val_metrics'][key] = ci(values)
        out['val_per_run'][key] = values
    out['selection_metric'] = chosen
    out['selected_epochs'] = [(r.get('selection') or {}).get('epoch') for r in results]
  out['confusion'] = np.sum([np.asarray(r['confusion']) for r in results], axis=0).tolist()
  out['num_test'] = [r['split']['num_test'] for r in results]
  out['num_train'] = [r['split']['num_train'] for r in results]
  out['wall_s'] = float(sum(r['wall_s'] for r in results))
  return out


# ---------------------------------------------------------------------------------------
# Captions.

def describe_repeats(names: list[str], protocol: str, config) -> tuple[str, bool]:
  """('3 folds (fold0, ...)', is k-fold) for a caption."""
  kfold = protocol in runs.KFOLD_PROTOCOLS and any(n.startswith('fold') or '_fold' in n
                                                    for n in names)
  if kfold:
    return f'{len(names)} folds ({", ".join(names)})', True
  if all(n.startswith('split') for n in names):
    return (f'{len(names)} random splits ({", ".join(names)}: split seeds; model seed '
            f'{config.seed} throughout)'), False
  return f'{len(names)} repeats ({", ".join(names)}; split seed = model seed)', False


def interval_note(repeat_text: str, kfold: bool, first: dict | None) -> str:
  """How the intervals are computed and which class the binary metrics are of."""
  return (f'Mean and 95% Student-t interval over {repeat_text} (t with n-1 degrees of '
          'freedom, bounds clipped to [0, 1]); '
          + ('folds share training data, so the interval is only approximate. '
             if kfold else '')
          + 'Binary metrics are for the positive class '
          + (f'`{first["class_names"][1]}`' if first and len(first['class_names']) == 2
             else '(multi-class: unweighted macro means over classes, one vs rest)')
          + '.')


def split_notes(results: list[dict]) -> list[str]:
  """Split sizes and train/test leakage of a list of runs (one variant's)."""
  if not results:
    return []
  first = results[0]
  counts = first['split']['counts']
  sizes = ', '.join(f'{x["split"]["num_train"]}/{x["split"]["num_test"]}' for x in results)
  return [f'Split sizes (train/test images per run): {sizes}; first run: train '
          f'{counts.get("train")}, test {counts.get("test")}; '
          f'{first["split"]["num_records"]} records in the dataset.',
          'Train/test leakage per run (groups crossing the split / test images in them): '
          f'{leakage_line(results)}.']


def leakage_line(results: list[dict]) -> str:
  rows = [r['split'].get('leakage') for r in results]
  if not rows or any(x is None for x in rows):
    return 'no leakage report (the dataset has no image hashes)'
  parts = []
  for kind, label in (('exact', 'exact duplicates'), ('near', 'near duplicates'),
                      ('patient', 'same patient'), ('any', 'any')):
    if f'{kind}_groups' not in rows[0]:
      continue
    groups = [x[f'{kind}_groups'] for x in rows]
    images = [x[f'{kind}_test_images'] for x in rows]
    parts.append(f'{label}: {"/".join(map(str, groups))} groups, '
                 f'{"/".join(map(str, images))} test images')
  return '; '.join(parts)


def device() -> str:
  """'N x KIND (platform), jax VERSION[, CPU cores and load], HOST' of the reports."""
  import jax  # pylint: disable=g-import-not-at-top  # not before --help (nor plots, writers)
  d = jax.devices()[0]
  kind = getattr(d, 'device_kind', d.platform)
  cpus = os.cpu_count()
  text = f'{jax.device_count()} x {kind} ({d.platform}), jax {jax.__version__}'
  if d.platform == 'cpu':
    try:
      load = os.getloadavg()[0]
      text += f', {cpus} CPU cores, load average {load:.1f} at report time'
    except OSError:
      text += f', {cpus} CPU cores'
  return text + f', {platform.node() or "host"}'


def command_line(module: str, argv: list[str], **replace: str | None) -> str:
  """This invocation's command, with some flags replaced or added."""
  args = [a for a in argv[1:] if not any(a.startswith(f'--{k}=') for k in replace)]
  args += [f'--{k}={v}' for k, v in replace.items() if v is not None]
  return f'python -m {module} ' + ' '.join(shlex.quote(a) for a in args)


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


def header(heading: str, command: str, config, device_text: str, date: str,
           swept=()) -> list[str]:
  """The first lines of a results page: what was run, on what, and when."""
  data = config.data

  def value(field, text='{}'):  # a swept field has no one value
    if field in swept:
      return f'`{field}` swept'
    return text.format(runs.get_field(config, field))

  return [f'# {heading}', '',
          f'- Command: `{command}`',
          f'- Dataset: `{data.dataset}` (manual_dir `{data.manual_dir or "-"}`), image size '
          f'{value("data.image_size")}, backbone {value("model.backbone")} '
          f'{value("model.variant")}, {value("num_epochs", "{} epochs")}, '
          f'{value("batch_size", "batch {}")}',
          f'- Device: {device_text}', f'- Report written: {date}']


def time_note(train_s: float, invocation_s: float) -> str:
  return (f'Training time of the runs in this table: {train_s / 60:.1f} min '
          f'(this invocation: {invocation_s / 60:.1f} min, including data loading).')


def write(workdir: str, md: str, summary: dict) -> None:
  """WORKDIR/results.md and results.json; the Markdown also to stdout."""
  with open(os.path.join(workdir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(md)
  with open(os.path.join(workdir, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1, allow_nan=True)
  print(md)


# ---------------------------------------------------------------------------------------
# Plots of runs.

def plot_runs(workdir: str, prefix: str, variant_results: Mapping[str, list[dict]],
              labels: Mapping[str, str], run_dir: Callable[[str, str], str]) -> list[str]:
  """ROC curves, summed confusion matrices and training curves of some variants' runs.

  Files are WORKDIR/plots/{roc,confusion,curves}_PREFIX[_VARIANT].png; `run_dir(variant,
  repeat)` is where a run's metrics.jsonl is.
  """
  from spp_resnet.evaluation import plots  # pylint: disable=g-import-not-at-top
  from spp_resnet.evaluation import writers  # pylint: disable=g-import-not-at-top
  plot_dir = os.path.join(workdir, 'plots')
  made = []
  curves = {}
  for variant, results in variant_results.items():
    if not results:
      continue
    class_names = results[0]['class_names']
    label = labels[variant]
    probs = np.concatenate([np.asarray(r['probs'], np.float64).reshape(-1, len(class_names))
                            for r in results])
    run_labels = np.concatenate([np.asarray(r['labels'], np.int64) for r in results])
    if len(class_names) == 2:
      if len(np.unique(run_labels)) == 2:
        fpr, tpr, _ = metrics_lib.roc_curve(probs[:, 1], run_labels == 1)
        curves[label] = (fpr, tpr, metrics_lib.roc_auc(probs[:, 1], run_labels == 1))
    else:  # one-vs-rest curve per class, one figure per variant
      per_class = {}
      for k, name in enumerate(class_names):
        if 0 < np.sum(run_labels == k) < len(run_labels):
          fpr, tpr, _ = metrics_lib.roc_curve(probs[:, k], run_labels == k)
          per_class[f'{name} vs rest'] = (fpr, tpr,
                                          metrics_lib.roc_auc(probs[:, k], run_labels == k))
      if per_class:
        path = os.path.join(plot_dir, f'roc_{prefix}_{variant}.png')
        plots.plot_roc(per_class, path, title=f'{prefix}: {label}, one vs rest '
                       f'(pooled over {len(results)} runs)')
        made.append(path)
    confusion = np.sum([np.asarray(r['confusion']) for r in results], axis=0)
    path = os.path.join(plot_dir, f'confusion_{prefix}_{variant}.png')
    plots.plot_confusion(confusion, class_names, path,
                         title=f'{prefix}: {label} (sum over {len(results)} runs)')
    made.append(path)
    history = []
    for r in results:
      for row in writers.read_metrics(run_dir(variant, r['repeat'])):
        renamed = {'epoch': row['epoch']}
        for key, value in row.items():
          split, slash, metric = key.partition('/')
          if slash and '/' not in metric:
            renamed[f'{r["repeat"]} {split}/{metric}'] = value
        history.append(renamed)
    if history:
      path = os.path.join(plot_dir, f'curves_{prefix}_{variant}.png')
      plots.plot_training_curves(history, path)
      made.append(path)
  if curves:
    path = os.path.join(plot_dir, f'roc_{prefix}.png')
    n = max(len(r) for r in variant_results.values())
    plots.plot_roc(curves, path, title=f'{prefix}: test ROC, pooled over {n} runs')
    made.insert(0, path)
  return made
