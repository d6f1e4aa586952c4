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
repeats, training curves). `--report_only` rebuilds them from finished runs.

TL variants whose ImageNet weights cannot be found (config.pretrained.path, the cache,
Keras' or torch.hub's cache, or a download) are reported as
"not run (no ImageNet weights available)", with the command that runs them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from typing import Any

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags
import numpy as np

from spp_resnet import cli

FLAGS = flags.FLAGS

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
KFOLD_PROTOCOLS = ('grouped', 'stratified')
METRICS = (('accuracy', 'accuracy'), ('precision', 'precision'),
           ('recall', 'recall / sensitivity'), ('specificity', 'specificity'),
           ('f1', 'F1'), ('roc_auc', 'ROC AUC'))
NOT_RUN_NO_WEIGHTS = 'not run (no ImageNet weights available)'
# Config fields the runner sets per variant/repeat (not reductions of the base config),
# and fields that do not change what is trained.
_RUNNER_FIELDS = ('seed', 'model.pooling', 'pretrained.source', 'data.normalization',
                  'data.split.protocol', 'data.split.fold', 'data.split.num_folds',
                  'data.split.seed')
_IGNORED_FIELDS = ('data.data_dir', 'data.manual_dir', 'data.num_workers',
                   'data.prefetch_buffer', 'data.cache', 'pretrained.path',
                   'pretrained.cache_dir', 'pretrained.strict_digest', 'log_every_steps',
                   'checkpoint_every_steps', 'keep_checkpoints', 'halt_on_nan')


# ---------------------------------------------------------------------------------------
# Planning.

class AblationError(ValueError):
  """A usage error of the runner (bad flag, workdir of another config)."""


@dataclasses.dataclass
class Run:
  protocol: str
  variant: str
  repeat: str
  config: ml_collections.ConfigDict
  workdir: str


def tl_source(config) -> str:
  """The ImageNet weights of the TL variants: the config's, else by ResNet variant."""
  if config.pretrained.source:
    return config.pretrained.source
  return 'imagenet_keras' if config.model.variant == 'v1' else 'imagenet_torchvision'


def repeats(config, protocol: str, folds: int, seeds: list[int]) -> list[tuple[str, dict]]:
  """[(repeat name, config overrides)] of one protocol."""
  if protocol in KFOLD_PROTOCOLS and folds >= 2:
    seed_list = seeds or [None]
    out = []
    for s in seed_list:
      for f in range(folds):
        over = {'data.split.num_folds': folds, 'data.split.fold': f}
        name = f'fold{f}'
        if s is not None:
          over.update({'seed': s, 'data.split.seed': s})
          name = f'seed{s}_fold{f}'
        out.append((name, over))
    return out
  if protocol in KFOLD_PROTOCOLS:  # holdout (test_fraction), repeated over seeds
    base = {'data.split.num_folds': 0, 'data.split.fold': 0}
  else:
    base = {}
  if seeds:  # split and model seed
    return [(f'seed{s}', {**base, 'seed': s, 'data.split.seed': s}) for s in seeds]
  # K random splits with the model seed fixed, like the K folds of a k-fold protocol.
  first = int(config.data.split.seed)
  return [(f'split{s}', {**base, 'data.split.seed': s})
          for s in range(first, first + max(folds, 1))]


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


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
  runs = []
  for protocol in protocols:
    for variant in variants:
      for name, over in repeats(config, protocol, folds, seeds):
        cfg = ml_collections.ConfigDict(config.to_dict())  # unlocked deep copy
        overrides = {'data.split.protocol': protocol, **variant_overrides(config, variant),
                     **over}
        for key, value in overrides.items():
          _set(cfg, key, value)
        runs.append(Run(protocol, variant, name, cfg,
                        os.path.join(workdir, 'runs', protocol, variant, name)))
  return runs


# ---------------------------------------------------------------------------------------
# Config bookkeeping.

def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def comparable(config) -> dict[str, Any]:
  """The fields that determine what a run trains and measures."""
  flat = flatten(json.loads(config.to_json_best_effort()))
  return {k: v for k, v in flat.items() if k not in _IGNORED_FIELDS}


