"""The train loop: one jitted, data-parallel step; evaluation; checkpoint and resume.

Everything inside a step stays on the devices: input normalization, augmentation, the
forward and backward pass, the optimizer update and the running metric sums. The host
reads values back only every `log_every_steps`, at the end of an epoch and before a
checkpoint, so steps are dispatched asynchronously ahead of the computation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from spp_resnet import config_validation
from spp_resnet.data import augment as augment_lib
from spp_resnet.data import pipeline as pipeline_lib
from spp_resnet.data import preprocess
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.evaluation import writers
from spp_resnet.models import create_model
from spp_resnet.training import checkpoint as checkpoint_lib
from spp_resnet.training import parallel
from spp_resnet.training.optimizer import create_optimizer

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State        # trained parameters
  frozen: nnx.State        # parameters held fixed (transfer learning); may be empty
  batch_stats: nnx.State
  opt_state: optax.OptState
  # Running sums over the current epoch, kept on device (and in checkpoints, so a resumed
  # epoch reports the same averages as an uninterrupted one).
  train_sums: dict[str, jax.Array]


def _zero_sums() -> dict[str, np.ndarray]:
  """Host zeros; `parallel.replicate` them (a plain jnp array is not global multi-host)."""
  return {k: np.zeros((), np.float32) for k in ('loss', 'correct', 'count')}


# ---------------------------------------------------------------------------------------
# Model, loss and freezing.

_STAGES = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')


def frozen_filter(freeze_up_to: str) -> Callable[[tuple, Any], bool]:
  """nnx filter selecting backbone parameters up to and including `freeze_up_to`."""
  if freeze_up_to == 'none':
    return lambda path, _: False
  if freeze_up_to == 'all':
    return lambda path, _: path[0] == 'backbone'
  if freeze_up_to not in _STAGES:
    raise ValueError(f'config.freeze.backbone_up_to: {freeze_up_to!r} is not one of '
                     f"'none', 'all', {', '.join(map(repr, _STAGES))}")
  last = _STAGES.index(freeze_up_to)  # 0 = stem only, k = stem and stages 1..k

  def frozen(path, _):
    if path[0] != 'backbone':
      return False
    if str(path[1]).startswith('stem'):
      return True
    return path[1] == 'stages' and int(path[2]) < last

  return frozen


def logits_to_probs(logits: jax.Array) -> jax.Array:
  """[B, 1] sigmoid logits -> P(positive) [B, 2]; [B, K] -> softmax [B, K]."""
  if logits.shape[-1] == 1:
    p = jax.nn.sigmoid(logits[:, 0])
    return jnp.stack([1.0 - p, p], axis=-1)
  return jax.nn.softmax(logits, axis=-1)


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example sigmoid (one logit) or softmax cross-entropy."""
  if logits.shape[-1] == 1:
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(jnp.float32))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def predicted_class(logits: jax.Array) -> jax.Array:
  if logits.shape[-1] == 1:
    return (logits[:, 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# The steps.

@dataclasses.dataclass(frozen=True)
class Steps:
  """The jitted train and eval steps of one model/config, sharded over `mesh`."""
  train: Callable[[TrainState, Batch], TrainState]
  eval: Callable[[TrainState, Batch], dict[str, jax.Array]]


def make_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, normalization: str,
               num_classes: int, mesh) -> Steps:
  aug = config.data.augment
  base_key = jax.random.key(config.seed)
  update_batch_stats = not config.freeze.batch_stats
  trainable = nnx.All(nnx.Param, nnx.Not(frozen_filter(config.freeze.backbone_up_to)))

  def model_input(images):
    return preprocess.to_model_input(images, normalization)

  def train_step(state: TrainState, batch: Batch) -> TrainState:
    # Keys depend only on the step: a resumed run draws the same augmentation/dropout.
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, state.step))
    # Augment the uint8 single-channel batch: 12x fewer bytes than the model input.
    images = model_input(augment_lib.augment_batch(
        batch['image'], aug_key, rot90=aug.rot90, hflip=aug.hflip, vflip=aug.vflip))
    labels = batch['label']

    model = nnx.merge(graphdef, state.params, state.frozen, state.batch_stats)

    def loss_fn(model):
      logits = model(images, train=True, batch_norm_train=update_batch_stats,
                     rngs=nnx.Rngs(dropout=dropout_key))
      loss = classification_loss(logits, labels)
      return loss.mean(), (logits, loss)

    # nnx.grad (not jax.grad) lets BatchNorm update its statistics in place.
    grads, (logits, losses) = nnx.grad(
        loss_fn, argnums=nnx.DiffState(0, trainable), has_aux=True)(model)
    batch_stats = nnx.state(model, nnx.BatchStat)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    sums = state.train_sums
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats if update_batch_stats else state.batch_stats,
        opt_state=opt_state,
        train_sums={
            'loss': sums['loss'] + losses.sum(),
            'correct': sums['correct'] + (predicted_class(logits) == labels).sum(),
            'count': sums['count'] + labels.shape[0],
        })

  def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    model = nnx.merge(graphdef, state.params, state.frozen, state.batch_stats)
    logits = model(model_input(batch['image']), train=False)
    mask = batch['mask']
    losses = classification_loss(logits, batch['label'])
    return {
        'confusion': metrics_lib.confusion_matrix(
            batch['label'], predicted_class(logits), mask, num_classes),
        'loss_sum': jnp.where(mask, losses, 0.0).sum(),
        'probs': logits_to_probs(logits),
    }

  replicated = parallel.replicated(mesh)
  return Steps(
      train=jax.jit(train_step, donate_argnums=0),
      # Small outputs, gathered to every process so each host can compute metrics.
      eval=jax.jit(eval_step, out_shardings=replicated))


