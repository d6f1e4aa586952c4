"""The train loop: one jitted, data-parallel step; evaluation; checkpoint and resume.

Everything inside a step stays on the devices: input normalization, augmentation, the
forward and backward pass, the optimizer update and the running metric sums. The host
reads values back only every `log_every_steps`, at the end of an epoch and before a
checkpoint, so steps are dispatched asynchronously ahead of the computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable
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
from spp_resnet.training import workdir_lock
from spp_resnet.training.optimizer import create_optimizer, learning_rate_schedule, weight_ema

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
  """Host zeros; `parallel.replicate` them (a plain jnp array is not global multi-host).

  loss, correct: sums over the epoch's images (count); grad_norm: the sum of each step's
  global gradient norm (steps).
  """
  return {k: np.zeros((), np.float32) for k in ('loss', 'correct', 'count', 'grad_norm',
                                                 'steps')}


# ---------------------------------------------------------------------------------------
# Model, loss and freezing.

FREEZE_STAGES = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')


def frozen_filter(freeze_up_to: str) -> Callable[[tuple, Any], bool]:
  """nnx filter selecting backbone parameters up to and including `freeze_up_to`."""
  if freeze_up_to == 'none':
    return lambda path, _: False
  if freeze_up_to == 'all':
    return lambda path, _: path[0] == 'backbone'
  if freeze_up_to not in FREEZE_STAGES:
    raise ValueError(f'config.freeze.backbone_up_to: {freeze_up_to!r} is not one of '
                     f"'none', 'all', {', '.join(map(repr, FREEZE_STAGES))}")
  last = FREEZE_STAGES.index(freeze_up_to)  # 0 = stem only, k = stem and stages 1..k

  def frozen(path, _):
    if path[0] != 'backbone':
      return False
    if str(path[1]).startswith('stem'):
      return True
    return path[1] == 'stages' and int(path[2]) < last

  return frozen


def frozen_stage_count(freeze_up_to: str) -> int:
  """How many leading backbone parts (stem, stage1, ...) `freeze_up_to` freezes."""
  if freeze_up_to == 'none':
    return 0
  return len(FREEZE_STAGES) if freeze_up_to == 'all' else FREEZE_STAGES.index(freeze_up_to) + 1


def logits_to_probs(logits: jax.Array) -> jax.Array:
  """[B, 1] sigmoid logits -> P(positive) [B, 2]; [B, K] -> softmax [B, K]."""
  if logits.shape[-1] == 1:
    p = jax.nn.sigmoid(logits[:, 0])
    return jnp.stack([1.0 - p, p], axis=-1)
  return jax.nn.softmax(logits, axis=-1)


def classification_loss(logits: jax.Array, labels: jax.Array,
                        label_smoothing: float = 0.0) -> jax.Array:
  """Per-example sigmoid (one logit) or softmax cross-entropy, in float32.

  `label_smoothing` e moves the targets towards uniform: y (1 - e) + e / K.
  """
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    targets = labels.astype(jnp.float32) * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], targets)
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


_MIXUP_SALT = 0x6d697875  # folded into the step key: a key no other draw uses


def step_keys(seed: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(augmentation, dropout, mixup) keys of a training step: depend only on the seed and
  the step, so a resumed run draws the same. The mixup key is salted, not split off, so
  the other two are the keys runs before mixup existed drew."""
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  aug_key, dropout_key = jax.random.split(step_key)
  return aug_key, dropout_key, jax.random.fold_in(step_key, _MIXUP_SALT)


def mixup(images: jax.Array, labels: jax.Array, rng: jax.Array,
          alpha: float) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
  """Mixup (Zhang et al., 2018): example i becomes lam_i x_i + (1 - lam_i) x_partner(i),
  lam_i ~ Beta(alpha, alpha), the partner being the batch in reverse order.

  Returns the mixed images and the targets of `training_loss`: [(labels, lam),
  (partner labels, 1 - lam)]. Reversing (not a random permutation) keeps it a fixed,
  cheap reshuffle that also works on a batch sharded across devices.
  """
  lam = jax.random.beta(rng, alpha, alpha, (images.shape[0],), jnp.float32)
  weight = lam[:, None, None, None]  # images [B, H, W, C]
  mixed = (weight * images + (1.0 - weight) * images[::-1]).astype(images.dtype)
  return mixed, [(labels, lam), (labels[::-1], 1.0 - lam)]