def reductions(config) -> list[str]:
  """'field: paper value -> this value' for every field that differs from default.py."""
  try:
    from configs import default  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  paper = comparable(default.get_config())
  ours = comparable(config)
  out = []
  for key in sorted(set(paper) | set(ours)):
    if key in _RUNNER_FIELDS or paper.get(key) == ours.get(key):
      continue
    out.append(f'`{key}`: {paper.get(key, "(absent)")} → {ours.get(key, "(absent)")}')
  return out


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
  args = [a for a in argv[1:] if not any(a.startswith(f'--{k}=') for k in replace)]
  args += [f'--{k}={v}' for k, v in replace.items() if v is not None]
  return 'python -m spp_resnet.experiments.ablation ' + ' '.join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------------------
# Running.

def _split_info(run: Run, cache: dict) -> dict:
  """Class counts and the leakage summary of a run's split (what the pipeline logs)."""
  from spp_resnet.data import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  from spp_resnet.data import splits as splits_lib  # pylint: disable=g-import-not-at-top
  data = run.config.data
  key = (data.dataset, data.data_dir, data.manual_dir)
  if key not in cache:
    cache[key] = pipeline_lib.load_pooled(data.dataset, data_dir=data.data_dir,
                                          manual_dir=data.manual_dir)
  pooled = cache[key]
  split = splits_lib.make_splits(pooled.metadata, data.split)
  info = {'counts': splits_lib.describe(pooled.metadata, split, pooled.class_names),
          'num_train': int(len(split['train'])), 'num_test': int(len(split['test'])),
          'num_records': int(len(pooled.source))}
  if all(k in pooled.metadata for k in ('sha256', 'phash')):
    from spp_resnet.data import leakage as leakage_lib  # pylint: disable=g-import-not-at-top
    info['leakage'] = leakage_lib.find_leaks(
        pooled.metadata, split,
        near_duplicate_threshold=int(data.split.near_duplicate_threshold))['summary']
  return info


def _load_result(run: Run) -> dict | None:
  path = os.path.join(run.workdir, 'result.json')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    result = json.load(f)
  if result.get('config_fields') != _json_roundtrip(comparable(run.config)):
    raise AblationError(
        f'{run.workdir} holds a finished run of a different config (result.json). Use a '
        'new --workdir, or delete that run to train it again.')
  return result


def _json_roundtrip(value):
  return json.loads(json.dumps(value))