# ---------------------------------------------------------------------------------------
# Setup.

@dataclasses.dataclass
class Experiment:
  """Everything a train or eval run needs, built once from the config."""
  config: ml_collections.ConfigDict
  mesh: Any
  pipeline: pipeline_lib.InputPipeline
  graphdef: nnx.GraphDef
  state: TrainState
  steps: Steps
  checkpointer: checkpoint_lib.Checkpointer
  total_steps: int


def _initial_state(config, num_classes: int, tx, mesh):
  model = create_model(config.model, num_classes=num_classes,
                       rngs=nnx.Rngs(params=config.seed))
  if config.pretrained.source:
    from spp_resnet import weights  # Keeps h5py/torch readers off the plain path.
    weights.load_pretrained_backbone(model, config.pretrained, config.model)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  frozen, trainable = params.split(frozen_filter(config.freeze.backbone_up_to), ...)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen,
      batch_stats=batch_stats, opt_state=tx.init(trainable), train_sums=_zero_sums())
  return graphdef, parallel.replicate(jax.device_get(state), mesh)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  config_validation.validate(config)
  mesh = parallel.create_mesh()
  pipeline = pipeline_lib.create_input_pipeline(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pretrained_source=config.pretrained.source)
  tx = create_optimizer(config.optimizer, pipeline.steps_per_epoch, config.num_epochs)
  graphdef, state = _initial_state(config, pipeline.num_classes, tx, mesh)
  steps = make_steps(graphdef, tx, config, pipeline.normalization, pipeline.num_classes,
                     mesh)
  checkpointer = checkpoint_lib.Checkpointer(
      workdir, keep=config.keep_checkpoints, save_every_steps=config.checkpoint_every_steps)
  return Experiment(config, mesh, pipeline, graphdef, state, steps, checkpointer,
                    total_steps=pipeline.steps_per_epoch * config.num_epochs)


# ---------------------------------------------------------------------------------------
# Evaluation.

@dataclasses.dataclass
class EvalResult:
  metrics: dict[str, float]  # scalars from metrics.compute_metrics, plus 'loss'
  confusion: np.ndarray      # [K, K], rows = true class
  probs: np.ndarray          # [N, K] class probabilities of the evaluated examples
  labels: np.ndarray         # [N]
  class_names: list[str]
  step: int | None = None

  def table(self) -> str:
    return metrics_lib.format_table(self.metrics, self.confusion, self.class_names)


def evaluate(exp: Experiment, state: TrainState, split: str) -> EvalResult:
  """Metrics over a whole split; one host sync at the end."""
  num_classes = exp.pipeline.num_classes
  confusion = jnp.zeros((num_classes, num_classes), jnp.int32)
  loss_sum = jnp.zeros((), jnp.float32)
  probs, labels, masks = [], [], []
  for batch in exp.pipeline.eval_batches(split):
    out = exp.steps.eval(state, parallel.global_batch(batch, exp.mesh))
    confusion, loss_sum = confusion + out['confusion'], loss_sum + out['loss_sum']
    probs.append(out['probs'])
    labels.append(batch['label'])
    masks.append(batch['mask'])
  confusion, loss_sum, probs = jax.device_get((confusion, loss_sum, probs))
  # The replicated probs hold every process's examples, in global batch order.
  labels, masks = _gather_batches(np.stack(labels)), _gather_batches(np.stack(masks))
  probs = np.concatenate(probs)[masks]
  labels = labels[masks]
  scores = probs[:, 1] if num_classes == 2 else probs
  result = metrics_lib.compute_metrics(confusion, scores=scores, labels=labels,
                                       class_names=exp.pipeline.class_names)
  result['loss'] = float(loss_sum) / max(1, int(masks.sum()))
  return EvalResult(metrics=result, confusion=confusion, probs=probs, labels=labels,
                    class_names=list(exp.pipeline.class_names))


