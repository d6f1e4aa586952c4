r"""Hyperparameter sweeps: a grid over config fields x repeats, chosen on validation only.

  python -m spp_resnet.experiments.sweep --config=configs/sweeps/learning_rate.py \
      --workdir=runs/sweeps/learning_rate \
      --config.data.manual_dir=../shared/data/bohaju_brain_tumor_sample \
      --sweep=optimizer.learning_rate=1e-4,1e-3,1e-2 [--sweep=batch_size=16,32,64] \
      [--folds=K | --seeds=0,1,2] [--select_metric=roc_auc] [--report_only]

Grid: the cartesian product of every --sweep=FIELD=V1,V2,... (any config field; values
are parsed to the field's type: int, float, str, bool, or a tuple such as
'model.head_hidden=(128,),(256,256)'). Without --sweep, the config's `sweep_grid`
(the same syntax, ';' between fields) is the grid. A field that is not in the config or a
value of the wrong type stops the command with one line, before anything is written.

Repeats: every grid point is trained on the same repeats as an ablation variant: the K
folds of a 'grouped'/'stratified' protocol (--folds), K random splits of 'paper'
(split seeds, model seed fixed), or --seeds (split and model seed).

Every run is an ordinary training run (`train.train_and_evaluate`) in
WORKDIR/runs/<point>/<repeat>/, e.g. runs/optimizer.learning_rate=0.0001/split0/. A
finished run (result.json with the same config) is not trained again, so an interrupted
sweep resumes, and a WORKDIR holding runs of another config is refused.

Selection: with a validation split (`config.data.split.val_fraction > 0`) each run
keeps the model the train loop selected on validation, and the sweep marks the grid point
with the best mean VALIDATION metric (--select_metric; default: the runs' selection
metric, else 'roc_auc'). The test metrics are reported alongside and never used to choose;
without a validation split no point is selected.

Outputs: WORKDIR/results.md and results.json (per grid point: mean and 95% Student-t
interval over the repeats of every validation and test metric; command, device, date, run
time, reductions against configs/default.py, the paper's claimed best value),
WORKDIR/plots/<metric>_vs_<field>.png (the metric against each swept field, error bars =
95% interval, one line per value of the other fields, log axis for values spanning more
than two decades) and ROC, confusion and training-curve plots of the selected point.
`--report_only` rebuilds them from finished runs.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import json
import math
import os
import re
import sys
import time

from absl import app, flags

from spp_resnet import cli
from spp_resnet import config_validation
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import report
from spp_resnet.experiments import runs as runs_lib
from spp_resnet.experiments.runs import Run, RunnerError

FLAGS = flags.FLAGS

_MODULE = 'spp_resnet.experiments.sweep'
SELECTABLE = tuple(k for k, _ in report.METRICS) + ('sensitivity', 'loss')

Grid = list[tuple[str, tuple]]  # [(field, values)] in command-line order


class SweepError(RunnerError):
  """A bad --sweep or --select_metric."""


# ---------------------------------------------------------------------------------------
# The grid.

def split_values(text: str) -> list[str]:
  """'1,(2,3),x' -> ['1', '(2,3)', 'x']: commas inside brackets or quotes stay."""
  out, depth, quote, start = [], 0, '', 0
  for i, c in enumerate(text):
    if quote:
      quote = '' if c == quote else quote
    elif c in '\'"':
      quote = c
    elif c in '([':
      depth += 1
    elif c in ')]':
      depth -= 1
    elif c == ',' and depth == 0:
      out.append(text[start:i].strip())
      start = i + 1
  out.append(text[start:].strip())
  return out


_TYPE_NAMES = {bool: 'a bool (true/false)', int: 'an int', float: 'a float',
               str: 'a string', tuple: 'a tuple'}


def parse_value(field: str, text: str, current):
  """`text` as a value of the type of the config's `current` value of `field`."""
  kind = tuple if isinstance(current, (tuple, list)) else type(current)
  try:
    if kind is bool:
      lowered = text.lower()
      if lowered not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return lowered in ('true', '1')
    if kind is int:
      return int(text)
    if kind is float:
      value = float(text)
      if not math.isfinite(value):
        raise ValueError(text)
      return value
    if kind is str:
      return text[1:-1] if len(text) >= 2 and text[0] == text[-1] in '\'"' else text
    if kind is tuple:
      value = ast.literal_eval(text)
      value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
      elements = {type(x) for x in current}
      if elements == {int} and not all(type(x) is int for x in value):
        raise ValueError(text)
      if elements <= {int, float} and elements and not all(
          type(x) in (int, float) for x in value):
        raise ValueError(text)
      return value
    return ast.literal_eval(text)  # a None default: any Python literal
  except (ValueError, SyntaxError, TypeError) as e:
    raise SweepError(f'--sweep={field}=...: {text!r} is not {_TYPE_NAMES.get(kind, "valid")} '
                     f'(the config has {field}={current!r})') from e


