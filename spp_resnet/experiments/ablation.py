r"""The paper's ablation (Table 2): basic, +SPP, +TL, +SPP+TL, under one or more protocols.

  python -m spp_resnet.experiments.ablation --config=configs/ablation_cpu.py \
      --workdir=runs/ablation/bohaju \
      --config.data.dataset=brain_tumor \
      --config.data.manual_dir=../shared/data/bohaju_brain_tumor_sample \
      --protocols=paper,grouped --folds=3

Variants (everything else comes from --config and is identical for all four):
  basic   random initialization, global average pooling     (model.pooling='gap')
  spp     random initialization, spatial pyramid pooling    (model.pooling='spp')
  tl      ImageNet weights, global average pooling          (pretrained.source=...)
  spp_tl  ImageNet weights, spatial pyramid pooling         (the paper's model)
The ImageNet source is `config.pretrained.source` (default.py: the paper's Keras file).
With `data.normalization='auto'` all four variants get that source's input normalization,
so that they see identical inputs and differ only in pooling and initialization.

Protocols (`--protocols`, any of 'paper', 'grouped', 'stratified', 'original'):
  paper       the paper's balanced subset and fixed test count, random slice-level split
              (`data.split.per_class`, `num_test`); repeated over K = --folds random
              splits (split seed 0..K-1, model seed fixed, like the folds of a k-fold),
              or over --seeds (split and model seed);
  grouped     leakage-safe k-fold (--folds): exact/near duplicates and a patient's
              slices stay on one side (`data.split.max_per_class` subsamples whole groups);
  stratified  k-fold by class at the image level (not group aware);
  original    the dataset's own train/test folders, repeated over seeds.
With --seeds, k-fold protocols repeat the k folds for each seed (split and model seed).

Every run is an ordinary training run (`train.train_and_evaluate`) in
WORKDIR/runs/<protocol>/<variant>/<repeat>/ (config.json, metrics.jsonl, TensorBoard,
checkpoint, result.json). A finished run (result.json with the same config) is not
trained again, so an interrupted command resumes where it stopped and a later command
can add variants (e.g. the TL rows once ImageNet weights are available) to the same
table. A WORKDIR holding runs of a different config is refused.

Outputs: WORKDIR/results.md (tables with mean and 95% Student-t interval over the
repeats, the paper's numbers, split sizes, leakage counts, reductions against
configs/default.py, device, date, run time), WORKDIR/results.json (the same, plus every
run's metrics), WORKDIR/plots/*.png (ROC curves, confusion matrices summed over the
repeats, training curves). `--report_only` rebuilds them from finished runs. With a
validation split (`data.split.val_fraction` > 0) the tables also show the validation
metric each run's model was selected by.

Planning, resuming and training a run are shared with the sweep runner (`runs.py`), and
so are intervals, captions and plots (`report.py`).

TL variants whose ImageNet weights cannot be found (config.pretrained.path, the cache,
Keras' or torch.hub's cache, or a download) are reported as
"not run (no ImageNet weights available)", with the command that runs them.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

from spp_resnet import cli
from spp_resnet.experiments import report
from spp_resnet.experiments import runs as runs_lib
from spp_resnet.experiments.runs import Run, RunnerError

FLAGS = flags.FLAGS

AblationError = RunnerError  # the name this module's callers know

VARIANTS = ('basic', 'spp', 'tl', 'spp_tl')
VARIANT_LABELS = {'basic': 'basic', 'spp': '+SPP', 'tl': '+TL', 'spp_tl': '+SPP+TL'}
VARIANT_DESCRIPTIONS = {
    'basic': 'random init, global average pooling',
    'spp': 'random init, spatial pyramid pooling',
    'tl': 'ImageNet weights, global average pooling',
    'spp_tl': 'ImageNet weights, spatial pyramid pooling',
}
# Neamah et al., Table 2 (ResNet-50 on the Bohaju set, 60 random test slices): accuracy.
PAPER_ACCURACY = {'basic': 0.924, 'spp': 0.942, 'tl': 0.9812, 'spp_tl': 0.9902}
PROTOCOL_DESCRIPTIONS = {
    'paper': "the paper's: balanced random subset, fixed number of random test slices "
             '(slice level, not group aware)',
    'grouped': 'leakage-safe k-fold: exact and near-duplicate images and a patient\'s '
               'slices never straddle train and test',
    'stratified': 'k-fold stratified by class at the image level (not group aware)',
    'original': "the dataset's own train/test folders",
}
NOT_RUN_NO_WEIGHTS = 'not run (no ImageNet weights available)'
# Config fields the runner sets per variant (not reductions of the base config).
VARIANT_FIELDS = ('model.pooling', 'pretrained.source', 'data.normalization')
_MODULE = 'spp_resnet.experiments.ablation'


# ---------------------------------------------------------------------------------------
# Planning.

def tl_source(config) -> str:
  """The ImageNet weights of the TL variants: the config's, else by ResNet variant."""
  if config.pretrained.source:
    return config.pretrained.source
  return 'imagenet_keras' if config.model.variant == 'v1' else 'imagenet_torchvision'