def _gather_batches(local: np.ndarray) -> np.ndarray:
  """[num_batches, local_batch] per process -> flat, in global batch order."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    gathered = np.asarray(multihost_utils.process_allgather(local))  # [P, N, b]
    local = gathered.transpose(1, 0, 2)
  return local.reshape(-1)


# ---------------------------------------------------------------------------------------
# Train.

def _restore_or_init(exp: Experiment, workdir: str) -> TrainState:
  step = exp.checkpointer.latest_step()
  if step is None:
    return exp.state
  logging.info('Resuming from the checkpoint at step %d in %s.', step, workdir)
  return exp.checkpointer.restore(exp.state, exp.pipeline.train_iter, step)


def _check_finite(sums: dict[str, float], step: int, last_checkpoint: int | None) -> None:
  if not np.isfinite(sums['loss']):
    raise FloatingPointError(
        f'The training loss became {sums["loss"]} by step {step}. The last good '
        f'checkpoint (step {last_checkpoint}) is kept; lower '
        'config.optimizer.learning_rate or set config.optimizer.grad_clip_norm, then '
        're-run with the same workdir to resume from it.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> EvalResult:
  """Trains (resuming from `workdir` if it holds a checkpoint); returns final metrics."""
  exp = setup(config, workdir)  # validates the config first: a bad one writes nothing
  os.makedirs(workdir, exist_ok=True)
  _save_config(config, workdir, exp.pipeline.class_names)
  state = _restore_or_init(exp, workdir)
  start = int(jax.device_get(state.step))
  pipeline, steps_per_epoch = exp.pipeline, exp.pipeline.steps_per_epoch
  writer = writers.MetricWriter(workdir, process_index=jax.process_index(),
                                resume_step=start or None)
  progress = writers.ProgressLogger(exp.total_steps, steps_per_epoch, config.batch_size,
                                    start_step=start)
  last_checkpoint = exp.checkpointer.latest_step()
  logging.info('Training %d steps (%d epochs of %d) on %d devices, global batch %d.',
               exp.total_steps, config.num_epochs, steps_per_epoch, jax.device_count(),
               config.batch_size)
  final = None
  for step in range(start + 1, exp.total_steps + 1):
    batch = parallel.global_batch(next(pipeline.train_iter), exp.mesh)
    state = exp.steps.train(state, batch)
    epoch, end_of_epoch = divmod(step, steps_per_epoch)
    end_of_epoch = end_of_epoch == 0
    save = step % config.checkpoint_every_steps == 0 or step == exp.total_steps
    if step % config.log_every_steps == 0 or end_of_epoch or save:
      sums = jax.device_get(state.train_sums)
      if config.halt_on_nan:
        _check_finite(sums, step, last_checkpoint)
      progress.log(step, {'loss': sums['loss'] / max(sums['count'], 1)})
    if end_of_epoch:
      scalars = {'train/loss': sums['loss'] / sums['count'],
                 'train/accuracy': sums['correct'] / sums['count']}
      if epoch % config.eval_every_epochs == 0 or step == exp.total_steps:
        final = evaluate(exp, state, 'test')
        scalars.update({f'test/{k}': v for k, v in final.metrics.items()})
        logging.info('Epoch %d/%d on test\n%s', epoch, config.num_epochs, final.table())
      writer.write(step, epoch, scalars)
      state = state.replace(train_sums=parallel.replicate(_zero_sums(), exp.mesh))
    if save:
      exp.checkpointer.save(step, state, pipeline.train_iter)
      last_checkpoint = step
  exp.checkpointer.wait()
  exp.checkpointer.close()
  writer.close()
  pipeline.close()
  if final is None:  # Nothing left to train (resumed from the final checkpoint).
    final = evaluate(exp, state, 'test')
  return final


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: str = 'test') -> EvalResult:
  """Restores the latest checkpoint of `workdir` and evaluates it on `split`."""
  exp = setup(config, workdir)
  step = exp.checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(
        f'No checkpoint in {exp.checkpointer.directory}: train first with --mode=train.')
  state = exp.checkpointer.restore(exp.state, step=step)
  exp.checkpointer.close()
  result = evaluate(exp, state, split)
  exp.pipeline.close()
  result.step = step
  return result


def _save_config(config: ml_collections.ConfigDict, workdir: str,
                 class_names=None) -> None:
  """config.json, and class_names.json (the label order, for evaluate_external)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    if class_names is not None:
      with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
        json.dump(list(class_names), f)