def _field_value(config, field: str):
  """The config's value of `field`, or a SweepError naming the nearest fields."""
  try:
    value = runs_lib.get_field(config, field)
  except (KeyError, AttributeError):
    known = list(runs_lib.flatten(config.to_dict()))
    close = difflib.get_close_matches(field, known, n=1)
    raise SweepError(f'--sweep={field}=...: the config has no field {field!r}'
                     + (f' (did you mean {close[0]!r}?)' if close else '')) from None
  if hasattr(value, 'keys'):
    raise SweepError(f'--sweep={field}=...: {field!r} is a group of fields; sweep one of '
                     f'{", ".join(f"{field}.{k}" for k in value.keys())}')
  return value


def parse_grid(config, specs) -> Grid:
  """['optimizer.learning_rate=1e-4,1e-3', ...] -> [(field, typed values)]."""
  grid = []
  for spec in specs:
    field, eq, values = spec.partition('=')
    field = field.strip()
    if not eq or not field or not values.strip():
      raise SweepError(f'--sweep={spec}: expected FIELD=VALUE1,VALUE2,...')
    if field in (f for f, _ in grid):
      raise SweepError(f'--sweep: {field} is swept twice')
    current = _field_value(config, field)
    typed = tuple(parse_value(field, text, current) for text in split_values(values))
    if len(set(map(repr, typed))) < len(typed):
      raise SweepError(f'--sweep={spec}: a value is listed twice')
    grid.append((field, typed))
  return grid


def grid_specs(config, flag_specs) -> list[str]:
  """The --sweep flags, else the config's default grid (`sweep_grid`, ';' between fields)."""
  if flag_specs:
    return list(flag_specs)
  default = config.get('sweep_grid') or ''
  specs = [s.strip() for s in default.split(';') if s.strip()]
  if not specs:
    raise SweepError('nothing to sweep: pass --sweep=FIELD=VALUE1,VALUE2,... (the config '
                     'has no sweep_grid)')
  return specs