def variant_overrides(config, variant: str) -> dict:
  source = tl_source(config)
  over = {'model.pooling': 'spp' if variant in ('spp', 'spp_tl') else 'gap',
          'pretrained.source': source if variant in ('tl', 'spp_tl') else ''}
  if config.data.normalization == 'auto':
    from spp_resnet.data import preprocess  # pylint: disable=g-import-not-at-top
    over['data.normalization'] = preprocess.resolve_normalization('auto', source)
  return over


def plan(config, workdir: str, variants, protocols, folds: int,
         seeds: list[int]) -> list[Run]:
  """Runs in WORKDIR/runs/<protocol>/<variant>/<repeat>/, by protocol, variant, repeat."""
  overrides = {v: variant_overrides(config, v) for v in variants}
  return [run for protocol in protocols
          for run in runs_lib.expand(config, os.path.join(workdir, 'runs', protocol),
                                     overrides, protocol, folds, seeds)]


# ---------------------------------------------------------------------------------------
# Weights availability.

def find_weights(config, download: bool | None = None) -> tuple[bool, str]:
  """(True, path) if the TL variants' ImageNet file is found (or downloaded)."""
  from spp_resnet import weights  # pylint: disable=g-import-not-at-top
  source = tl_source(config)
  depth = int(str(config.model.backbone).removeprefix('resnet'))
  try:
    path = weights.resolve_weights_file(source, depth, path=config.pretrained.path,
                                        cache_dir=config.pretrained.cache_dir,
                                        download=download)
  except (weights.WeightsUnavailableError, ValueError) as e:
    return False, str(e)
  return True, str(path)


def weights_instructions(config) -> str:
  from spp_resnet import weights  # pylint: disable=g-import-not-at-top
  source = tl_source(config)
  depth = int(str(config.model.backbone).removeprefix('resnet'))
  try:
    official = weights.sources.default_file(source, depth)
  except ValueError as e:
    return str(e)
  return (f'get `{official.filename}` ({official.algorithm} {official.digest}) from '
          f'{official.url}, put it in `{config.pretrained.cache_dir}` (or `~/.keras/models`, '
          '`~/.cache/torch/hub/checkpoints`) or pass '
          f'`--config.pretrained.path=/path/to/{official.filename}`')


def command_line(argv: list[str], **replace: str) -> str:
  """This invocation's command, with some flags replaced or added."""
  return report.command_line(_MODULE, argv, **replace)


# ---------------------------------------------------------------------------------------
# Report.