def train_one(run: Run, split_cache: dict, keep_checkpoint: bool) -> dict:
  from spp_resnet.training import train  # pylint: disable=g-import-not-at-top
  info = _split_info(run, split_cache)
  logging.info('=== %s / %s / %s: train %d, test %d, %s', run.protocol, run.variant,
               run.repeat, info['num_train'], info['num_test'], info.get('leakage'))
  start = time.perf_counter()
  result = train.train_and_evaluate(run.config, run.workdir)
  wall = time.perf_counter() - start
  out = {
      'protocol': run.protocol, 'variant': run.variant, 'repeat': run.repeat,
      'metrics': result.metrics, 'confusion': np.asarray(result.confusion).tolist(),
      'class_names': list(result.class_names),
      'probs': np.asarray(result.probs).tolist(),
      'labels': np.asarray(result.labels).tolist(),
      'split': info, 'wall_s': wall,
      'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'config_fields': _json_roundtrip(comparable(run.config)),
  }
  with open(os.path.join(run.workdir, 'class_names.json'), 'w', encoding='utf-8') as f:
    json.dump(list(result.class_names), f)
  tmp = os.path.join(run.workdir, 'result.json.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(out, f, allow_nan=True)
  os.replace(tmp, os.path.join(run.workdir, 'result.json'))
  if not keep_checkpoint:
    shutil.rmtree(os.path.join(run.workdir, 'checkpoints'), ignore_errors=True)
  logging.info('=== %s / %s / %s done in %.0f s: accuracy %.4f', run.protocol,
               run.variant, run.repeat, wall, result.metrics['accuracy'])
  return out


# ---------------------------------------------------------------------------------------
# Aggregation, tables and plots.

def _ci(values):
  from spp_resnet.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return None
  ci = metrics_lib.mean_ci(values)
  return {'mean': ci.mean, 'low': ci.low, 'high': ci.high, 'n': len(values)}


def _fmt_ci(ci, digits: int = 3) -> str:
  if ci is None:
    return 'n/a'
  if ci['n'] < 2 or math.isnan(ci['low']):
    return f'{ci["mean"]:.{digits}f}'
  lo, hi = max(0.0, ci['low']), min(1.0, ci['high'])
  return f'{ci["mean"]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]'


def aggregate(results: list[dict]) -> dict:
  """Per-metric mean and 95% t-interval over repeats, summed confusion, pooled scores."""
  out = {'n_runs': len(results), 'repeats': [r['repeat'] for r in results],
         'metrics': {}, 'per_run': {}}
  for key, _ in METRICS:
    values = [r['metrics'].get(key) for r in results]
    out['metrics'][key] = _ci(values)
    out['per_run'][key] = values
  out['confusion'] = np.sum([np.asarray(r['confusion']) for r in results], axis=0).tolist()
  out['num_test'] = [r['split']['num_test'] for r in results]
  out['num_train'] = [r['split']['num_train'] for r in results]
  out['wall_s'] = float(sum(r['wall_s'] for r in results))
  return out


def _leakage_line(results: list[dict]) -> str:
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


def _device() -> str:
  import jax  # pylint: disable=g-import-not-at-top
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


def plot_all(workdir: str, protocol: str, variant_results: dict[str, list[dict]]) -> list[str]:
  """ROC curves, summed confusion matrices and training curves of one protocol."""
  from spp_resnet.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from spp_resnet.evaluation import plots  # pylint: disable=g-import-not-at-top
  from spp_resnet.evaluation import writers  # pylint: disable=g-import-not-at-top
  plot_dir = os.path.join(workdir, 'plots')
  made = []
  curves = {}
  for variant, results in variant_results.items():
    if not results:
      continue
    class_names = results[0]['class_names']
    label = VARIANT_LABELS[variant]
    probs = np.concatenate([np.asarray(r['probs'], np.float64).reshape(-1, len(class_names))
                            for r in results])
    labels = np.concatenate([np.asarray(r['labels'], np.int64) for r in results])
    if len(class_names) == 2:
      if len(np.unique(labels)) == 2:
        fpr, tpr, _ = metrics_lib.roc_curve(probs[:, 1], labels == 1)
        curves[label] = (fpr, tpr, metrics_lib.roc_auc(probs[:, 1], labels == 1))
    else:  # one-vs-rest curve per class, one figure per variant
      per_class = {}
      for k, name in enumerate(class_names):
        if 0 < np.sum(labels == k) < len(labels):
          fpr, tpr, _ = metrics_lib.roc_curve(probs[:, k], labels == k)
          per_class[f'{name} vs rest'] = (fpr, tpr, metrics_lib.roc_auc(probs[:, k], labels == k))
      if per_class:
        path = os.path.join(plot_dir, f'roc_{protocol}_{variant}.png')
        plots.plot_roc(per_class, path, title=f'{protocol}: {label}, one vs rest '
                       f'(pooled over {len(results)} runs)')
        made.append(path)
    confusion = np.sum([np.asarray(r['confusion']) for r in results], axis=0)
    path = os.path.join(plot_dir, f'confusion_{protocol}_{variant}.png')
    plots.plot_confusion(confusion, class_names, path,
                         title=f'{protocol}: {label} (sum over {len(results)} runs)')
    made.append(path)
    history = []
    for r in results:
      run_dir = os.path.join(workdir, 'runs', protocol, variant, r['repeat'])
      for row in writers.read_metrics(run_dir):
        renamed = {'epoch': row['epoch']}
        for key, value in row.items():
          split, slash, metric = key.partition('/')
          if slash and '/' not in metric:
            renamed[f'{r["repeat"]} {split}/{metric}'] = value
        history.append(renamed)
    if history:
      path = os.path.join(plot_dir, f'curves_{protocol}_{variant}.png')
      plots.plot_training_curves(history, path)
      made.append(path)
  if curves:
    path = os.path.join(plot_dir, f'roc_{protocol}.png')
    n = max(len(r) for r in variant_results.values())
    plots.plot_roc(curves, path, title=f'{protocol}: test ROC, pooled over {n} runs')
    made.insert(0, path)
  return made


def build_report(workdir: str, config, runs: list[Run], results: dict[tuple, dict],
                 not_run: dict[str, str], argv: list[str], title: str,
                 invocation_wall_s: float) -> tuple[str, dict]:
  """results.md text and results.json content."""
  from spp_resnet.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  protocols = list(dict.fromkeys(r.protocol for r in runs))
  variants = list(dict.fromkeys(r.variant for r in runs))
  reductions_list = reductions(config)
  device = _device()
  data = config.data
  md = [f'# Ablation: {title}', '',
        f'- Command: `{command_line(argv)}`',
        f'- Dataset: `{data.dataset}` (manual_dir `{data.manual_dir or "-"}`), image size '
        f'{data.image_size}, backbone {config.model.backbone} {config.model.variant}, '
        f'{config.num_epochs} epochs, batch {config.batch_size}',
        f'- Device: {device}', f'- Report written: {now}']
  summary = {'title': title, 'command': command_line(argv), 'device': device, 'date': now,
             'config': json.loads(config.to_json_best_effort()),
             'reductions_vs_paper': reductions_list, 'protocols': {}}
  total_train_s = 0.0
  for protocol in protocols:
    proto_runs = [r for r in runs if r.protocol == protocol]
    names = list(dict.fromkeys(r.repeat for r in proto_runs))
    variant_results = {v: [results[(protocol, v, n)] for n in names
                           if (protocol, v, n) in results] for v in variants}
    kfold = protocol in KFOLD_PROTOCOLS and any(n.startswith('fold') or '_fold' in n
                                                for n in names)
    any_results = [x for xs in variant_results.values() for x in xs]
    first = any_results[0] if any_results else None
    rows, proto_json = [], {'description': PROTOCOL_DESCRIPTIONS.get(protocol, protocol),
                            'repeats': names, 'variants': {}}
    for v in variants:
      label = f'{config.model.backbone.replace("resnet", "ResNet-")} {VARIANT_LABELS[v]}'
      paper = f'{PAPER_ACCURACY[v]:.4f}' if v in PAPER_ACCURACY else ''
      res = variant_results[v]
      if not res:
        reason = not_run.get(v, 'not run yet')
        rows.append([label, paper, reason] + [''] * (len(METRICS) - 1) + ['0'])
        proto_json['variants'][v] = {'status': reason}
        continue
      agg = aggregate(res)
      total_train_s += agg['wall_s']
      status = 'ok' if len(res) == len(names) else f'partial ({len(res)}/{len(names)} runs)'
      rows.append([label, paper] + [_fmt_ci(agg['metrics'][k]) for k, _ in METRICS]
                  + [str(len(res)) + ('' if status == 'ok' else f' of {len(names)}')])
      proto_json['variants'][v] = {'status': status, **agg,
                                   'runs': {r['repeat']: {'metrics': r['metrics'],
                                                          'split': r['split'],
                                                          'wall_s': r['wall_s']}
                                            for r in res}}
    plots_made = plot_all(workdir, protocol, variant_results)
    proto_json['plots'] = [os.path.relpath(p, workdir) for p in plots_made]
    summary['protocols'][protocol] = proto_json
    md += ['', f'## Protocol `{protocol}`: {PROTOCOL_DESCRIPTIONS.get(protocol, protocol)}',
           '']
    header = ['variant', 'paper acc.'] + [h for _, h in METRICS] + ['runs']
    md.append(metrics_lib.markdown_table(header, rows))
    md.append('')
    if kfold:
      repeat_text = f'{len(names)} folds ({", ".join(names)})'
    elif all(n.startswith('split') for n in names):
      repeat_text = (f'{len(names)} random splits ({", ".join(names)}: split seeds; '
                     f'model seed {config.seed} throughout)')
    else:
      repeat_text = f'{len(names)} repeats ({", ".join(names)}; split seed = model seed)'

    caption = [f'Mean and 95% Student-t interval over {repeat_text} (t with n-1 degrees of '
               'freedom, bounds clipped to [0, 1]); '
               + ('folds share training data, so the interval is only approximate. '
                  if kfold else '')
               + 'Binary metrics are for the positive class '
               + (f'`{first["class_names"][1]}`' if first and len(first['class_names']) == 2
                  else '(multi-class: unweighted macro means over classes, one vs rest)')
               + '. "paper acc." is Neamah et al.\'s Table 2 (ResNet-50, full Bohaju set, '
               '224 px, 25 epochs, one random split of 60 test slices).']
    if first:
      ref = next(xs for xs in variant_results.values() if xs)
      counts = first['split']['counts']
      sizes = ', '.join(f'{x["split"]["num_train"]}/{x["split"]["num_test"]}' for x in ref)
      caption.append(f'Split sizes (train/test images per run): {sizes}; first run: train '
                     f'{counts.get("train")}, test {counts.get("test")}; '
                     f'{first["split"]["num_records"]} records in the dataset.')
      caption.append('Train/test leakage per run (groups crossing the split / test images '
                     f'in them): {_leakage_line(ref)}.')
    if reductions_list:
      caption.append('Reduced against the paper\'s setting (configs/default.py): '
                     + '; '.join(reductions_list) + '.')
    caption.append(f'Plots: {", ".join(f"`{os.path.relpath(p, workdir)}`" for p in plots_made) or "none"}.')
    md += caption
  for v, reason in not_run.items():
    if v in ('tl', 'spp_tl'):
      md += ['', f'**TL rows:** {reason}. To run them: {weights_instructions(config)}, then',
             '', '```bash', command_line(argv, variants='tl,spp_tl'), '```',
             'which trains only the TL variants and rebuilds this table with all rows.']
      break
  md += ['', f'Training time of the runs in this table: {total_train_s / 60:.1f} min '
         f'(this invocation: {invocation_wall_s / 60:.1f} min, including data loading).']
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
  results, split_cache, first_seen = {}, {}, set()
  for run in all_runs:
    key = (run.protocol, run.variant, run.repeat)
    result = _load_result(run)
    if result is None and run.variant in wanted and not report_only:
      keep = (keep_checkpoints == 'all' or
              (keep_checkpoints == 'first' and (run.protocol, run.variant) not in first_seen))
      result = train_one(run, split_cache, keep)
    first_seen.add((run.protocol, run.variant))
    if result is not None:
      results[key] = result
  for v in VARIANTS:
    if v not in not_run and not any(k[1] == v for k in results):
      not_run[v] = 'not run (not requested)' if v not in variants else 'not run yet'
  md, summary = build_report(workdir, config, all_runs, results, not_run, argv,
                             title or config.data.dataset, time.perf_counter() - start)
  with open(os.path.join(workdir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(md)
  with open(os.path.join(workdir, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1, allow_nan=True)
  print(md)
  return summary


def _define_flags():
  config_flags.DEFINE_config_file('config', None, 'Base ml_collections config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Output directory (runs, results, plots).')
  flags.DEFINE_list('variants', list(VARIANTS), f'Variants to train: {", ".join(VARIANTS)}.')
  flags.DEFINE_list('protocols', ['paper', 'grouped'],
                    f'Split protocols: {", ".join(PROTOCOL_DESCRIPTIONS)}.')
  flags.DEFINE_integer('folds', 3, 'k of the k-fold protocols; the number of random '
                       "splits (seeds 0..k-1) of 'paper'/'original' when --seeds is empty.")
  flags.DEFINE_list('seeds', [], 'Seeds (model and split) to repeat over; k-fold '
                    'protocols repeat all folds per seed.')
  flags.DEFINE_string('title', '', 'Heading of the results page (default: the dataset).')
  flags.DEFINE_bool('report_only', False, 'Only rebuild results.md/.json and the plots '
                    'from finished runs.')
  flags.DEFINE_enum('keep_checkpoints', 'first', ['first', 'all', 'none'],
                    'Checkpoints kept after a run is evaluated: of the first repeat of '
                    'each protocol and variant (for evaluate_external), all, or none.')
  flags.DEFINE_string('compilation_cache_dir', '~/.cache/spp_resnet/jax_compilation_cache',
                      'JAX persistent compilation cache (re-used across folds); "" = off.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      os.path.expanduser(FLAGS.compilation_cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  with cli.exit_on_user_error(AblationError):
    run_ablation(FLAGS.config, FLAGS.workdir, variants=FLAGS.variants,
                 protocols=FLAGS.protocols, folds=FLAGS.folds,
                 seeds=[int(s) for s in FLAGS.seeds], argv=sys.argv, title=FLAGS.title,
                 report_only=FLAGS.report_only, keep_checkpoints=FLAGS.keep_checkpoints)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
