r"""Cross-dataset matrix: every trained run evaluated on every other dataset.

  python -m spp_resnet.experiments.cross_dataset \
      --runs=bohaju=runs/bohaju,sartaj=runs/sartaj,mix=runs/mix \
      --datasets=bohaju=brain_tumor:/data/bohaju,sartaj=brain_tumor_mri/binary:/data/sartaj,\
figshare=figshare_brain_tumor:/data/figshare \
      --out=results/cross_dataset

--runs: NAME=WORKDIR,... (`main.py` or ablation run directories). --datasets:
NAME=REGISTRY_NAME[:MANUAL_DIR],... (`evaluate_external`'s --dataset and --manual_dir;
`image_folder:/path` for a class-per-folder set). Names become folder names: letters,
digits, '_', '-', '.'.

For each run and dataset, `evaluate_external.evaluate_external` evaluates the run's model
(its saved config, checkpoint and decision threshold) on ALL images of the dataset,
writing its full report to OUT/<run>/<dataset>/. Not on a dataset the run was trained on
(its config.json: `data.dataset` and `data.manual_dir`, or every part of `data.mix`): a
test set counts as a training set when it is the same folder (resolved manual_dir) or the
same registry dataset (brain_tumor_mri/binary and /four_class hold the same images;
image_folder is identified by its folder only, a phantom by its options). Such cells
read 'trained on'; the run's own test split is in its workdir.

Writes OUT/cross_dataset.md and OUT/cross_dataset.json: one train-set x test-set matrix
per metric (ROC AUC, accuracy, sensitivity, specificity, number of images) at each run's
saved decision threshold, each run's threshold, the per-cell run time, the command, date
and device. A test set with a single class (figshare: all tumor) has no ROC AUC, and no
specificity (no negatives) or sensitivity (no positives): 'n/a'. A cell that fails (e.g.
classes that cannot be mapped) reads 'error', its message is listed, and the command
exits with status 1 after writing the report.

Where a test set's own classes are merged into the model's (glioma, meningioma and
pituitary -> tumor; use brain_tumor_mri/four_class rather than /binary to keep them), the
report breaks each cell down by those classes: a tumor type's sensitivity and its ROC AUC
against all no-tumor images.

--refit_threshold=N adds, for every cell with both classes, what the model gives with
its threshold refitted on N labelled images per class of that test set (evaluate_external
--refit_threshold: mean and spread over random draws, measured on the other images).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import sys
import time

from absl import app, flags, logging

from spp_resnet import cli
from spp_resnet.data import class_mapping
from spp_resnet.data import mix
from spp_resnet.data import phantom
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import evaluate_external as ext
from spp_resnet.experiments import report

FLAGS = flags.FLAGS

TRAINED_ON = 'trained on'
NA = 'n/a'
ERROR = 'error'
# (key in the cells' metrics, table title); 'num_images' last.
METRICS = (('roc_auc', 'ROC AUC'), ('accuracy', 'Accuracy'), ('sensitivity', 'Sensitivity'),
           ('specificity', 'Specificity'), ('num_images', 'Images'))
_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  dataset: str          # registry name
  manual_dir: str = ''  # its files ('' = none / TFDS default)


# ---------------------------------------------------------------------------------------
# Parsing.

def _check_name(name: str, what: str) -> str:
  if not _NAME.match(name or ''):
    raise ValueError(f'{what}: name {name!r} must be letters, digits, "_", "-", "." (it '
                     'names a folder).')
  return name


def parse_runs(items: list[str]) -> dict[str, str]:
  """['NAME=WORKDIR', ...] -> {name: workdir}."""
  runs = {}
  for item in items:
    name, sep, workdir = item.partition('=')
    if not sep or not workdir:
      raise ValueError(f'--runs: {item!r} is not NAME=WORKDIR.')
    if _check_name(name, '--runs') in runs:
      raise ValueError(f'--runs: {name!r} given twice.')
    runs[name] = workdir
  if not runs:
    raise ValueError('--runs: no runs given.')
  return runs


def parse_datasets(items: list[str]) -> dict[str, DatasetSpec]:
  """['NAME=REGISTRY_NAME[:MANUAL_DIR]', ...] -> {name: DatasetSpec}."""
  datasets = {}
  for item in items:
    name, sep, rest = item.partition('=')
    dataset, _, manual_dir = rest.partition(':')
    if not sep or not dataset:
      raise ValueError(f'--datasets: {item!r} is not NAME=REGISTRY_NAME[:MANUAL_DIR].')
    if dataset == 'mix':
      raise ValueError(f'--datasets: {item!r}: give the parts of a mix as datasets of '
                       'their own.')
    if _check_name(name, '--datasets') in datasets:
      raise ValueError(f'--datasets: {name!r} given twice.')
    datasets[name] = DatasetSpec(dataset, manual_dir)
  if not datasets:
    raise ValueError('--datasets: no datasets given.')
  return datasets


# ---------------------------------------------------------------------------------------
# Which datasets a run was trained on.

def training_datasets(config) -> list[DatasetSpec]:
  """The datasets of a run's config: data.dataset, or every part of a mix."""
  data = config['data']
  if data['dataset'] == 'mix':
    return [DatasetSpec(p.dataset, p.manual_dir) for p in mix.parse_mix(data.get('mix', ''))]
  return [DatasetSpec(data['dataset'], data.get('manual_dir', '') or '')]