def build_report(workdir: str, config, runs: list[Run], results: dict[tuple, dict],
                 not_run: dict[str, str], argv: list[str], title: str,
                 invocation_wall_s: float) -> tuple[str, dict]:
  """results.md text and results.json content."""
  from spp_resnet.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  date = report.now()
  protocols = list(dict.fromkeys(r.protocol for r in runs))
  variants = list(dict.fromkeys(r.variant for r in runs))
  reductions_list = runs_lib.reductions(config, exclude=VARIANT_FIELDS)
  device = report.device()
  md = report.header(f'Ablation: {title}', command_line(argv), config, device, date)
  summary = {'title': title, 'command': command_line(argv), 'device': device, 'date': date,
             'config': json.loads(config.to_json_best_effort()),
             'reductions_vs_paper': reductions_list, 'protocols': {}}
  total_train_s = 0.0
  for protocol in protocols:
    names = list(dict.fromkeys(r.repeat for r in runs if r.protocol == protocol))
    variant_results = {v: [results[(protocol, v, n)] for n in names
                           if (protocol, v, n) in results] for v in variants}
    any_results = [x for xs in variant_results.values() for x in xs]
    first = any_results[0] if any_results else None
    # A column of the validation metric the train loop selected by, where runs have one.
    val_metric = report.selection_metric(any_results)
    val_cols = [val_metric] if val_metric else []
    rows, proto_json = [], {'description': PROTOCOL_DESCRIPTIONS.get(protocol, protocol),
                            'repeats': names, 'variants': {}}
    for v in variants:
      label = f'{config.model.backbone.replace("resnet", "ResNet-")} {VARIANT_LABELS[v]}'
      paper = f'{PAPER_ACCURACY[v]:.4f}' if v in PAPER_ACCURACY else ''
      res = variant_results[v]
      if not res:
        reason = not_run.get(v, 'not run yet')
        rows.append([label, paper, reason]
                    + [''] * (len(val_cols) + len(report.METRICS) - 1) + ['0'])
        proto_json['variants'][v] = {'status': reason}
        continue
      agg = report.aggregate(res)
      total_train_s += agg['wall_s']
      status = 'ok' if len(res) == len(names) else f'partial ({len(res)}/{len(names)} runs)'
      val = agg.get('val_metrics', {})
      rows.append([label, paper]
                  + [report.fmt_ci(val.get(k), clip=report.higher_is_better(k))
                     for k in val_cols]
                  + [report.fmt_ci(agg['metrics'][k]) for k, _ in report.METRICS]
                  + [str(len(res)) + ('' if status == 'ok' else f' of {len(names)}')])
      proto_json['variants'][v] = {'status': status, **agg,
                                   'runs': {r['repeat']: {'metrics': r['metrics'],
                                                          'selection': r.get('selection'),
                                                          'split': r['split'],
                                                          'wall_s': r['wall_s']}
                                            for r in res}}
    plots_made = report.plot_runs(
        workdir, protocol, variant_results, VARIANT_LABELS,
        lambda v, repeat, p=protocol: os.path.join(workdir, 'runs', p, v, repeat))
    proto_json['plots'] = [os.path.relpath(p, workdir) for p in plots_made]
    summary['protocols'][protocol] = proto_json
    md += ['', f'## Protocol `{protocol}`: {PROTOCOL_DESCRIPTIONS.get(protocol, protocol)}',
           '']
    header = (['variant', 'paper acc.']
              + [f'val. {report.METRIC_LABELS.get(k, k)}' for k in val_cols]
              + [h for _, h in report.METRICS] + ['runs'])
    md.append(metrics_lib.markdown_table(header, rows))
    md.append('')
    repeat_text, kfold = report.describe_repeats(names, protocol, config)
    caption = [report.interval_note(repeat_text, kfold, first)
               + ' "paper acc." is Neamah et al.\'s Table 2 (ResNet-50, full Bohaju set, '
               '224 px, 25 epochs, one random split of 60 test slices).']
    if val_cols:
      caption.append(f'"val. {report.METRIC_LABELS.get(val_metric, val_metric)}": on the '
                     'validation split, of the model the train loop selected by it; the '
                     'test columns are of that model.')
    if first:
      caption += report.split_notes(next(xs for xs in variant_results.values() if xs))
    if reductions_list:
      caption.append('Reduced against the paper\'s setting (configs/default.py): '
                     + '; '.join(reductions_list) + '.')
    plot_names = ', '.join(f'`{os.path.relpath(p, workdir)}`' for p in plots_made)
    caption.append(f'Plots: {plot_names or "none"}.')
    md += caption
  for v, reason in not_run.items():
    if v in ('tl', 'spp_tl'):
      md += ['', f'**TL rows:** {reason}. To run them: {weights_instructions(config)}, then',
             '', '```bash', command_line(argv, variants='tl,spp_tl'), '```',
             'which trains only the TL variants and rebuilds this table with all rows.']
      break
  md += ['', report.time_note(total_train_s, invocation_wall_s)]
  summary['train_s_total'] = total_train_s
  summary['not_run'] = not_run
  return '\n'.join(md) + '\n', summary