def value_text(value) -> str:
  """A value as it appears in a directory name and a table: 1e-05, 32, true, 128-128."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return '-'.join(value_text(v) for v in value) or 'empty'
  if isinstance(value, float):
    return repr(value)
  return re.sub(r'[^A-Za-z0-9._+-]', '-', str(value)) or 'empty'


def points(grid: Grid) -> dict[str, dict]:
  """{point name: {field: value}} over the cartesian product, first field slowest."""
  out = {}
  for values in itertools.product(*(v for _, v in grid)):
    assignment = dict(zip((f for f, _ in grid), values))
    name = ','.join(f'{f}={value_text(v)}' for f, v in assignment.items())
    if name in out:
      raise SweepError(f'--sweep: two values of the grid are both written {name!r}')
    out[name] = assignment
  return out


def plan(config, workdir: str, grid: Grid, folds: int,
         seeds: list[int]) -> tuple[dict[str, dict], list[Run]]:
  """The grid points, and their runs in WORKDIR/runs/<point>/<repeat>/."""
  protocol = config.data.split.protocol
  set_per_repeat = {'data.split.protocol'}
  for _, over in runs_lib.repeats(config, protocol, folds, seeds):
    set_per_repeat.update(over)
  for field, _ in grid:
    if field in set_per_repeat:
      raise SweepError(f'--sweep: {field} is set per repeat (--folds/--seeds) and cannot be '
                       'swept')
  grid_points = points(grid)
  return grid_points, runs_lib.expand(config, os.path.join(workdir, 'runs'), grid_points,
                                      protocol, folds, seeds)


# ---------------------------------------------------------------------------------------
# Selection.

def best_point(aggregates: dict[str, dict], metric: str) -> str | None:
  """The point with the best mean VALIDATION `metric`; None if no point has one.

  Test metrics are never looked at. Ties go to the first point in grid order.
  """
  best, best_value = None, None
  sign = 1.0 if report.higher_is_better(metric) else -1.0
  for name, agg in aggregates.items():
    value = report.metric_value(agg.get('val_metrics'), metric)
    if value is None:  # not measured on validation
      continue
    if best is None or sign * value['mean'] > sign * best_value:
      best, best_value = name, value['mean']
  return best


def resolve_select_metric(flag: str, results, config) -> str:
  """--select_metric, else the metric the train loop selected by, else 'roc_auc'."""
  if flag:
    return flag
  selection = config.get('selection')
  return (report.selection_metric(results)
          or (selection.get('metric') if selection is not None else None) or 'roc_auc')


# ---------------------------------------------------------------------------------------
# Plots.

def log_scale(values) -> bool:
  """Log axis for positive numbers spanning more than two decades (learning rates)."""
  numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return (len(numbers) == len(values) and len(numbers) > 1 and min(numbers) > 0
          and max(numbers) / min(numbers) > 100)


def plot_grid(workdir: str, grid: Grid, grid_points: dict[str, dict],
              aggregates: dict[str, dict], selected: str | None) -> list[str]:
  """WORKDIR/plots/<metric>_vs_<field>.png for every metric and swept field."""
  # matplotlib: not before --help
  from spp_resnet.evaluation import plots  # pylint: disable=g-import-not-at-top
  made = []
  for field, values in grid:
    others = [f for f, _ in grid if f != field]

    def line(name, others=others):
      return ', '.join(f'{f}={value_text(grid_points[name][f])}' for f in others)

    for metric, label in report.METRICS:
      panels = {}
      for panel, key in (('validation', 'val_metrics'), ('test', 'metrics')):
        lines = {}
        for name, agg in aggregates.items():
          interval = report.metric_value(agg.get(key), metric)
          if interval is not None:
            low, high = interval['low'], interval['high']
            if report.higher_is_better(metric):  # rates: bounds in [0, 1], as the tables
              low, high = (x if math.isnan(x) else min(max(x, 0.0), 1.0)
                           for x in (low, high))
            lines.setdefault(line(name), []).append(
                (grid_points[name][field], interval['mean'], low, high))
        if lines:
          panels[panel] = lines
      if not panels:
        continue
      path = os.path.join(workdir, 'plots', f'{metric}_vs_{field}.png')
      highlight = (line(selected), grid_points[selected][field]) if selected else None
      plots.plot_sweep(panels, path, xlabel=field, ylabel=label,
                       title=f'{label}: mean and 95% interval over repeats',
                       log_x=log_scale(values), highlight=highlight)
      made.append(path)
  return made


# ---------------------------------------------------------------------------------------
# Report.

def build_report(workdir: str, config, grid: Grid, grid_points: dict[str, dict],
                 runs: list[Run], results: dict[tuple, dict], select_metric: str,
                 argv: list[str], title: str, invocation_wall_s: float) -> tuple[str, dict]:
  """results.md text and results.json content."""
  date = report.now()
  device = report.device()
  command = report.command_line(_MODULE, argv)
  protocol = config.data.split.protocol
  names = list(dict.fromkeys(r.repeat for r in runs))
  point_results = {p: [results[(protocol, p, n)] for n in names
                       if (protocol, p, n) in results] for p in grid_points}
  aggregates = {p: report.aggregate(res) for p, res in point_results.items() if res}
  selected = best_point(aggregates, select_metric)
  fields = [f for f, _ in grid]
  reductions_list = runs_lib.reductions(config, exclude=fields)
  select_label = report.METRIC_LABELS.get(select_metric, select_metric)
  val_keys = list(dict.fromkeys(k for agg in aggregates.values()
                                for k in agg.get('val_metrics', {})))

  md = report.header(f'Sweep: {title}', command, config, device, date, swept=fields)
  grid_text = ' × '.join(f'`{f}` ∈ {{{", ".join(value_text(v) for v in vs)}}}'
                         for f, vs in grid)
  repeat_text, kfold = report.describe_repeats(names, protocol, config)
  md.append(f'- Grid: {grid_text} ({len(grid_points)} points) × {repeat_text}, protocol '
            f'`{protocol}`: {len(runs)} runs')
  paper_best = config.get('paper_best') or ''
  if paper_best:
    md.append(f"- The paper's claim: {paper_best}")
  md += ['', f'## Selected on validation {select_label}', '']
  if selected:
    interval = report.metric_value(aggregates[selected]['val_metrics'], select_metric)
    md.append(f'**`{selected}`**: the best mean validation {select_label} '
              f'({report.fmt_ci(interval, clip=report.higher_is_better(select_metric))}). '
              'The test columns below are reported alongside and were not used to choose.')
  elif val_keys:
    md.append(f'No grid point selected: the runs record no validation {select_label} '
              f'(they have {", ".join(val_keys)}; choose one with --select_metric).')
  else:
    md.append('No grid point selected: the runs have no validation split '
              '(`config.data.split.val_fraction` = 0), and the test split is never used to '
              'choose. Set `--config.data.split.val_fraction=0.1` (in a new --workdir) to '
              'select on validation.')

  def point_cells(name):
    return [value_text(grid_points[name][f]) for f in fields]

  def status(name):
    n = len(point_results[name])
    return str(n) if n == len(names) else f'{n} of {len(names)}'

  mark = {name: ('✓' if name == selected else '') for name in grid_points}
  tables = []
  if val_keys:
    rows = []
    for name in grid_points:
      agg = aggregates.get(name)
      if agg is None:
        rows.append(point_cells(name) + ['not run yet'] + [''] * len(val_keys) + ['0', ''])
        continue
      epochs = [e for e in agg.get('selected_epochs', []) if e is not None]
      rows.append(point_cells(name)
                  + [report.fmt_ci(report.metric_value(agg.get('val_metrics'), k),
                                   clip=report.higher_is_better(k)) for k in val_keys]
                  + ['/'.join(map(str, epochs)) or '-', status(name), mark[name]])
    header = (fields + [f'val. {report.METRIC_LABELS.get(k, k)}' for k in val_keys]
              + ['selected epoch', 'runs', 'selected'])
    tables += ['', '## Validation (the selection is made on these)', '',
               metrics_lib.markdown_table(header, rows)]
  rows = []
  for name in grid_points:
    agg = aggregates.get(name)
    if agg is None:
      rows.append(point_cells(name) + ['not run yet'] + [''] * (len(report.METRICS) - 1)
                  + ['0', ''])
      continue
    rows.append(point_cells(name) + [report.fmt_ci(agg['metrics'][k]) for k, _ in
                                     report.METRICS] + [status(name), mark[name]])
  header = fields + [h for _, h in report.METRICS] + ['runs', 'selected']
  tables += ['', '## Test (reported alongside, never used to choose)', '',
             metrics_lib.markdown_table(header, rows)]
  md += tables + ['']

  plots_made = plot_grid(workdir, grid, grid_points, aggregates, selected)
  if selected:
    plots_made += report.plot_runs(
        workdir, 'selected', {selected: point_results[selected]}, {selected: selected},
        lambda p, repeat: os.path.join(workdir, 'runs', p, repeat))
  first = next((res[0] for res in point_results.values() if res), None)
  caption = [report.interval_note(repeat_text, kfold, first)]
  if val_keys:
    caption.append('Validation columns: on each run\'s validation split, of the model the '
                   'train loop selected on it ("selected epoch": per run); the test columns '
                   'are of the same models.')
  if first:
    caption += report.split_notes(next(res for res in point_results.values() if res))
  if reductions_list:
    caption.append("Reduced against the paper's setting (configs/default.py; swept fields "
                   'left out): ' + '; '.join(reductions_list) + '.')
  plot_names = ', '.join(f'`{os.path.relpath(p, workdir)}`' for p in plots_made)
  caption.append(f'Plots: {plot_names or "none"}.')
  train_s = sum(agg['wall_s'] for agg in aggregates.values())
  md += caption + ['', report.time_note(train_s, invocation_wall_s)]

  summary = {
      'title': title, 'command': command, 'device': device, 'date': date,
      'config': json.loads(config.to_json_best_effort()), 'reductions_vs_paper': reductions_list,
      'paper_best': paper_best, 'protocol': protocol, 'repeats': names,
      'grid': [{'field': f, 'values': runs_lib.to_json(list(vs))} for f, vs in grid],
      'select_metric': select_metric, 'selected': selected,
      'selected_values': runs_lib.to_json(grid_points[selected]) if selected else None,
      'points': {}, 'plots': [os.path.relpath(p, workdir) for p in plots_made],
      'train_s_total': train_s, 'wall_s': invocation_wall_s}
  for name, assignment in grid_points.items():
    res = point_results[name]
    entry = {'values': runs_lib.to_json(assignment),
             'status': ('not run yet' if not res else
                        'ok' if len(res) == len(names) else
                        f'partial ({len(res)}/{len(names)} runs)')}
    if res:
      entry.update(aggregates[name])
      entry['runs'] = {r['repeat']: {'metrics': r['metrics'], 'selection': r.get('selection'),
                                     'split': r['split'], 'wall_s': r['wall_s']} for r in res}
    summary['points'][name] = entry
  return '\n'.join(md) + '\n', summary


# ---------------------------------------------------------------------------------------
# Main.

def prepare(config, workdir: str, sweep, folds: int, seeds: list[int]
            ) -> tuple[Grid, dict[str, dict], list[Run]]:
  """Grid, points and runs; every run's config checked. Writes nothing."""
  grid = parse_grid(config, grid_specs(config, sweep))
  grid_points, runs = plan(config, workdir, grid, folds, seeds)
  for run in runs:
    try:
      config_validation.validate(run.config)
    except config_validation.ConfigError as e:
      raise SweepError(f'grid point {run.variant}: {e}') from None
  return grid, grid_points, runs