def _resolved(path: str) -> str:
  return os.path.realpath(os.path.abspath(os.path.expanduser(path))) if path else ''


def _phantom_options(name: str):
  try:
    return phantom.parse_name(name)
  except Exception:  # pylint: disable=broad-except  # then compare the names
    return name


def same_data(a: DatasetSpec, b: DatasetSpec) -> bool:
  """Whether two dataset specs hold the same images (see the module docstring)."""
  dir_a, dir_b = _resolved(a.manual_dir), _resolved(b.manual_dir)
  if dir_a and dir_a == dir_b:
    return True
  base_a, base_b = a.dataset.partition('/')[0], b.dataset.partition('/')[0]
  if base_a != base_b or base_a == 'image_folder':
    return False
  if base_a == 'phantom':
    return _phantom_options(a.dataset) == _phantom_options(b.dataset)
  return True  # one registry dataset, maybe another copy or config of it


def trained_on(config, spec: DatasetSpec) -> bool:
  return any(same_data(t, spec) for t in training_datasets(config))


# ---------------------------------------------------------------------------------------
# Cells.

def cell_metrics(summary: dict) -> tuple[dict[str, float | None], dict[str, str]]:
  """evaluate_external's summary -> ({metric: value, None = n/a}, {metric: why n/a})."""
  metrics = summary.get('metrics', {})
  confusion = summary.get('confusion') or []
  present = [sum(row) > 0 for row in confusion]  # rows: true classes of the model
  values = {'roc_auc': metrics.get('roc_auc'), 'accuracy': metrics.get('accuracy'),
            'sensitivity': metrics.get('sensitivity', metrics.get('recall')),
            'specificity': metrics.get('specificity'),
            'num_images': summary.get('num_images')}
  why = {}
  if len(present) == 2:
    if not all(present):
      why['roc_auc'] = 'one class only'
    if not present[0]:
      why['specificity'] = 'no negative images'
    if not present[1]:
      why['sensitivity'] = 'no positive images'
  elif present and not all(present):  # macro averages over absent classes mean nothing
    for key in ('roc_auc', 'sensitivity', 'specificity'):
      why[key] = 'some classes absent'
  for key, value in values.items():
    if key not in why and (value is None or (isinstance(value, float) and math.isnan(value))):
      why[key] = 'undefined'
  return {k: (None if k in why else v) for k, v in values.items()}, why


def _threshold(summary: dict):
  """The decision threshold a cell was evaluated at: float, None (argmax) or 0.5."""
  if 'threshold' in summary:
    return summary['threshold']
  return 0.5  # evaluate_external before it applied saved thresholds: argmax = 0.5


def _threshold_text(run: dict) -> str:
  if not run.get('threshold_known'):
    return '0.5 (default)' if run.get('threshold') == 0.5 else NA
  t = run.get('threshold')
  return 'argmax' if t is None else f'{t:.4f}'


# ---------------------------------------------------------------------------------------
# The matrix.

