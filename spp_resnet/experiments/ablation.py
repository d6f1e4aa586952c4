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

Several backbones (the paper's Table 3, configs/table3.py): `config.ablation_backbones`
lists them (`config.model.backbone` is then ignored) and `config.ablation_variants` the
variants of each (default: all four); every (backbone, variant) is a row, trained in
WORKDIR/runs/<protocol>/<backbone>_<variant>/. Each backbone's TL rows take
`config.pretrained.source` when it has weights for that backbone, else the first source
that has (`weights.sources.sources_for_backbone`); LeNet has none, so its TL rows read
"not run (no ImageNet weights exist for LeNet-5)". The weights files are looked up in
`pretrained.cache_dir` and Keras' and torch.hub's caches (`pretrained.path`, one file,
must stay empty).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

from spp_resnet import cli
from spp_resnet.data import preprocess
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.experiments import report
from spp_resnet.experiments import runs as runs_lib
from spp_resnet.experiments.runs import Run, RunnerError
from spp_resnet.weights import sources

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
# Neamah et al., Table 3: the other backbones, each with SPP and (LeNet has none)
# ImageNet weights: (its variant here, accuracy, precision, recall, F1, sensitivity,
# specificity) as printed (recall and sensitivity differ there).
PAPER_TABLE3 = {
    'vgg16': ('spp_tl', 0.91, 0.834, 0.903, 0.924, 0.932, 0.9302),
    'googlenet': ('spp_tl', 0.752, 0.702, 0.732, 0.782, 0.827, 0.8034),
    'lenet': ('spp', 0.923, 0.896, 0.941, 0.906, 0.9517, 0.9428),
    'alexnet': ('spp_tl', 0.905, 0.892, 0.91, 0.924, 0.9322, 0.9252),
}
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

def tl_source(config, backbone: str = '') -> str:
  """The ImageNet weights of `backbone`'s TL variants (default: config.model.backbone).

  ResNets: config.pretrained.source, else the source of config.model.variant. Others:
  config.pretrained.source if it has weights for the backbone, else the first source
  that has; '' if none has (LeNet).
  """
  backbone = backbone or config.model.backbone
  source = config.pretrained.source
  if backbone.startswith('resnet'):
    return source or ('imagenet_keras' if config.model.variant == 'v1'
                      else 'imagenet_torchvision')
  if source and sources.source_fits_backbone(source, backbone):
    return source
  return next(iter(sources.sources_for_backbone(backbone)), '')


def table_rows(config, variants=VARIANTS) -> dict[str, tuple[str, str]]:
  """Row name -> (backbone, variant): the variants of config.model.backbone, or of each
  backbone of `config.ablation_backbones`, named '<backbone>_<variant>' then."""
  backbones = tuple(config.get('ablation_backbones', ()) or ())
  variants = [v for v in variants if v in (config.get('ablation_variants', ()) or VARIANTS)]
  if not backbones:
    return {v: (config.model.backbone, v) for v in variants}
  return {f'{b}_{v}': (b, v) for b in backbones for v in variants}


def variant_overrides(config, variant: str, backbone: str = '') -> dict:
  source = tl_source(config, backbone)
  over = {'model.pooling': 'spp' if variant in ('spp', 'spp_tl') else 'gap',
          'pretrained.source': source if variant in ('tl', 'spp_tl') else ''}
  if backbone:
    over['model.backbone'] = backbone
  if config.data.normalization == 'auto':
    over['data.normalization'] = preprocess.resolve_normalization('auto', source)
  return over


def plan(config, workdir: str, variants, protocols, folds: int,
         seeds: list[int]) -> list[Run]:
  """Runs in WORKDIR/runs/<protocol>/<row>/<repeat>/, by protocol, row, repeat."""
  several = bool(config.get('ablation_backbones'))
  overrides = {row: variant_overrides(config, v, b if several else '')
               for row, (b, v) in table_rows(config, variants).items()}
  return [run for protocol in protocols
          for run in runs_lib.expand(config, os.path.join(workdir, 'runs', protocol),
                                     overrides, protocol, folds, seeds)]


# ---------------------------------------------------------------------------------------
# Weights availability.

def find_weights(config, download: bool | None = None,
                 backbone: str = '') -> tuple[bool, str]:
  """(True, path) if the TL variants' ImageNet file is found (or downloaded)."""
  backbone = backbone or config.model.backbone
  try:
    path = sources.resolve_weights_file(tl_source(config, backbone), backbone,
                                        path=config.pretrained.path,
                                        cache_dir=config.pretrained.cache_dir,
                                        download=download)
  except (sources.WeightsUnavailableError, ValueError) as e:
    return False, str(e)
  return True, str(path)


def weights_instructions(config, backbones=()) -> str:
  """Which official files the TL rows of `backbones` (default: the config's) need, and
  where to put them."""
  # flax: not before --help
  from spp_resnet.models import backbone_label  # pylint: disable=g-import-not-at-top
  backbones = list(backbones) or [config.model.backbone]
  files = []
  for backbone in backbones:
    try:
      official = sources.default_file(tl_source(config, backbone), backbone)
    except ValueError as e:
      return str(e)
    files.append(f'`{official.filename}` ({official.algorithm} {official.digest}) from '
                 f'{official.url}')
  if len(files) == 1:
    return (f'get {files[0]}, put it in `{config.pretrained.cache_dir}` (or '
            '`~/.keras/models`, `~/.cache/torch/hub/checkpoints`) or pass '
            f'`--config.pretrained.path=/path/to/{official.filename}`')
  listed = '; '.join(f'{backbone_label(b)}: {f}' for b, f in zip(backbones, files))
  return (f'get {listed}; put them in `{config.pretrained.cache_dir}` (or '
          '`~/.keras/models`, `~/.cache/torch/hub/checkpoints`)')


def _not_run_no_source(backbone: str) -> str:
  from spp_resnet.models import backbone_label  # pylint: disable=g-import-not-at-top
  return f'not run (no ImageNet weights exist for {backbone_label(backbone)})'


def command_line(argv: list[str], **replace: str) -> str:
  """This invocation's command, with some flags replaced or added."""
  return report.command_line(_MODULE, argv, **replace)


# ---------------------------------------------------------------------------------------
# Report.

def paper_accuracy(backbone: str, variant: str, several: bool) -> str:
  """The paper's accuracy of a row: Table 2 (ResNet-50), Table 3 (its variant only)."""
  if not several or backbone == 'resnet50':
    return f'{PAPER_ACCURACY[variant]:.4f}' if variant in PAPER_ACCURACY else ''
  paper_variant, accuracy, *_ = PAPER_TABLE3.get(backbone, ('', 0.0))
  return f'{accuracy:.4f}' if variant == paper_variant else ''


def paper_table3_markdown() -> str:
  from spp_resnet.models import backbone_label  # pylint: disable=g-import-not-at-top
  header = ['model', 'accuracy', 'precision', 'recall', 'F1', 'sensitivity', 'specificity']
  rows = [[f'{backbone_label(b)} {VARIANT_LABELS[v]}', *map(str, values)]
          for b, (v, *values) in PAPER_TABLE3.items()]
  return metrics_lib.markdown_table(header, rows)

def build_report(workdir: str, config, runs: list[Run], results: dict[tuple, dict],
                 not_run: dict[str, str], argv: list[str], title: str,
                 invocation_wall_s: float) -> tuple[str, dict]:
  """results.md text and results.json content."""
  from spp_resnet.models import backbone_label  # pylint: disable=g-import-not-at-top
  date = report.now()
  protocols = list(dict.fromkeys(r.protocol for r in runs))
  variants = list(dict.fromkeys(r.variant for r in runs))
  rows_of = table_rows(config)
  labels = {row: f'{backbone_label(b)} {VARIANT_LABELS[v]}' for row, (b, v) in rows_of.items()}
  several = bool(config.get('ablation_backbones'))
  reductions_list = runs_lib.reductions(
      config, exclude=VARIANT_FIELDS + (('model.backbone',) if several else ()))
  device = report.device()
  md = report.header(f'Ablation: {title}', command_line(argv), config, device, date,
                     swept=('model.backbone',) if several else ())
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
      label, paper = labels[v], paper_accuracy(*rows_of[v], several=several)
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
        workdir, protocol, variant_results, labels,
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
               '224 px, 25 epochs, one random split of 60 test slices)'
               + (', and Table 3 for the other backbones, each with SPP and, where they '
                  'exist, ImageNet weights (the table below).' if several else '.')]
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
  if several:
    md += ['', "Neamah et al.'s Table 3, for comparison:", '', paper_table3_markdown()]
  missing = list(dict.fromkeys(rows_of[row][0] for row, reason in not_run.items()
                               if reason == NOT_RUN_NO_WEIGHTS))  # backbones
  if missing:
    md += ['', f'**TL rows:** {NOT_RUN_NO_WEIGHTS}. To run them: '
           f'{weights_instructions(config, missing)}; then', '',
           '```bash', command_line(argv, variants='tl,spp_tl'), '```',
           'which trains only the TL variants and rebuilds this table with all rows.']
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
  several = bool(config.get('ablation_backbones'))
  if several and config.pretrained.path:
    raise AblationError(
        'config.pretrained.path names one weights file, a table over several backbones '
        'needs one per backbone: put the files into config.pretrained.cache_dir (or Keras\' '
        'or torch.hub\'s cache) and leave config.pretrained.path empty')
  os.makedirs(workdir, exist_ok=True)
  # The table always has all its rows; variants not asked for this time are filled in
  # from earlier invocations in the same workdir when their runs are there.
  all_runs = plan(config, workdir, VARIANTS, protocols, folds, seeds)
  rows = table_rows(config)
  not_run: dict[str, str] = {}
  wanted = {row for row, (_, v) in rows.items() if v in variants}
  for backbone in dict.fromkeys(b for row, (b, v) in rows.items()
                                if row in wanted and v in ('tl', 'spp_tl')):
    tl_rows = [row for row, (b, v) in rows.items()
               if b == backbone and v in ('tl', 'spp_tl') and row in wanted]
    if not tl_source(config, backbone):
      reason = _not_run_no_source(backbone)
    else:
      ok, message = find_weights(config, False if report_only else None, backbone)
      if ok:
        continue
      logging.warning('ImageNet weights not found, the TL variants of %s are not run:\n%s',
                      backbone, message)
      reason = NOT_RUN_NO_WEIGHTS
    not_run.update(dict.fromkeys(tl_rows, reason))
    wanted.difference_update(tl_rows)
  results = runs_lib.collect(all_runs, trainable=lambda run: run.variant in wanted,
                             report_only=report_only, keep_checkpoints=keep_checkpoints)
  for row, (_, v) in rows.items():
    if row not in not_run and not any(k[1] == row for k in results):
      not_run[row] = 'not run (not requested)' if v not in variants else 'not run yet'
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
