r"""Self-supervised pretraining of the classifier's backbone (BYOL), a stand-in for ImageNet.

  python -m spp_resnet.training.ssl --config=configs/ssl.py --workdir=runs/ssl \
      --config.data.manual_dir=/path/to/brain_tumor_classification_mri
  python main.py --config=configs/scratch.py:ssl --workdir=runs/scratch_ssl \
      --config.pretrained.path=runs/ssl --config.data.manual_dir=...

BYOL (Grill et al., 2020), not SimCLR: its loss has no negatives, so it does not depend on
the batch size (SimCLR's NT-Xent contrasts each image with the 2B - 2 others of the
batch, and loses accuracy as B shrinks: 64 on a CPU, 128 on one GPU here), and it never
pushes apart two slices that are only negatives by accident. MRI sets are full of
those: adjacent slices of one scan, and the same slice re-published by another dataset,
which contrastive learning would have to tell apart.

Two views of every image are drawn inside the jitted step with the project's
augmentation (`data.augment` of this run: random resized crop, rotation, D4 flips,
brightness / contrast / gamma, noise, blur). The online network (backbone -> global
average pool -> projector MLP -> predictor MLP) regresses the target network's
projection of the other view (2 - 2 cos); the target (backbone + projector) is an
exponential moving average of the online one, its decay rising from `ssl.ema_decay` to 1
on a cosine. Data-parallel like `train.py` (one jit, NamedSharding over a `data` mesh;
BatchNorm statistics over the global batch), Orbax checkpoints with the input position
(a re-run resumes), metrics.jsonl and TensorBoard per epoch: `ssl/loss` and
`ssl/z_std` (the spread of the normalized projections, times sqrt(dim): about 1 while
healthy, 0 if the representation collapses to a constant).

The image pool (leakage). The backbone is pretrained for ONE downstream run, whose data
config (`data.dataset`, `data.mix`, `data.split`) this run's config carries: that
dataset is split exactly as the fine-tuning run splits it, and its `ssl.heldout_splits`
(default validation and test) are never seen. Every other image of it is, labels
ignored, with every image of the datasets in `ssl.extra` (`data.mix` syntax,
'NAME=MANUAL_DIR;...'). The datasets in `ssl.holdout` (e.g. a cross-dataset test set)
are never seen either. Public MRI sets re-publish each other's slices, so "never seen"
is by content: every candidate image in an exact- or near-duplicate group (the `grouped`
split's relations, `data.split.near_duplicate_threshold`) with a held-out image is
dropped. WORKDIR/pool.json counts what was used and dropped per source.
`load_ssl_backbone` refuses a fine-tuning run whose dataset or split differs from the
one the pool was built for (its test images may be in the pool).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from spp_resnet import cli
from spp_resnet import config_validation
from spp_resnet import models
from spp_resnet.config_validation import ConfigError
from spp_resnet.data import augment as augment_lib
from spp_resnet.data import batching
from spp_resnet.data import mix as mix_lib
from spp_resnet.data import preprocess
from spp_resnet.data import sources as sources_lib
from spp_resnet.data import splits as splits_lib
from spp_resnet.evaluation import writers
from spp_resnet.training import checkpoint as checkpoint_lib
from spp_resnet.training import parallel
from spp_resnet.training import train as train_lib
from spp_resnet.training import workdir_lock
from spp_resnet.training.optimizer import create_optimizer

POOL_FILE = 'pool.json'
HELDOUT_SPLITS = ('val', 'test')


# ---------------------------------------------------------------------------------------
# Model and loss.

class MLP(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Linear: BYOL's projector and predictor."""

  def __init__(self, features: int, hidden: int, out: int, *, dtype, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(features, hidden, dtype=dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(hidden, momentum=0.9, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(hidden, out, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.out(nnx.relu(self.bn(self.hidden(x), use_running_average=not train)))


class Encoder(nnx.Module):
  """backbone -> global average pool -> projector; the target network is one of these."""

  def __init__(self, backbone: models.Backbone, hidden: int, dim: int, *, dtype,
               rngs: nnx.Rngs):
    self.backbone = backbone
    self.projector = MLP(backbone.num_features, hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.projector(self.backbone(x, train=train).mean(axis=(1, 2)), train=train)


class Byol(nnx.Module):
  """The online network: the encoder and a predictor on its projections."""

  def __init__(self, backbone: models.Backbone, hidden: int, dim: int, *, dtype,
               rngs: nnx.Rngs):
    self.encoder = Encoder(backbone, hidden, dim, dtype=dtype, rngs=rngs)
    self.predictor = MLP(dim, hidden, dim, dtype=dtype, rngs=rngs)


def create_byol(config: ml_collections.ConfigDict) -> Byol:
  """`config.model`'s backbone (as `create_model` builds it; the head is dropped) + heads."""
  rngs = nnx.Rngs(params=config.seed)
  backbone = models.create_model(config.model, num_classes=2, rngs=rngs).backbone
  return Byol(backbone, config.ssl.hidden_dim, config.ssl.projection_dim,
              dtype=models.COMPUTE_DTYPES[config.model.compute_dtype], rngs=rngs)


def _normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def byol_loss(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """2 - 2 cos(prediction, target) over the last axis, in float32: BYOL's normalized MSE.

  0 when aligned, 2 when orthogonal, 4 when opposite. Gradients do not reach `targets`.
  """
  targets = jax.lax.stop_gradient(targets)
  return 2.0 - 2.0 * jnp.sum(_normalize(predictions) * _normalize(targets), axis=-1)


def projection_spread(z: jax.Array) -> jax.Array:
  """Std over the batch of the l2-normalized projections [N, D], averaged over dims,
  times sqrt(D): about 1 for well-spread projections, 0 for a collapsed (constant) one."""
  return jnp.std(_normalize(z), axis=0).mean() * math.sqrt(z.shape[-1])


def ema_decay(base: float, step: jax.Array, total_steps: int) -> jax.Array:
  """BYOL's target decay: `base` at step 0, rising to 1 on a cosine at `total_steps`."""
  progress = jnp.minimum(step / max(total_steps, 1), 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


# ---------------------------------------------------------------------------------------
# State and step.

@flax.struct.dataclass
class SSLState:
  step: jax.Array
  params: nnx.State       # the online network (encoder + predictor)
  batch_stats: nnx.State
  target: nnx.State       # the target encoder's params: an EMA of params['encoder']
  opt_state: optax.OptState
  sums: dict[str, jax.Array]  # over the current epoch, on device (and in checkpoints)


def _zero_sums() -> dict[str, np.ndarray]:
  return {k: np.zeros((), np.float32) for k in ('loss', 'z_std', 'count')}


def create_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                 mesh, *, abstract: bool = False) -> tuple[nnx.GraphDef, nnx.GraphDef, SSLState]:
  """(online graphdef, encoder graphdef, state) replicated over `mesh`; as in
  `train.create_train_state`, one jitted init, or only shapes (`abstract`, a restore target)."""
  def init() -> SSLState:
    _, params, batch_stats = nnx.split(create_byol(config), nnx.Param, nnx.BatchStat)
    return SSLState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    target=params['encoder'], opt_state=tx.init(params),
                    sums=jax.tree.map(jnp.asarray, _zero_sums()))

  shapes = nnx.eval_shape(lambda: create_byol(config))
  graphdef, encoder_graphdef = nnx.graphdef(shapes), nnx.graphdef(shapes.encoder)
  replicated = parallel.replicated(mesh)
  if abstract:
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                         jax.eval_shape(init))
  else:
    state = jax.jit(init, out_shardings=replicated)()
  return graphdef, encoder_graphdef, state


def make_step(graphdef: nnx.GraphDef, encoder_graphdef: nnx.GraphDef,
              tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
              normalization: str, total_steps: int,
              mesh) -> Callable[[SSLState, dict], SSLState]:
  """The jitted BYOL step on a global batch {'image': uint8 [B, S, S, 1]}."""
  augment = augment_lib.AugmentSpec.from_config(config.data.augment)
  base_key = jax.random.key(config.seed)
  base_decay = float(config.ssl.ema_decay)

  def step(state: SSLState, batch: dict) -> SSLState:
    images = batch['image']
    # Keys depend only on the step: a resumed run draws the same views.
    keys = jax.random.split(jax.random.fold_in(base_key, state.step))
    # [B, 2, ...] -> [2B, ...]: an example's two views stay on its device (no exchange
    # under data parallelism); one pass of the backbone over both.
    views = jnp.stack([augment(images, k) for k in keys], axis=1)
    x = preprocess.to_model_input(views.reshape(-1, *views.shape[2:]), normalization)

    # The target in train mode (batch statistics, as BYOL); its BatchNorm updates are
    # dropped with it. Each view regresses the target's projection of the other view.
    target = nnx.merge(encoder_graphdef, state.target, state.batch_stats['encoder'])
    targets = target(x, train=True).reshape(images.shape[0], 2, -1)[:, ::-1]
    model = nnx.merge(graphdef, state.params, state.batch_stats)

    def loss_fn(model):
      z = model.encoder(x, train=True)
      p = model.predictor(z, train=True).reshape(targets.shape)
      losses = byol_loss(p, targets).mean(axis=1)  # [B]: the mean of both directions
      return losses.mean(), (losses, z)

    grads, (losses, z) = nnx.grad(loss_fn, has_aux=True)(model)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(base_decay, state.step, total_steps)
    count = images.shape[0]
    sums = state.sums
    return state.replace(
        step=state.step + 1, params=params,
        batch_stats=nnx.state(model, nnx.BatchStat), opt_state=opt_state,
        target=jax.tree.map(lambda t, o: t + (1.0 - decay) * (o - t), state.target,
                            params['encoder']),
        sums={'loss': sums['loss'] + losses.sum(),
              'z_std': sums['z_std'] + projection_spread(z) * count,
              'count': sums['count'] + count})

  # Replicated in and out: the donated state's buffers are reused in place.
  return jax.jit(step, donate_argnums=0, out_shardings=parallel.replicated(mesh))


# ---------------------------------------------------------------------------------------
# The image pool.

@dataclasses.dataclass
class Pool:
  images: np.ndarray  # uint8 [N, S, S, 1]
  report: dict        # what pool.json holds


@dataclasses.dataclass(frozen=True)
class _PoolBatch:
  """positions in the pool -> {'image'} (labels are not used)."""
  images: np.ndarray

  def __call__(self, positions: np.ndarray) -> dict:
    return {'image': self.images[np.asarray(positions)]}


def _hashes(name: str, metadata: dict, index: np.ndarray) -> dict[str, np.ndarray]:
  if not all(k in metadata for k in ('sha256', 'phash')):
    raise ValueError(f'{name} has no image hashes (sha256, phash): its images cannot be '
                     'checked against the held-out ones.')
  return {k: np.asarray(metadata[k])[index] for k in ('sha256', 'phash')}


def grouped_with(candidates: list[dict], heldout: list[dict], threshold: int) -> np.ndarray:
  """[sum of candidate lengths] bool: in one exact- or near-duplicate group (connected
  component, as the `grouped` split) with a held-out image."""
  parts = candidates + heldout
  metadata = {'sha256': np.concatenate([np.asarray(p['sha256']).astype(str) for p in parts]),
              'phash': np.concatenate([splits_lib.parse_phash(p['phash']) for p in parts])}
  metadata['label'] = np.zeros(len(metadata['sha256']), np.int64)
  ids = splits_lib.group_ids(metadata, near_duplicate_threshold=threshold,
                             kinds=('exact', 'near'))
  n = sum(len(p['sha256']) for p in candidates)
  return np.isin(ids[:n], ids[n:])


def _mix_parts(spec: str, data_dir: str):
  for part in mix_lib.parse_mix(spec) if spec.strip() else []:
    yield part.name, sources_lib.load_pooled(part.dataset, data_dir=data_dir,
                                             manual_dir=part.manual_dir)


def downstream_split(data: ml_collections.ConfigDict):
  """(pooled dataset, its split as the fine-tuning run makes it)."""
  pooled = sources_lib.pooled_from_config(data)
  return pooled, splits_lib.make_splits(pooled.metadata, data.split)


def build_pool(config: ml_collections.ConfigDict, num_workers: int = 0) -> Pool:
  """Every image the backbone may learn from, preprocessed (see the module docstring)."""
  data, ssl = config.data, config.ssl
  pooled, split = downstream_split(data)
  heldout_index = np.concatenate(
      [np.asarray(split[s], np.int64) for s in ssl.heldout_splits if s in split])
  sources = [(f'{data.dataset} (all but {"/".join(ssl.heldout_splits)})', pooled,
              np.setdiff1d(np.arange(len(pooled.source)), heldout_index))]
  sources += [(name, p, np.arange(len(p.source))) for name, p in _mix_parts(ssl.extra,
                                                                            data.data_dir)]
  heldout = [(f'{data.dataset} {"/".join(ssl.heldout_splits)}', pooled, heldout_index)]
  heldout += [(name, p, np.arange(len(p.source))) for name, p in _mix_parts(ssl.holdout,
                                                                            data.data_dir)]
  dropped = grouped_with([_hashes(n, p.metadata, i) for n, p, i in sources],
                         [_hashes(n, p.metadata, i) for n, p, i in heldout],
                         int(data.split.near_duplicate_threshold))
  prep = preprocess.Preprocessor.from_config(data)
  images, report = [], {'sources': {}, 'heldout': {n: len(i) for n, _, i in heldout},
                        'downstream': downstream_identity(data)}
  offset = 0
  for name, p, index in sources:
    drop = dropped[offset:offset + len(index)]
    offset += len(index)
    images.append(batching.preprocess_split(p.source, index[~drop], prep,
                                             num_workers=num_workers)[0])
    report['sources'][name] = {'candidates': len(index), 'dropped_as_heldout': int(drop.sum()),
                               'used': int((~drop).sum())}
  images = np.concatenate(images)
  report['num_images'] = len(images)
  logging.info('SSL pool: %d images; %s', len(images), json.dumps(report['sources']))
  return Pool(images, report)


def downstream_identity(data) -> dict:
  """What decides which images a fine-tuning run holds out: its dataset (a mix's parts
  by name, not by folder) and its split."""
  mix = ([[p.name, p.dataset] for p in mix_lib.parse_mix(data.get('mix', ''))]
         if data.dataset == 'mix' else None)
  return {'dataset': data.dataset, 'mix': mix,
          'split': config_validation.flatten(json.loads(json.dumps(data.split.to_dict())))}


# ---------------------------------------------------------------------------------------
# Config.

def validate(config: ml_collections.ConfigDict) -> None:
  """`config_validation.validate` and the `ssl` section; errors name the field."""
  if 'ssl' not in config:
    raise ConfigError('the config has no ssl section: pretrain with configs/ssl.py')
  config_validation.validate(config)
  ssl = config.ssl

  def require(ok: bool, field: str, message: str):
    if not ok:
      value = config
      for part in field.split('.'):
        value = value[part]
      raise ConfigError(f'config.{field}={value!r}: {message}')

  require(ssl.hidden_dim >= 1, 'ssl.hidden_dim', 'must be >= 1')
  require(ssl.projection_dim >= 1, 'ssl.projection_dim', 'must be >= 1')
  require(0.0 <= ssl.ema_decay < 1.0, 'ssl.ema_decay', 'must be in [0, 1)')
  require('test' in ssl.heldout_splits and set(ssl.heldout_splits) <= set(HELDOUT_SPLITS),
          'ssl.heldout_splits', "must hold 'test' (and may hold 'val'): the downstream "
          'test images are never pretrained on')
  require(not config.pretrained.source, 'pretrained.source',
          "must be '': the backbone is pretrained from random weights")
  for field in ('extra', 'holdout'):
    if ssl[field].strip():
      try:
        mix_lib.parse_mix(ssl[field])
      except ValueError as e:
        raise ConfigError(f'config.ssl.{field}={ssl[field]!r}: {e}') from None


# ---------------------------------------------------------------------------------------
# The pretraining loop.

@dataclasses.dataclass
class Experiment:
  """What a pretraining run needs, built once from the config (cf. `train.Experiment`)."""
  config: ml_collections.ConfigDict
  mesh: Any
  pool: Pool
  train_iter: grain.DatasetIterator
  state: SSLState
  step: Callable[[SSLState, dict], SSLState]
  checkpointer: checkpoint_lib.Checkpointer
  steps_per_epoch: int
  total_steps: int


def setup(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  mesh = parallel.create_mesh()
  pool = build_pool(config, num_workers=int(config.data.num_workers))
  batches = batching.TrainBatches(
      len(pool.images), _PoolBatch(pool.images), global_batch_size=config.batch_size,
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
  prefetch = max(0, int(config.data.prefetch_buffer))
  train_iter = iter(batches.to_iter_dataset(grain.ReadOptions(
      num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)))
  total_steps = batches.steps_per_epoch * config.num_epochs
  tx = create_optimizer(config.optimizer, batches.steps_per_epoch, config.num_epochs)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  graphdef, encoder_graphdef, state = create_state(
      config, tx, mesh, abstract=checkpointer.latest_step() is not None)
  normalization = preprocess.resolve_normalization(config.data.normalization, '')
  step = make_step(graphdef, encoder_graphdef, tx, config, normalization, total_steps, mesh)
  return Experiment(config, mesh, pool, train_iter, state, step, checkpointer,
                    batches.steps_per_epoch, total_steps)


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains (resuming from `workdir` if it holds a checkpoint); returns the last
  epoch's {'loss', 'z_std'} and the step."""
  validate(config)
  train_lib.check_resume_config(config, workdir)
  with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
    return _pretrain(config, workdir)


def _pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  exp = setup(config, workdir)
  train_lib.save_config(config, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, POOL_FILE), 'w', encoding='utf-8') as f:
      json.dump(exp.pool.report, f, indent=1)
  state, last_checkpoint = exp.state, None
  if exp.checkpointer.latest_step() is not None:  # the newest readable one
    state = exp.checkpointer.restore(state, exp.train_iter)
    last_checkpoint = exp.checkpointer.restored_step
    logging.info('Resuming from the checkpoint at step %d in %s.', last_checkpoint, workdir)
  start = int(jax.device_get(state.step))
  writer = writers.MetricWriter(workdir, process_index=jax.process_index(),
                                resume_step=start or None)
  progress = writers.ProgressLogger(exp.total_steps, exp.steps_per_epoch, config.batch_size,
                                    start_step=start)
  logging.info('BYOL pretraining: %d steps (%d epochs of %d) of %d images on %d devices.',
               exp.total_steps, config.num_epochs, exp.steps_per_epoch,
               len(exp.pool.images), jax.device_count())
  means = {}
  for step in range(start + 1, exp.total_steps + 1):
    state = exp.step(state, parallel.global_batch(next(exp.train_iter), exp.mesh))
    epoch, in_epoch = divmod(step, exp.steps_per_epoch)
    save = step % config.checkpoint_every_steps == 0 or step == exp.total_steps
    if step % config.log_every_steps == 0 or in_epoch == 0 or save:
      sums = jax.device_get(state.sums)  # the loop's only host sync
      means = {k: float(sums[k] / max(sums['count'], 1)) for k in ('loss', 'z_std')}
      if config.halt_on_nan and not math.isfinite(means['loss']):
        raise train_lib.diverged(
            exp.checkpointer, f'the BYOL loss became {means["loss"]}', step, last_checkpoint)
      progress.log(step, means)
    if in_epoch == 0:
      writer.write(step, epoch, {f'ssl/{k}': v for k, v in means.items()})
      state = state.replace(sums=parallel.replicate(_zero_sums(), exp.mesh))
    if save:
      if config.halt_on_nan and not bool(train_lib.all_finite(state.params)):
        raise train_lib.diverged(
            exp.checkpointer, 'some weights became inf or NaN', step, last_checkpoint)
      exp.checkpointer.save(step, state, exp.train_iter)
      last_checkpoint = step
  exp.checkpointer.wait()
  exp.checkpointer.close()
  writer.close()
  return {'step': int(jax.device_get(state.step)), **means}


# ---------------------------------------------------------------------------------------
# Into a classifier.

def load_ssl_backbone(model: nnx.Module, workdir: str, *,
                      data_config: ml_collections.ConfigDict | None = None) -> str:
  """Sets `model.backbone` (params and batch stats) to the online backbone of the SSL run
  in `workdir` (its latest checkpoint); returns the input normalization it was trained on.

  `data_config`: the fine-tuning run's `config.data`. Its dataset and split must be the
  ones the SSL pool was built for (else its test images may have been pretrained on),
  and its input normalization the SSL run's. Every refusal is one line.
  """
  from spp_resnet import weights  # pylint: disable=g-import-not-at-top  # h5py, torch readers
  from spp_resnet.training import restore  # pylint: disable=g-import-not-at-top  # cycle
  config = restore.load_run_config(workdir)
  if 'ssl' not in config:
    raise ConfigError(f'config.pretrained.path={workdir!r} is not a self-supervised run (its '
                      'config.json has no ssl section): give the --workdir of '
                      'python -m spp_resnet.training.ssl')
  normalization = preprocess.resolve_normalization(config.data.normalization, '')
  if data_config is not None:
    ours, theirs = downstream_identity(data_config), downstream_identity(config.data)
    changed = [f'data.{k}' for k in ours if ours[k] != theirs[k]]
    if changed:
      raise ConfigError(
          f'config.pretrained.path={workdir!r} was pretrained for another split '
          f'({", ".join(changed)} differ), so its pool may hold this run\'s test images: '
          'pretrain with this run\'s data config')
    mine = preprocess.resolve_normalization(data_config.normalization, 'ssl')
    if mine != normalization:
      raise ConfigError(f'config.data.normalization={data_config.normalization!r}: the SSL '
                        f'run {workdir} was trained on {normalization!r} inputs; set '
                        f'--config.data.normalization={normalization}')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'{workdir} holds no SSL checkpoint (no checkpoints/ folder).')
  mesh = parallel.create_mesh()
  _, _, target = create_state(config, create_optimizer(config.optimizer, 1, 1), mesh,
                              abstract=True)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    state = checkpointer.restore(target)
  finally:
    checkpointer.close()
  prefix = ('encoder', 'backbone')
  flat = {path[len(prefix):]: np.asarray(jax.device_get(variable.get_value()))
          for tree in (state.params, state.batch_stats)
          for path, variable in nnx.to_flat_state(tree) if path[:len(prefix)] == prefix}
  arch = config.model.backbone
  weights.assign_backbone(model.backbone, weights.ConvertedWeights(
      params=flat, names={}, head=None, source='ssl', backbone=arch,
      variant=config.model.variant if arch.startswith('resnet') else '',
      layout='spp_resnet', file_format='orbax', num_file_tensors=len(flat), file=workdir))
  logging.info('Loaded the BYOL backbone (%s, step %d) of %s.', arch,
               int(jax.device_get(state.step)), workdir)
  return normalization


# ---------------------------------------------------------------------------------------
# Command line.

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  parallel.initialize_distributed()
  with cli.exit_on_user_error(train_lib.TrainingDivergedError,
                              workdir_lock.WorkdirLockedError):
    result = pretrain(flags.FLAGS.config, flags.FLAGS.workdir)
  if jax.process_index() == 0:
    print(f'\nBYOL pretraining finished at step {result["step"]}: loss '
          f'{result.get("loss", math.nan):.4f}, projection spread '
          f'{result.get("z_std", math.nan):.3f} (about 1: healthy, 0: collapsed)')


def _define_flags():
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and pool.json.')
  config_flags.DEFINE_config_file('config', None, 'An ml_collections config with an ssl '
                                  'section (configs/ssl.py).', lock_config=True)
  flags.mark_flags_as_required(['workdir', 'config'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