# ---------------------------------------------------------------------------------------
# Main.

def run_ablation(config, workdir: str, *, variants, protocols, folds: int,
                 seeds: list[int], argv: list[str], title: str = '',
                 report_only: bool = False, keep_checkpoints: str = 'first'
                 ) -> dict:
  """Trains the missing runs and writes results.md/.json and the plots; returns the json."""
  start = time.perf_counter()
  for v in variants:
    if v not in VARIANTS:
      raise AblationError(f'--variants: unknown {v!r}; choose from {", ".join(VARIANTS)}')
  for p in protocols:
    if p not in PROTOCOL_DESCRIPTIONS:
      raise AblationError(f'--protocols: unknown {p!r}; choose from '
                          f'{", ".join(PROTOCOL_DESCRIPTIONS)}')
  os.makedirs(workdir, exist_ok=True)
  # The table always has all four rows; variants not asked for this time are filled in
  # from earlier invocations in the same workdir when their runs are there.
  all_runs = plan(config, workdir, VARIANTS, protocols, folds, seeds)
  not_run: dict[str, str] = {}
  wanted = set(variants)
  if wanted & {'tl', 'spp_tl'}:
    ok, message = find_weights(config, download=False if report_only else None)
    if not ok:
      logging.warning('ImageNet weights not found, the TL variants are not run:\n%s', message)
      for v in ('tl', 'spp_tl'):
        if v in wanted:
          not_run[v] = NOT_RUN_NO_WEIGHTS
          wanted.discard(v)
  results = runs_lib.collect(all_runs, trainable=lambda run: run.variant in wanted,
                             report_only=report_only, keep_checkpoints=keep_checkpoints)
  for v in VARIANTS:
    if v not in not_run and not any(k[1] == v for k in results):
      not_run[v] = 'not run (not requested)' if v not in variants else 'not run yet'
  md, summary = build_report(workdir, config, all_runs, results, not_run, argv,
                             title or config.data.dataset, time.perf_counter() - start)
  report.write(workdir, md, summary)
  return summary


def _define_flags():
  runs_lib.define_flags()
  flags.DEFINE_list('variants', list(VARIANTS), f'Variants to train: {", ".join(VARIANTS)}.')
  flags.DEFINE_list('protocols', ['paper', 'grouped'],
                    f'Split protocols: {", ".join(PROTOCOL_DESCRIPTIONS)}.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  with cli.exit_on_user_error(RunnerError):
    seeds = runs_lib.seeds_flag(FLAGS.seeds)
    run_ablation(FLAGS.config, FLAGS.workdir, variants=FLAGS.variants,
                 protocols=FLAGS.protocols, folds=FLAGS.folds, seeds=seeds,
                 argv=sys.argv, title=FLAGS.title, report_only=FLAGS.report_only,
                 keep_checkpoints=FLAGS.keep_checkpoints)


def run():
  """The console script (pyproject.toml) and `python -m`."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