def training_loss(logits: jax.Array, targets: list[tuple[jax.Array, Any]],
                  label_smoothing: float = 0.0,
                  weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The objective and the per-example loss [B] of a training batch.

  `targets`: (labels [B], share) terms, share a scalar or [B]: [(labels, 1.0)], or under
  mixup [(labels, lam), (partner labels, 1 - lam)]. The per-example loss is the shares'
  mix of the terms' losses; the objective its mean, or with class `weights` [K] the mean
  weighted by share x the label's class weight.
  """
  losses = [classification_loss(logits, y, label_smoothing) for y, _ in targets]
  loss = sum(share * term for (_, share), term in zip(targets, losses))
  if weights is None:
    return loss.mean(), loss
  w = [share * weights[y] for y, share in targets]
  return sum((wi * term).sum() for wi, term in zip(w, losses)) / sum(wi.sum() for wi in w), loss


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray | None:
  """Per-class loss weights: None for 'none'; 'balanced' = N / (K * count of the class),
  so every class contributes equally to the loss (as scikit-learn's 'balanced')."""
  if mode == 'none':
    return None
  counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
  return (counts.sum() / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def predicted_class(logits: jax.Array) -> jax.Array:
  if logits.shape[-1] == 1:
    return (logits[:, 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# The steps.

class LeafStep:
  """A jitted TrainState -> TrainState step whose jit boundary is a flat list of arrays.

  A TrainState holds ~550 arrays inside nnx.State and optax nodes; flattening and
  matching those nodes at every jitted call costs 2.8-3.4 ms of host time on the 2-core
  CPU, a list of its arrays 0.9-1.2 ms (benchmarks/train_step.py, ResNet-50 + SPP; on
  an H200 a whole bf16 batch-32 step takes about 10 ms). The train loop therefore keeps
  the arrays between steps (`run`) and rebuilds the TrainState only where it reads it
  (`state`); calling the object with a TrainState does both for one step.
  """

  def __init__(self, step: Callable[..., TrainState], out_shardings, *consts: jax.Array):
    """`step(state, batch, *consts)`; `consts` are passed at every call as arguments, not
    baked into the compiled step, so that another value (a seed) does not recompile."""
    self._treedef = None
    self.consts = consts

    def on_leaves(leaves, batch, *consts):
      return jax.tree.leaves(step(jax.tree.unflatten(self._treedef, leaves), batch, *consts))

    # The new state is replicated like the old one, so the donated buffers are reused in
    # place; pinning out_shardings keeps a sharding change from silently copying it.
    self.jitted = jax.jit(on_leaves, donate_argnums=0, out_shardings=out_shardings)

  def run(self, leaves: list[jax.Array], batch: Batch) -> list[jax.Array]:
    """One step on the state's arrays (donated); returns the new ones."""
    return self.jitted(leaves, batch, *self.consts)

  def leaves(self, state: TrainState) -> list[jax.Array]:
    leaves, treedef = jax.tree.flatten(state)
    if self._treedef is None:
      self._treedef = treedef
    elif treedef != self._treedef:
      raise ValueError(f'this step was built for a state of structure {self._treedef}, '
                       f'not {treedef}')
    return leaves

  def state(self, leaves: list[jax.Array]) -> TrainState:
    return jax.tree.unflatten(self._treedef, leaves)

  def __call__(self, state: TrainState, batch: Batch) -> TrainState:
    return self.state(self.run(self.leaves(state), batch))


@dataclasses.dataclass(frozen=True)
class Steps:
  """The jitted train and eval steps of one model/config, sharded over `mesh`."""
  train: LeafStep
  eval: Callable[[TrainState, Batch], jax.Array]  # class probabilities [B, K]


def make_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, normalization: str,
               mesh, loss_weights: np.ndarray | None = None) -> Steps:
  """`loss_weights` [K]: per-class weights of the training loss (None = equal)."""
  augment = augment_lib.AugmentSpec.from_config(config.data.augment)
  smoothing = float(config.get('loss', {}).get('label_smoothing', 0.0))  # older runs: none
  mixup_alpha = float(config.get('loss', {}).get('mixup_alpha', 0.0))
  weights = None if loss_weights is None else jnp.asarray(loss_weights, jnp.float32)
  update_batch_stats = not config.freeze.batch_stats
  # Frozen stages normalize with, and keep, their running statistics.
  frozen_stages = frozen_stage_count(config.freeze.backbone_up_to)
  trainable = nnx.All(nnx.Param, nnx.Not(frozen_filter(config.freeze.backbone_up_to)))

  def model_input(images):
    return preprocess.to_model_input(images, normalization)

  def train_step(state: TrainState, batch: Batch, seed: jax.Array) -> TrainState:
    # Keys depend only on the seed and the step: a resumed run draws the same
    # augmentation and dropout.
    aug_key, dropout_key, mixup_key = step_keys(seed, state.step)
    # Augment the uint8 single-channel batch: 12x fewer bytes than the model input.
    images = model_input(augment(batch['image'], aug_key))
    labels = batch['label']
    # (labels, weight of each example's loss on them): one term, or two under mixup.
    targets = [(labels, 1.0)]
    if mixup_alpha:
      images, targets = mixup(images, labels, mixup_key, mixup_alpha)

    model = nnx.merge(graphdef, state.params, state.frozen, state.batch_stats)

    def loss_fn(model):
      logits = model(images, train=True, batch_norm_train=update_batch_stats,
                     frozen_stages=frozen_stages, rngs=nnx.Rngs(dropout=dropout_key))
      objective, loss = training_loss(logits, targets, smoothing, weights)
      return objective, (logits, loss)

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
            # Under mixup: of the blended images, against the first image's label.
            'correct': sums['correct'] + (predicted_class(logits) == labels).sum(),
            'count': sums['count'] + labels.shape[0],
            'grad_norm': sums['grad_norm'] + optax.tree.norm(grads),
            'steps': sums['steps'] + 1,
        })

  probs = probs_fn(graphdef, normalization)
  replicated = parallel.replicated(mesh)
  return Steps(
      train=LeafStep(train_step, replicated, parallel.replicate(np.int32(config.seed), mesh)),
      eval=jax.jit(lambda state, batch: probs(inference_weights(state), batch),
                   out_shardings=replicated))


def probs_fn(graphdef: nnx.GraphDef, normalization: str,
             members: int = 1) -> Callable[[dict, Batch], jax.Array]:
  """(weights, {'image': uint8 [B,S,S,1]}) -> class probabilities [B, K].

  Probabilities only: predictions depend on the decision threshold, which is chosen on
  validation data after the fact (metrics.predict on the host). `members` > 1: the
  weights of an ensemble, stacked on a leading axis; its probabilities are the mean of
  the members' (one vmapped network, one compile).
  """
  def probs(weights: dict, batch: Batch) -> jax.Array:
    model = nnx.merge(graphdef, weights['params'], weights['frozen'], weights['batch_stats'])
    logits = model(preprocess.to_model_input(batch['image'], normalization), train=False)
    return logits_to_probs(logits.astype(jnp.float32))

  if members == 1:
    return probs
  return lambda weights, batch: jax.vmap(probs, in_axes=(0, None))(weights, batch).mean(0)


def make_predict_fn(graphdef: nnx.GraphDef, normalization: str, mesh,
                    members: int = 1) -> Callable[[dict, Batch], jax.Array]:
  """jit of `probs_fn`; the small output is gathered to every process (host metrics)."""
  return jax.jit(probs_fn(graphdef, normalization, members),
                 out_shardings=parallel.replicated(mesh))


def inference_weights(state: TrainState) -> dict:
  """What an inference model needs of the state (no optimizer state: half the bytes).
  With `config.optimizer.ema_decay` its params are the moving average of the weights."""
  ema = weight_ema(state.opt_state)
  return {'params': state.params if ema is None else ema, 'frozen': state.frozen,
          'batch_stats': state.batch_stats}


def with_inference_weights(state: TrainState, weights: dict) -> TrainState:
  """`state` whose `inference_weights` are `weights` (that function's inverse)."""
  if weight_ema(state.opt_state) is None:
    return state.replace(**weights)
  return state.replace(frozen=weights['frozen'], batch_stats=weights['batch_stats'],
                       opt_state=state.opt_state._replace(ema=weights['params']))


def weight_fields(state: TrainState) -> dict:
  """The fields of a train state that `inference_weights` reads (a restore target)."""
  fields = {'params': state.params, 'frozen': state.frozen, 'batch_stats': state.batch_stats}
  return fields if weight_ema(state.opt_state) is None else {
      **fields, 'opt_state': state.opt_state}


# ---------------------------------------------------------------------------------------
# Setup.

class Stopwatch:
  """Wall seconds per phase of a run: logged at its end and written to WORKDIR/timing.json.

  Phases: data (dataset, split, train cache), init (state and steps), restore, compile
  (the first train step, synced), train (the other steps, input waits included), eval
  (validation or test epochs, model selection), checkpoint (saves and the final write),
  profile (writing a config.profile_steps trace), test (the final test). A resumed run
  measures its own session only.
  """

  ORDER = ('data', 'init', 'restore', 'compile', 'train', 'eval', 'checkpoint', 'profile',
           'test')

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._start = time.perf_counter()

  @contextlib.contextmanager
  def phase(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

  def summary(self) -> dict[str, float]:
    out = {k: round(self.seconds[k], 3) for k in self.ORDER if k in self.seconds}
    out['total'] = round(time.perf_counter() - self._start, 3)
    return out

  def table(self) -> str:
    return ', '.join(f'{k} {v:.1f} s' for k, v in self.summary().items())


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
  stopwatch: Stopwatch = dataclasses.field(default_factory=Stopwatch)


def create_train_state(config: ml_collections.ConfigDict, num_classes: int,
                       tx: optax.GradientTransformation, mesh, *,
                       abstract: bool = False) -> tuple[nnx.GraphDef, TrainState]:
  """(graphdef, state) of `config`'s model, replicated over `mesh`.

  The random init is one jitted computation that writes the replicated state in place
  (no host round trip). `abstract=True` gives shapes, dtypes and shardings only (a
  restore target): no weight is drawn and no pretrained file read, since a checkpoint
  overwrites them.
  """
  freeze = frozen_filter(config.freeze.backbone_up_to)

  def random_model(seed):
    return create_model(config.model, num_classes=num_classes,
                        rngs=nnx.Rngs(params=jax.random.key(seed)))

  def to_state(model) -> TrainState:
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    frozen, trainable = nnx.split_state(params, freeze, ...)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen,
        batch_stats=batch_stats, opt_state=tx.init(trainable),
        train_sums=jax.tree.map(jnp.asarray, _zero_sums()))

  # The model is built once, inside the one trace; its graphdef (structure, no arrays)
  # is kept from there.
  traced = {}

  def init(seed) -> TrainState:  # the seed is an argument: another one does not recompile
    model = random_model(seed)
    traced['graphdef'] = nnx.graphdef(model)
    return to_state(model)

  replicated = parallel.replicated(mesh)
  if abstract:
    shapes = jax.eval_shape(init, jax.ShapeDtypeStruct((), jnp.int32))
    return traced['graphdef'], jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)
  state = jax.jit(init, out_shardings=replicated)(
      parallel.replicate(np.int32(config.seed), mesh))
  graphdef = traced['graphdef']
  if config.pretrained.source:
    model = nnx.merge(graphdef, state.params, state.frozen, state.batch_stats)
    if config.pretrained.source == 'ssl':  # a backbone of `python -m spp_resnet.training.ssl`
      from spp_resnet.training import ssl  # pylint: disable=g-import-not-at-top  # cycle
      ssl.load_ssl_backbone(model, config.pretrained.path, data_config=config.data)
    else:
      from spp_resnet import weights  # Keeps h5py/torch readers off the plain path.
      weights.load_pretrained_backbone(model, config.pretrained, config.model)
    state = parallel.replicate(jax.device_get(to_state(model)), mesh)
  return graphdef, state


def setup(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  config_validation.validate(config)
  stopwatch = Stopwatch()
  mesh = parallel.create_mesh()
  with stopwatch.phase('data'):
    pipeline = pipeline_lib.create_input_pipeline(
        config.data, global_batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        pretrained_source=config.pretrained.source)
  with stopwatch.phase('init'):
    tx = create_optimizer(config.optimizer, pipeline.steps_per_epoch, config.num_epochs)
    checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    # A resumed run restores every weight: build only the restore target.
    graphdef, state = create_train_state(config, pipeline.num_classes, tx, mesh,
                                         abstract=checkpointer.latest_step() is not None)
    jax.block_until_ready(state)
    train_labels = pipeline.metadata['label'][pipeline.split_indices['train']]
    loss_weights = class_weights(train_labels, pipeline.num_classes,
                                 config.loss.class_weights)
    steps = make_steps(graphdef, tx, config, pipeline.normalization, mesh, loss_weights)
  return Experiment(config, mesh, pipeline, graphdef, state, steps, checkpointer,
                    total_steps=pipeline.steps_per_epoch * config.num_epochs,
                    stopwatch=stopwatch)


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
  threshold: float | None = None  # binary: P(positive) >= threshold is positive
  selection: dict | None = None   # the run's model selection (selection.json), if any
  split: dict | None = None  # train_and_evaluate: InputPipeline.split_summary() of the run

  def table(self) -> str:
    table = metrics_lib.format_table(self.metrics, self.confusion, self.class_names)
    if self.threshold is not None:
      table += f'\nDecision threshold: P({self.class_names[1]}) >= {self.threshold:.4f}'
    return table


def evaluate(exp: Experiment, state: TrainState, split: str,
             threshold: float | None = None) -> EvalResult:
  """Metrics over a whole split at `threshold` (binary; None = 0.5); one host sync."""
  probs, labels = predict_probs(lambda batch: exp.steps.eval(state, batch), exp.mesh,
                                exp.pipeline.eval_batches(split))
  return metrics_from_probs(probs, labels, exp.pipeline.class_names, threshold)


def predict_probs(probs_fn: Callable[[Batch], jax.Array], mesh,
                  batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(probs [N, K], labels [N]) of the unmasked examples of `batches`, in order.

  `probs_fn` maps a global (data-sharded) batch to replicated probabilities; the host
  reads them back once, at the end.
  """
  probs, labels, masks = [], [], []
  for batch in batches:
    probs.append(probs_fn(parallel.global_batch(batch, mesh)))
    labels.append(batch['label'])
    masks.append(batch['mask'])
  probs = jax.device_get(probs)
  # The replicated probs hold every process's examples, in global batch order.
  labels, masks = _gather_batches(np.stack(labels)), _gather_batches(np.stack(masks))
  return np.concatenate(probs)[masks], labels[masks]


def metrics_from_probs(probs: np.ndarray, labels: np.ndarray, class_names,
                       threshold: float | None = None) -> EvalResult:
  num_classes = len(class_names)
  if num_classes != 2:
    threshold = None
  elif threshold is None:
    threshold = 0.5
  predictions = metrics_lib.predict(probs, threshold)
  confusion = metrics_lib.confusion_from_predictions(labels, predictions, num_classes)
  scores = probs[:, 1] if num_classes == 2 else probs
  result = metrics_lib.compute_metrics(confusion, scores=scores, labels=labels,
                                       class_names=list(class_names))
  # Cross-entropy of the true class (float32 probabilities: clipped at 1e-7).
  picked = np.clip(probs[np.arange(len(labels)), labels].astype(np.float64), 1e-7, 1.0)
  result['loss'] = float(-np.log(picked).mean()) if len(labels) else math.nan
  return EvalResult(metrics=result, confusion=confusion, probs=probs, labels=labels,
                    class_names=list(class_names), threshold=threshold)


def _gather_batches(local: np.ndarray) -> np.ndarray:
  """[num_batches, local_batch] per process -> flat, in global batch order."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    gathered = np.asarray(multihost_utils.process_allgather(local))  # [P, N, b]
    local = gathered.transpose(1, 0, 2)
  return local.reshape(-1)


# ---------------------------------------------------------------------------------------
# Model selection on the validation split.

SELECTION_FILE = 'selection.json'
BEST_CHECKPOINT = 'best_checkpoint'
_LOWER_IS_BETTER = ('loss',)


def load_selection(workdir: str) -> dict | None:
  """WORKDIR/selection.json (the kept checkpoint and its threshold), or None."""
  path = os.path.join(workdir, SELECTION_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _improves(value: float, best: dict | None, metric: str) -> bool:
  if value is None or math.isnan(value):
    return False
  if best is None:
    return True
  return value < best['value'] if metric in _LOWER_IS_BETTER else value > best['value']


def restore_best(workdir: str, state: TrainState, keep: int = 1) -> tuple[TrainState, int]:
  """`state` with the weights of WORKDIR's kept (best-on-validation) checkpoint."""
  best = checkpoint_lib.Checkpointer(workdir, keep=keep, name=BEST_CHECKPOINT)
  if best.latest_step() is None:
    best.close()
    raise FileNotFoundError(f'No best checkpoint in {best.directory}.')
  weights = best.restore(inference_weights(state))
  best.close()
  return with_inference_weights(state, weights), best.restored_step


def selection_record(val: EvalResult, sel: ml_collections.ConfigDict, **where) -> dict:
  """What selection.json keeps of a chosen model's validation result `val`: the metric
  `sel.metric`, the decision threshold fitted on it by `sel.threshold` (binary tasks) and
  the validation metrics at that threshold; `where` says which checkpoint (epoch, step)."""
  threshold = None
  if len(val.class_names) == 2:
    threshold = metrics_lib.choose_threshold(
        val.probs[:, 1], val.labels, sel.threshold, fixed=float(sel.fixed_threshold),
        target_sensitivity=float(sel.target_sensitivity))
  at_threshold = metrics_from_probs(val.probs, val.labels, val.class_names, threshold)
  return {
      'metric': sel.metric, 'value': float(val.metrics[sel.metric]), **where,
      'threshold': threshold, 'threshold_rule': sel.threshold,
      'target_sensitivity': float(sel.target_sensitivity),
      # Fitted on these same images: optimistic at the threshold, for reference only.
      'val_metrics': at_threshold.metrics, 'num_val': int(len(val.labels)),
  }


def write_selection(workdir: str, selection: dict) -> None:
  if jax.process_index() == 0:
    path = os.path.join(workdir, SELECTION_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(selection, f, indent=1, allow_nan=True)
    os.replace(path + '.tmp', path)


class _Selector:
  """Keeps the checkpoint with the best validation metric, and its decision threshold.

  State lives in WORKDIR/selection.json (rewritten at each improvement, so a resumed run
  continues with the same best) and WORKDIR/best_checkpoint/ (weights only).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.sel = config.selection
    self.workdir = workdir
    # The last epoch is always eligible: min_epoch_fraction < 1.
    self.min_epoch = self.sel.get('min_epoch_fraction', 0.0) * config.num_epochs
    self.best = load_selection(workdir)
    self.checkpointer = checkpoint_lib.Checkpointer(workdir, keep=1, name=BEST_CHECKPOINT)

  def update(self, val: EvalResult, state: TrainState, step: int, epoch: int) -> bool:
    """Records an epoch's validation result; True if it is the new best."""
    metric = self.sel.metric
    value = val.metrics.get(metric)
    if epoch < self.min_epoch or not _improves(value, self.best, metric):
      return False
    self.checkpointer.save(step, inference_weights(state))
    self.best = selection_record(val, self.sel, epoch=epoch, step=step)
    self.checkpointer.wait()  # selection.json never points at a half-written checkpoint
    write_selection(self.workdir, self.best)
    return True

  def describe(self) -> str:
    if self.best is None:
      return ('none yet' if self.min_epoch <= 0 else
              f'none yet, eligible from epoch {math.ceil(self.min_epoch)}')
    b = self.best
    threshold = '' if b['threshold'] is None else f', threshold {b["threshold"]:.4f}'
    return f'epoch {b["epoch"]}, {b["metric"]} {b["value"]:.4f}{threshold}'

  def should_stop(self, epoch: int) -> bool:
    patience = int(self.sel.early_stopping_patience)
    return bool(patience and self.best and epoch - self.best['epoch'] >= patience)

  def close(self):
    self.checkpointer.wait()
    self.checkpointer.close()


# ---------------------------------------------------------------------------------------
# Train.

def _restore_or_init(exp: Experiment, workdir: str) -> TrainState:
  """The newest readable checkpoint's state (a damaged one is skipped), else the init."""
  if exp.checkpointer.latest_step() is None:
    return exp.state
  try:
    state = exp.checkpointer.restore(exp.state, exp.pipeline.train_iter)
  except ValueError as e:
    if 'tree structures do not match' not in str(e):
      raise
    raise config_validation.ConfigError(
        f'{workdir}: its checkpoint holds the train state of another version of '
        'spp_resnet and cannot be resumed; its model can still be evaluated '
        '(--mode=eval, predict): train on in a new --workdir.') from e
  logging.info('Resuming from the checkpoint at step %d in %s.',
               exp.checkpointer.restored_step, workdir)
  return state


class TrainingDivergedError(FloatingPointError):
  """The loss or the weights stopped being finite (config.halt_on_nan)."""


@jax.jit
def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def diverged(checkpointer: checkpoint_lib.Checkpointer, what: str, step: int,
             last_checkpoint: int | None) -> TrainingDivergedError:
  """Waits for pending checkpoint writes (they hold finite states), then the error."""
  checkpointer.wait()
  checkpointer.close()
  if last_checkpoint is None:
    kept = ('No checkpoint was written before it: re-run with a lower '
            '--config.optimizer.learning_rate (or set --config.optimizer.grad_clip_norm) to '
            'start over')
  else:
    kept = (f'The last checkpoint (step {last_checkpoint}) holds finite weights and is '
            'kept: re-run the same command with a lower --config.optimizer.learning_rate '
            'to resume from it (if that diverges at once, its weights had blown up '
            'already: start over in a new --workdir)')
  return TrainingDivergedError(
      f'Training diverged: {what} by step {step}. {kept}.')


_global_norm = jax.jit(optax.tree.norm)  # the parameter norm, at log steps only


class _TrainMonitor:
  """What the loop reports besides the metrics, without syncing more often than it logs.

  At each log step (console, TensorBoard `step/*`): the loss and gradient norm averaged
  since the epoch began, the learning rate, the parameter norm, images/s and the time
  the loop waited for input batches. At each epoch end, the epoch's values as `train/*`
  in metrics.jsonl.
  """

  def __init__(self, exp: Experiment, writer: writers.MetricWriter, start: int):
    config, steps_per_epoch = exp.config, exp.pipeline.steps_per_epoch
    self.writer = writer
    self.schedule = learning_rate_schedule(config.optimizer, steps_per_epoch,
                                           config.num_epochs)
    self.progress = writers.ProgressLogger(exp.total_steps, steps_per_epoch,
                                           config.batch_size, start_step=start)
    self.data_wait = 0.0  # seconds blocked on the input pipeline since the last log
    self.last: dict[str, float] = {}
    self.start_epoch()

  def start_epoch(self) -> None:
    self.epoch_start, self.epoch_data_wait = time.perf_counter(), 0.0

  def next_batch(self, iterator):
    t = time.perf_counter()
    batch = next(iterator)
    self.data_wait += time.perf_counter() - t
    return batch

  def log(self, step: int, sums: dict, params) -> None:
    scalars = {
        'loss': sums['loss'] / max(sums['count'], 1),
        'lr': float(self.schedule(step - 1)),  # the rate of the step just taken
        'grad_norm': sums['grad_norm'] / max(sums['steps'], 1),
        'param_norm': float(_global_norm(params)),
        'data_wait_s': self.data_wait,
    }
    throughput = self.progress.log(step, scalars)
    self.writer.write_step(step, {f'step/{k}': v for k, v in
                                  {**scalars, **throughput}.items()})
    self.epoch_data_wait += self.data_wait
    self.data_wait = 0.0
    self.last = scalars

  def end_epoch(self, sums: dict) -> dict[str, float]:
    """The epoch's train/* scalars (call after `log` at the epoch's last step)."""
    seconds = time.perf_counter() - self.epoch_start
    scalars = {'train/loss': sums['loss'] / sums['count'],
               'train/accuracy': sums['correct'] / sums['count'],
               'train/grad_norm': self.last['grad_norm'],
               'train/learning_rate': self.last['lr'],
               'train/param_norm': self.last['param_norm'],
               'train/images_per_sec': sums['count'] / seconds,
               'train/data_wait_s': self.epoch_data_wait}
    return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> EvalResult:
  """Trains (resuming from `workdir` if it holds a checkpoint); returns test metrics.

  With a validation split (`data.split.val_fraction` > 0) every evaluation epoch runs on
  validation, the best checkpoint by `selection.metric` is kept with a decision threshold
  fitted on validation (`selection.threshold`), training may stop early, and the test
  split is evaluated once, at the end, with the kept checkpoint and its threshold.
  Without one, the test split is evaluated every evaluation epoch (the paper's curves)
  and the last checkpoint is the model, at threshold `selection.fixed_threshold`.
  """
  config_validation.validate(config)
  if config.get('ensemble_size', 1) > 1:
    from spp_resnet.training import ensemble  # pylint: disable=g-import-not-at-top  # cycle
    return ensemble.train_ensemble(config, workdir)
  check_resume_config(config, workdir)  # before anything in the workdir is touched
  with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
    try:
      return _train(config, workdir)
    finally:  # a run that failed inside its trace window still writes the trace
      if _Profiler.active is not None:
        _Profiler.active.stop()


def _train(config: ml_collections.ConfigDict, workdir: str) -> EvalResult:
  exp = setup(config, workdir)
  save_config(config, workdir, exp.pipeline.class_names)
  clock = exp.stopwatch
  with clock.phase('restore'):
    state = _restore_or_init(exp, workdir)
  start = int(jax.device_get(state.step))
  pipeline, steps_per_epoch = exp.pipeline, exp.pipeline.steps_per_epoch
  has_val = 'val' in pipeline.split_indices
  selector = _Selector(config, workdir) if has_val else None
  writer = writers.MetricWriter(workdir, process_index=jax.process_index(),
                                resume_step=start or None)
  monitor = _TrainMonitor(exp, writer, start)
  last_checkpoint = exp.checkpointer.restored_step  # None when starting afresh
  logging.info('Training %d steps (%d epochs of %d) on %d devices, global batch %d%s.',
               exp.total_steps, config.num_epochs, steps_per_epoch, jax.device_count(),
               config.batch_size,
               f', selecting on {pipeline.num_eval["val"]} validation images by '
               f'{config.selection.metric}' if has_val else '')
  final = None
  stopped = selector is not None and selector.should_stop(start // steps_per_epoch)
  step = start
  train_step = exp.steps.train
  leaves = train_step.leaves(state)  # between steps; `state` is rebuilt where it is read
  loop_start, first = time.perf_counter(), True
  profiler = _Profiler(config.get('profile_steps', (0, 0)), workdir, clock)
  while step < exp.total_steps and not stopped:
    step += 1
    profiler.before(step)
    batch = parallel.global_batch(monitor.next_batch(pipeline.train_iter), exp.mesh)
    if first:  # compiles (or loads the compiled step from the persistent cache)
      with clock.phase('compile'):
        leaves = jax.block_until_ready(train_step.run(leaves, batch))
      first = False
    else:
      leaves = train_step.run(leaves, batch)
    profiler.after(step, leaves)
    epoch, end_of_epoch = divmod(step, steps_per_epoch)
    end_of_epoch = end_of_epoch == 0
    save = step % config.checkpoint_every_steps == 0 or step == exp.total_steps
    if step % config.log_every_steps == 0 or end_of_epoch or save:
      state = train_step.state(leaves)
      sums = jax.device_get(state.train_sums)
      if config.halt_on_nan and not np.isfinite(sums['loss']):
        raise diverged(exp.checkpointer, f'the training loss became {sums["loss"]}', step,
                        last_checkpoint)
      monitor.log(step, sums, state.params)
    if end_of_epoch:
      scalars = monitor.end_epoch(sums)
      if epoch % config.eval_every_epochs == 0 or step == exp.total_steps:
        with clock.phase('eval'):
          if has_val:
            val = evaluate(exp, state, 'val')
            scalars.update({f'val/{k}': v for k, v in val.metrics.items()})
            selector.update(val, state, step, epoch)
            stopped = selector.should_stop(epoch)
            logging.info('Epoch %d/%d on validation (best so far: %s)\n%s', epoch,
                         config.num_epochs, selector.describe(), val.table())
          else:
            final = evaluate(exp, state, 'test', config.selection.fixed_threshold)
            scalars.update({f'test/{k}': v for k, v in final.metrics.items()})
            logging.info('Epoch %d/%d on test\n%s', epoch, config.num_epochs,
                         final.table())
      writer.write(step, epoch, scalars)
      state = state.replace(train_sums=parallel.replicate(_zero_sums(), exp.mesh))
      leaves = train_step.leaves(state)
      monitor.start_epoch()  # the epoch's images/s leave out evaluation
      if stopped:
        logging.info('Early stopping after epoch %d: validation %s has not improved for '
                     '%d epochs.', epoch, config.selection.metric,
                     config.selection.early_stopping_patience)
        save = True
    if save:
      # Never save a diverged state: the newest checkpoint must be one to resume from.
      if config.halt_on_nan and not bool(all_finite(state.params)):
        raise diverged(exp.checkpointer, 'some weights became inf or NaN', step, last_checkpoint)
      with clock.phase('checkpoint'):
        exp.checkpointer.save(step, state, pipeline.train_iter)
      last_checkpoint = step
  profiler.stop()
  clock.seconds['train'] = time.perf_counter() - loop_start - sum(
      clock.seconds.get(k, 0.0) for k in ('compile', 'eval', 'checkpoint', 'profile'))
  with clock.phase('checkpoint'):
    exp.checkpointer.wait()
    exp.checkpointer.close()
  with clock.phase('test'):
    if has_val:
      final = _test_selected(exp, selector, state, workdir)
      if step > start:  # a run resumed after its end does not log the test row twice
        writer.write(step, step // steps_per_epoch,
                     {f'test/{k}': v for k, v in final.metrics.items()})
    elif final is None:  # Nothing left to train (resumed from the final checkpoint).
      final = evaluate(exp, state, 'test', config.selection.fixed_threshold)
  writer.close()
  pipeline.close()
  _write_timing(clock, workdir)
  return dataclasses.replace(final, split=pipeline.split_summary())


class _Profiler:
  """A jax.profiler trace of train steps first..last (config.profile_steps) in
  WORKDIR/profile/; the last step is waited for, so the trace holds its device work.
  A run that resumes past `first` writes none."""

  active: '_Profiler | None' = None  # the trace running in this process, if any

  def __init__(self, steps, workdir: str, clock: Stopwatch):
    self.first, self.last = (int(x) for x in steps)
    self.path = os.path.join(workdir, 'profile')
    self.clock = clock
    self.tracing = False

  def before(self, step: int) -> None:
    if self.first and step == self.first:
      jax.profiler.start_trace(self.path)
      self.tracing = True
      _Profiler.active = self

  def after(self, step: int, leaves) -> None:
    if self.tracing and step == self.last:
      jax.block_until_ready(leaves)
      self.stop()

  def stop(self) -> None:
    if self.tracing:
      with self.clock.phase('profile'):
        jax.profiler.stop_trace()
      self.tracing = False
      _Profiler.active = None
      logging.info('Profile of train steps %d-%d written to %s.', self.first, self.last,
                   self.path)


def _write_timing(clock: Stopwatch, workdir: str) -> None:
  """Logs where the run's time went; WORKDIR/timing.json (process 0)."""
  logging.info('Time: %s.', clock.table())
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'timing.json'), 'w', encoding='utf-8') as f:
      json.dump(clock.summary(), f, indent=1)


def _test_selected(exp: Experiment, selector: _Selector, state: TrainState,
                   workdir: str) -> EvalResult:
  """The test split, once: the kept checkpoint at its validation-fitted threshold."""
  selector.close()
  sel = exp.config.selection
  if selector.best is None:
    logging.warning('Validation %s was never finite: testing the last checkpoint at the '
                    'fixed threshold.', sel.metric)
    return evaluate(exp, state, 'test', sel.fixed_threshold)
  state, _ = restore_best(workdir, state)
  final = evaluate(exp, state, 'test', selector.best['threshold'])
  final.step, final.selection = selector.best['step'], selector.best
  logging.info('Test (evaluated once) with the checkpoint kept on validation, %s\n%s',
               selector.describe(), final.table())
  return final


def check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir with checkpoints resumes only with its own config (a few fields may change)."""
  path = os.path.join(workdir, 'config.json')
  checkpoints = os.path.join(workdir, 'checkpoints')
  if not (os.path.exists(path) and os.path.isdir(checkpoints) and os.listdir(checkpoints)):
    return
  with open(path, encoding='utf-8') as f:
    saved = json.load(f)
  changed = config_validation.check_resume(saved, config, workdir)
  if changed:
    logging.warning('Resuming %s with changed %s.', workdir, ', '.join(changed))


def save_config(config: ml_collections.ConfigDict, workdir: str,
                 class_names=None) -> None:
  """config.json, and class_names.json (the label order, for evaluate_external)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    if class_names is not None:
      with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
        json.dump(list(class_names), f)