def build_matrix(runs: dict[str, str], datasets: dict[str, DatasetSpec], out: str, *,
                 data_dir: str = '', batch_size: int = 0, refit_threshold: int = 0,
                 baselines: tuple[str, ...] = (), argv: list[str] | None = None) -> dict:
  """Evaluates every run on every dataset it was not trained on; writes the report.

  Args:
    runs: name -> run workdir.
    datasets: name -> DatasetSpec (registry name, manual dir).
    out: output folder; cells go to OUT/<run>/<dataset>/.
    data_dir: TFDS data_dir for the datasets' prepared copies ('' = each run's).
    batch_size: evaluation batch size (0 = each run's).
    refit_threshold: also refit each threshold on this many images per class of each
      test set (0 = no); see evaluate_external.
    baselines: run names: also compare every other run's ROC AUC with that of the
      baseline trained on the same data, on each test set both were evaluated on
      (paired bootstrap over its images).
    argv: the command line, for the report (default sys.argv).

  Returns:
    The JSON summary written to OUT/cross_dataset.json.
  """
  # jax: not before --help
  import jax  # pylint: disable=g-import-not-at-top
  from spp_resnet.training import restore  # pylint: disable=g-import-not-at-top

  for name in list(runs) + list(datasets):
    _check_name(name, 'name')
  for baseline in baselines:
    if baseline not in runs:
      raise ValueError(f'--baseline={baseline!r} is not one of the --runs '
                       f'({", ".join(runs)})')
  start = time.perf_counter()
  os.makedirs(out, exist_ok=True)
  configs = {name: restore.load_run_config(workdir) for name, workdir in runs.items()}
  run_info, cells = {}, {}
  for run, workdir in runs.items():
    config = configs[run]
    run_info[run] = {
        'workdir': os.path.abspath(workdir),
        'dataset': config.data.dataset,
        'manual_dir': config.data.get('manual_dir', ''),
        'mix': config.data.get('mix', ''),
        'trained_on': [dataclasses.asdict(t) for t in training_datasets(config)],
        'split': config.data.split.protocol,
        'threshold': None, 'threshold_known': False, 'step': None}
    cells[run] = {}
    for name, spec in datasets.items():
      if trained_on(config, spec):
        cells[run][name] = {'status': TRAINED_ON}
        logging.info('%s on %s: trained on it, skipped.', run, name)
        continue
      cell_out = os.path.join(out, run, name)
      cell_argv = ['evaluate_external', f'--workdir={workdir}', f'--dataset={spec.dataset}']
      cell_argv += [f'--manual_dir={spec.manual_dir}'] if spec.manual_dir else []
      cell_argv += [f'--data_dir={data_dir}'] if data_dir else []
      cell_argv += [f'--batch_size={batch_size}'] if batch_size else []
      cell_argv += [f'--refit_threshold={refit_threshold}'] if refit_threshold else []
      cell_argv += [f'--out={cell_out}']
      t0 = time.perf_counter()
      try:
        summary = ext.evaluate_external(
            workdir, spec.dataset, manual_dir=spec.manual_dir, data_dir=data_dir,
            out=cell_out, batch_size=batch_size, refit_threshold=refit_threshold,
            argv=[cell_argv[0]] + [shlex.quote(a) for a in cell_argv[1:]])
      except (class_mapping.MappingError, FileNotFoundError, ValueError, RuntimeError) as e:
        logging.exception('%s on %s failed.', run, name)
        cells[run][name] = {'status': ERROR, 'error': f'{type(e).__name__}: {e}',
                            'wall_s': time.perf_counter() - t0}
        continue
      values, why = cell_metrics(summary)
      threshold = _threshold(summary)
      cells[run][name] = {
          'status': 'ok', 'metrics': values, 'na': why, 'threshold': threshold,
          'intervals': summary.get('intervals', {}),
          'class_counts': summary.get('class_counts'),
          'class_mapping': summary.get('class_mapping'), 'step': summary.get('step'),
          'out': os.path.abspath(cell_out), 'wall_s': time.perf_counter() - t0}
      for key in ('refit_threshold', 'by_their_class', 'label_free_threshold'):
        if key in summary:
          cells[run][name][key] = summary[key]
      run_info[run].update(threshold=threshold, threshold_known='threshold' in summary,
                           step=summary.get('step'), model=summary.get('model'))

  compare_with_baselines(cells, run_info, baselines)
  argv = list(sys.argv if argv is None else argv)
  result = {
      'baselines': list(baselines),
      'command': ('python -m spp_resnet.experiments.cross_dataset '
                  + ' '.join(shlex.quote(a) for a in argv[1:])),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'device': f'{report.device()}; jax.devices()[0] = {jax.devices()[0]}',
      'out': os.path.abspath(out),
      'metrics': [key for key, _ in METRICS],
      'runs': run_info,
      'datasets': {name: dataclasses.asdict(spec) for name, spec in datasets.items()},
      'cells': cells,
      'wall_s': time.perf_counter() - start,
  }
  with open(os.path.join(out, 'cross_dataset.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=1, allow_nan=False)
  with open(os.path.join(out, 'cross_dataset.md'), 'w', encoding='utf-8') as f:
    f.write(format_report(result))
  return result


def _cell_scores(cell: dict) -> dict[str, tuple[float, bool]]:
  """{filename: (P(positive class), is positive)} from a binary cell's predictions.csv."""
  files, scores, labels, _ = ext.read_binary_predictions(
      os.path.join(cell['out'], 'predictions.csv'))
  return {f: (float(p), bool(y)) for f, p, y in zip(files, scores, labels)}


def baseline_for(run: str, run_info: dict, baselines) -> str:
  """The first of `baselines` trained on the same data as `run` ('' if none)."""
  same = [b for b in baselines if run_info[b]['trained_on'] == run_info[run]['trained_on']]
  return same[0] if same else ''


def compare_with_baselines(cells: dict, run_info: dict, baselines) -> None:
  """Adds to each binary cell of a run the ROC AUC difference with the cell of the
  baseline trained on the same data, on the same test set: `vs_baseline` [difference,
  low, high] (95% paired stratified bootstrap, `metrics.auc_difference_ci`) and
  `baseline` (its name)."""
  for run, row in cells.items():
    baseline = baseline_for(run, run_info, baselines)
    if run in baselines or not baseline:
      continue
    for name, cell in row.items():
      base = cells[baseline].get(name, {})
      if cell['status'] != 'ok' or base.get('status') != 'ok':
        continue
      if cell['metrics'].get('roc_auc') is None or base['metrics'].get('roc_auc') is None:
        continue
      ours, theirs = _cell_scores(cell), _cell_scores(base)
      if ours.keys() != theirs.keys():
        raise ValueError(f'{run} and {baseline} on {name}: not the same images')
      files = sorted(ours)
      ci = metrics_lib.auc_difference_ci([ours[f][0] for f in files],
                                         [theirs[f][0] for f in files],
                                         [ours[f][1] for f in files])
      cell['vs_baseline'], cell['baseline'] = [ci.mean, ci.low, ci.high], baseline


def _baseline_section(result: dict) -> list[str]:
  """ROC AUC minus the baseline's, cell by cell, if baselines were given."""
  baselines, cells, runs = result.get('baselines', []), result['cells'], result['runs']
  if not baselines:
    return []

  def text(run: str, name: str) -> str:
    cell, baseline = cells[run][name], baseline_for(run, runs, baselines)
    if run in baselines:
      return '(baseline)'
    if 'vs_baseline' in cell:
      d, low, high = cell['vs_baseline']
      return f'{d:+.3f} [{low:+.3f}, {high:+.3f}]'
    if cell['status'] != 'ok' or not baseline:
      return cell['status'] if cell['status'] != 'ok' else ''
    base = cells[baseline][name]
    return f'baseline {base["status"]}' if base['status'] != 'ok' else NA

  names = list(result['datasets'])
  rows = [[run, baseline_for(run, runs, baselines) or '(none trained on the same data)']
          + [text(run, n) for n in names] for run in runs]
  return ['## ROC AUC against the baseline trained on the same data, paired', '',
          'Each run\'s ROC AUC minus that of the baseline trained on the same data, on '
          'the same test images, with a 95% paired stratified bootstrap interval (both '
          'models scored on each of 2000 resamples of the images): an interval above 0 '
          'says this run ranks that test set better than that baseline run. It covers '
          'which images were drawn, not which seeds trained the models: two runs of one '
          'config can differ by more (docs/results.md), so compare configs over several '
          f'seeds. "{NA}": no ROC AUC on that test set.',
          '', metrics_lib.markdown_table(['train \\ test', 'baseline'] + names, rows), '']


def _cell_text(cell: dict, key: str) -> str:
  if cell['status'] != 'ok':
    return cell['status']
  value = cell['metrics'].get(key)
  if value is None:
    return NA
  if key == 'num_images':
    return str(int(value))
  interval = cell.get('intervals', {}).get(key)
  if interval:
    return f'{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]'
  return f'{value:.4f}'


def format_report(result: dict) -> str:
  """cross_dataset.md from the JSON summary."""
  runs, datasets, cells = result['runs'], result['datasets'], result['cells']
  lines = ['# Cross-dataset evaluation', '',
           f'- Command: `{result["command"]}`',
           f'- Date: {result["date"]}; device: {result["device"]}; total run time '
           f'{result["wall_s"]:.0f} s',
           f'- Cells: OUT/<run>/<dataset>/ (metrics.md, predictions.csv, plots) under '
           f'`{result["out"]}`', '',
           'Rows: the training run (train set); columns: the test set, ALL its images. '
           f'"{TRAINED_ON}": the run was trained on that dataset (same folder or same '
           'registry dataset), not evaluated. Every cell is at the run\'s saved decision '
           'threshold (column "threshold"; "0.5 (default)" for runs without one, '
           '"argmax" for multi-class models). Sensitivity and specificity: the recall of '
           'tumor and of no_tumor for a tumor / no-tumor model, macro averages one vs rest '
           'for more classes. '
           f'"{NA}": undefined on that test set: with a single class (figshare: all tumor) '
           'there is no ROC AUC and no specificity, only sensitivity is meaningful. '
           'Brackets: 95% interval over the test images (Wilson for accuracy, sensitivity '
           'and specificity; stratified bootstrap for ROC AUC).', '']
  lines += ['## Runs', '']
  rows = []
  for name, r in runs.items():
    trained = ' + '.join(t['dataset'] + (f' ({t["manual_dir"]})' if t['manual_dir'] else '')
                         for t in r['trained_on'])
    model = r.get('model') or ('' if r['step'] is None else f'step {r["step"]}')
    rows.append([name, f'`{r["workdir"]}`', trained, r['split'], model, _threshold_text(r)])
  lines += [metrics_lib.markdown_table(
      ['run', 'workdir', 'trained on', 'split', 'model', 'threshold'], rows), '']
  lines += ['## Test sets', '']
  rows = []
  for name, d in datasets.items():
    counts = next((c['class_counts'] for r in cells.values() for n, c in r.items()
                   if n == name and c['status'] == 'ok'), None)
    rows.append([name, d['dataset'], f'`{d["manual_dir"]}`' if d['manual_dir'] else '',
                 '' if counts is None else ', '.join(f'{k}: {v}' for k, v in counts.items())])
  lines += [metrics_lib.markdown_table(['test set', 'registry name', 'manual dir',
                                        'images per class'], rows), '']
  names = list(datasets)
  for key, title in METRICS:
    lines += [f'## {title}', '']
    rows = [[run, _threshold_text(runs[run])] + [_cell_text(cells[run][n], key)
                                                   for n in names] for run in runs]
    lines += [metrics_lib.markdown_table(['train \\ test', 'threshold'] + names, rows), '']
    if key == 'roc_auc':
      lines += _baseline_section(result)
  lines += _by_their_class_section(result)
  lines += _label_free_section(result)
  lines += _refit_section(result)
  lines += ['## Run time per cell (s)', '',
            'Restoring the checkpoint, preprocessing the test set and evaluating.', '']
  rows = [[run] + [f'{cells[run][n]["wall_s"]:.1f}' if 'wall_s' in cells[run][n]
                   else cells[run][n]['status'] for n in names] for run in runs]
  lines += [metrics_lib.markdown_table(['train \\ test'] + names, rows), '']
  errors = [(run, n, c['error']) for run in runs for n, c in cells[run].items()
            if c['status'] == ERROR]
  if errors:
    lines += ['## Errors', '']
    lines += [f'- {run} on {n}: {message}' for run, n, message in errors]
    lines += ['']
  return '\n'.join(lines)


def _by_their_class_section(result: dict) -> list[str]:
  """Cells whose test set's own classes were merged into the model's, class by class."""
  rows = [[run, name] + ext.by_their_class_cells(row)
          for run, by_dataset in result['cells'].items()
          for name, cell in by_dataset.items() for row in cell.get('by_their_class', ())]
  if not rows:
    return []
  return ["## By the test sets' own classes", '',
          "Where a test set's classes were merged into the model's (tumor types -> tumor): "
          "each class's share decided right at the run's threshold (a tumor type's "
          "sensitivity, a no-tumor class's specificity) and each class ranked against all "
          'images of the other class (ROC AUC); 95% intervals over the images. A ranking '
          'that fails for one tumor type only points at what the training set lacked.', '',
          metrics_lib.markdown_table(('train', 'test set') + ext.BY_THEIR_CLASS_HEADER, rows),
          '']


def _label_free_section(result: dict) -> list[str]:
  """Sensitivity / specificity at a threshold fitted on each test set without labels."""
  cells = result['cells']
  if not any('label_free_threshold' in c for row in cells.values() for c in row.values()):
    return []

  def text(cell: dict) -> str:
    fit = cell.get('label_free_threshold')
    if fit is None:
      return cell['status']
    if 'skipped' in fit or fit['sensitivity'] is None or fit['specificity'] is None:
      return NA
    return (f'{fit["sensitivity"]:.3f} / {fit["specificity"]:.3f} '
            f'(at {fit["threshold"]:.3f}, D {fit["separation"]:.1f})')

  names = list(result['datasets'])
  rows = [[run] + [text(cells[run][n]) for n in names] for run in result['runs']]
  return ['## Sensitivity / specificity at a threshold fitted on the test set without labels',
          '', 'Where two Gaussians fitted to the model\'s logits on ALL the test images cross '
          '(`metrics.mixture_threshold`): what a site gets from its unlabelled images '
          '(`spp_resnet.predict --fit_threshold`). The labels only score it. D: the '
          "two Gaussians' separation (Ashman's D; about 2 or more for distinct clusters). "
          f'"{NA}": a test set with one class.', '',
          metrics_lib.markdown_table(['train \\ test'] + names, rows), '']


def _refit_section(result: dict) -> list[str]:
  """Sensitivity / specificity at thresholds refitted on each test set, if measured."""
  cells = result['cells']
  done = [c['refit_threshold'] for row in cells.values() for c in row.values()
          if 'refit_threshold' in c and 'skipped' not in c['refit_threshold']]
  if not done:
    return []
  per_class, repeats = done[0]['per_class'], done[0]['repeats']

  def text(cell: dict) -> str:
    refit = cell.get('refit_threshold')
    if refit is None:
      return cell['status']
    if 'skipped' in refit:
      return NA
    return ' / '.join(f'{refit[k]["mean"]:.3f} [{refit[k]["low"]:.3f}, {refit[k]["high"]:.3f}]'
                      for k in ('sensitivity', 'specificity'))

  names = list(result['datasets'])
  rows = [[run] + [text(cells[run][n]) for n in names] for run in result['runs']]
  return [f'## Sensitivity / specificity, threshold refitted on {per_class} images per class '
          'of the test set', '',
          f'The model unchanged, its threshold refitted on {per_class} labelled images per '
          f'class drawn from the test set and measured on its other images; mean and the '
          f'central 95% of {repeats} draws. "{NA}": a test set with one class.', '',
          metrics_lib.markdown_table(['train \\ test'] + names, rows), '']


# ---------------------------------------------------------------------------------------
# Command line.

def _define_flags():
  flags.DEFINE_list('runs', [], 'NAME=WORKDIR,...: trained runs (main.py workdirs).')
  flags.DEFINE_list('datasets', [], 'NAME=REGISTRY_NAME[:MANUAL_DIR],...: test sets, e.g. '
                    'figshare=figshare_brain_tumor:/data/figshare.')
  flags.DEFINE_string('out', None, 'Output folder.')
  flags.DEFINE_string('data_dir', '', "TFDS data_dir for the test sets (default: each run's "
                      'data.data_dir).')
  flags.DEFINE_integer('batch_size', 0, "Eval batch size (default: each run's).")
  flags.DEFINE_integer('refit_threshold', 0, 'Also refit each threshold on this many '
                       'labelled images per class of each test set (0 = no).')
  flags.DEFINE_list('baseline', [], 'Run names of --runs (e.g. the paper setting trained '
                    "on each source): also report every other run's ROC AUC minus that of "
                    'the baseline trained on the same data, paired over the test images.')
  flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    runs, datasets = parse_runs(FLAGS.runs), parse_datasets(FLAGS.datasets)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if FLAGS.refit_threshold < 0:
    raise app.UsageError('--refit_threshold must be >= 0.')
  with cli.exit_on_user_error():
    result = build_matrix(runs, datasets, FLAGS.out, data_dir=FLAGS.data_dir,
                          batch_size=FLAGS.batch_size, refit_threshold=FLAGS.refit_threshold,
                          baselines=tuple(FLAGS.baseline), argv=sys.argv)
  print(format_report(result))
  print(f'Written to {os.path.join(FLAGS.out, "cross_dataset.md")} and .json')
  failed = sum(c['status'] == ERROR for r in result['cells'].values() for c in r.values())
  if failed:
    print(f'error: {failed} cell(s) failed, see the report', file=sys.stderr)
    sys.exit(1)


def run():
  """The console script (pyproject.toml) and `python -m`."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