def run_sweep(config, workdir: str, *, sweep=(), folds: int = 3, seeds=(),
              argv: list[str] = (), select_metric: str = '', title: str = '',
              report_only: bool = False, keep_checkpoints: str = 'first') -> dict:
  """Trains the missing runs and writes results.md/.json and the plots; returns the json."""
  start = time.perf_counter()
  if select_metric and select_metric not in SELECTABLE:
    raise SweepError(f'--select_metric: unknown {select_metric!r}; choose from '
                     f'{", ".join(SELECTABLE)}')
  grid, grid_points, runs = prepare(config, workdir, sweep, folds, list(seeds))
  os.makedirs(workdir, exist_ok=True)
  results = runs_lib.collect(runs, report_only=report_only,
                             keep_checkpoints=keep_checkpoints)
  metric = resolve_select_metric(select_metric, results.values(), config)
  md, summary = build_report(workdir, config, grid, grid_points, runs, results, metric,
                             list(argv), title or config.data.dataset,
                             time.perf_counter() - start)
  report.write(workdir, md, summary)
  return summary


def _define_flags():
  runs_lib.define_flags()
  flags.DEFINE_multi_string('sweep', [], 'FIELD=VALUE1,VALUE2,...: a config field and its '
                            'values (repeat the flag for a grid over several fields); '
                            "default: the config's sweep_grid.")
  flags.DEFINE_string('select_metric', '', 'Validation metric that selects the best grid '
                      f'point ({", ".join(SELECTABLE)}); default: the runs\' selection '
                      "metric, else roc_auc. Test metrics are never used to choose.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  with cli.exit_on_user_error(RunnerError):
    seeds = runs_lib.seeds_flag(FLAGS.seeds)
    run_sweep(FLAGS.config, FLAGS.workdir, sweep=FLAGS.sweep, folds=FLAGS.folds,
              seeds=seeds, argv=sys.argv, select_metric=FLAGS.select_metric,
              title=FLAGS.title, report_only=FLAGS.report_only,
              keep_checkpoints=FLAGS.keep_checkpoints)


def run():
  """The console script (pyproject.toml) and `python -m`."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
