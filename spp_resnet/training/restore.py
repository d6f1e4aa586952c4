"""A trained run, restored for inference from its own saved files.

One restore path for everything that applies a trained model (`--mode=eval`,
`evaluate_external`, `cross_dataset`, `predict`, Grad-CAM, export): the model, its input
preprocessing, class names and decision threshold come from the run's own
WORKDIR/config.json, class_names.json and selection.json, and the weights from its
checkpoint, restored into abstract targets (`nnx.eval_shape`): no weight is drawn or
read from an ImageNet file only to be overwritten. An ensemble run (WORKDIR/ensemble.json,
`training/ensemble.py`) restores its members' weights stacked on a leading axis, and its
probabilities are the mean of theirs.

  restored = restore_for_inference('runs/scratch')
  probs = restored.probs(np.stack([restored.prepare(image) for image in images]))
  classes = restored.decide(probs)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from spp_resnet import config_validation
from spp_resnet.data import preprocess
from spp_resnet.evaluation import metrics as metrics_lib
from spp_resnet.training import checkpoint as checkpoint_lib
from spp_resnet.training import parallel
from spp_resnet.training import train as train_lib
from spp_resnet.training.optimizer import create_optimizer

CONFIG_FILE = 'config.json'
CLASS_NAMES_FILE = 'class_names.json'
ENSEMBLE_FILE = 'ensemble.json'
# The fields in which an ensemble's members differ from it.
MEMBER_FIELDS = ('seed', 'ensemble_size')
# Fields an evaluation may set differently from the run's own config: where files are,
# how fast it goes, and the decision rule's fixed fallback.
EVAL_FIELDS = (*config_validation.NON_RESULT_FIELDS, 'eval_batch_size')


def _tuples(value):
  """JSON lists back to tuples (every sequence field of the configs is a tuple)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from WORKDIR/config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: --workdir must be the directory of a '
                            'training run (main.py, the ablation or sweep runner).')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def load_class_names(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """The model's label order: WORKDIR/class_names.json, else the training dataset's."""
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return list(json.load(f))
  # runs from before class_names.json only
  from spp_resnet.data import sources  # pylint: disable=g-import-not-at-top
  logging.warning('%s is missing (a run from before it was written); taking the class '
                  'names from the training dataset %s.', path, config.data.dataset)
  try:
    loaded = sources.load_dataset(config.data.dataset, data_dir=config.data.data_dir,
                                  manual_dir=config.data.manual_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f'{path} is missing and the training dataset {config.data.dataset!r} cannot be '
        f'opened to read its class names ({e}). Write the class names, in label order, '
        f'as a JSON list to {path}.') from e
  return list(loaded.class_names)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any],
                    workdir: str) -> ml_collections.ConfigDict:
  """The run's config with `overrides` ({'eval_batch_size': 64}) of the fields an
  evaluation may change; any other changed field is refused in one line."""
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  before = config_validation.flatten(config.to_dict())
  refused = []
  for field, value in overrides.items():
    old = before.get(field)
    value = list(value) if isinstance(value, tuple) else value
    if field in EVAL_FIELDS or old == value:
      *parents, leaf = field.split('.')
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = _tuples(value)
    else:
      refused.append(f'{field}: {old!r} -> {value!r}')
  if refused:
    raise config_validation.ConfigError(
        f'{workdir} is evaluated with its own config ({os.path.join(workdir, CONFIG_FILE)}); '
        f'{", ".join(refused)} would change what was trained. Only '
        f'{", ".join(EVAL_FIELDS)} may differ in an evaluation.')
  return config


@dataclasses.dataclass
class RestoredModel:
  """A trained classifier with the run's preprocessing and decision rule."""
  workdir: str
  config: ml_collections.ConfigDict  # the run's own config
  class_names: list[str]             # label order
  graphdef: nnx.GraphDef
  weights: dict                      # {'params', 'frozen', 'batch_stats'}, replicated on `mesh`
  mesh: Any
  normalization: str                 # resolved input normalization of the weights
  step: int | None                   # the restored checkpoint's step
  threshold: float | None            # binary: P(class_names[1]) >= threshold is positive
  selection: dict | None             # WORKDIR/selection.json when the run selected on val
  # An ensemble: its members' workdirs; `weights` are theirs, stacked on a leading axis,
  # and `step` is None (each member's is in `selection['members']`).
  member_workdirs: tuple[str, ...] = ()
  # Where `threshold` is from when not from the run itself (`site_threshold.apply`).
  threshold_source: str = ''
  _probs: Any = dataclasses.field(default=None, repr=False)

  @property
  def members(self) -> int:
    """How many networks the model averages (1: a single run)."""
    return max(1, len(self.member_workdirs))

  @property
  def description(self) -> str:
    """Which weights these are, for reports: 'step 120' or 'ensemble of 3 runs (...)'."""
    if self.members == 1:
      return f'step {self.step}'
    names = ', '.join(os.path.relpath(w, self.workdir) for w in self.member_workdirs)
    return f'ensemble of {self.members} runs ({names})'

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def model(self) -> nnx.Module:
    """The nnx Classifier with the restored weights (call it with train=False)."""
    if self.members > 1:
      raise ValueError(f'{self.workdir} is an {self.description}: there is no single '
                       'network to return; restore a member for that.')
    return nnx.merge(self.graphdef, self.weights['params'], self.weights['frozen'],
                     self.weights['batch_stats'])

  def prepare(self, image: np.ndarray) -> np.ndarray:
    """One 2-D (or HxWxC) image of any dtype -> uint8 [S, S, 1], as in training."""
    return self.preprocessor(image)

  @property
  def preprocessor(self) -> Any:
    """The run's host preprocessing (`data.preprocess.Preprocessor`), picklable."""
    return preprocess.Preprocessor.from_config(self.config.data)

  def probs(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 1] -> float32 class probabilities [B, K] (one compile per B)."""
    images = np.asarray(images)
    pad = -len(images) % self.mesh.size  # the batch is split evenly over the devices
    if pad:
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    out = self.batch_probs(parallel.global_batch({'image': images}, self.mesh))
    return np.asarray(jax.device_get(out))[:len(images) - pad]

  def batch_probs(self, batch: dict[str, jax.Array]) -> jax.Array:
    """A global, data-sharded {'image': uint8 [B,S,S,1]} -> replicated probabilities."""
    return self._probs(self.weights, batch)

  def decide(self, probs: np.ndarray) -> np.ndarray:
    """[B, K] probabilities -> predicted class indices at the run's decision threshold."""
    return metrics_lib.predict(probs, self.threshold)


def restore_for_inference(workdir: str, step: int | None = None,
                          overrides: dict[str, Any] | None = None) -> RestoredModel:
  """WORKDIR's model: the kept best-on-validation checkpoint at its fitted threshold when
  the run has one and no `step` is asked for, else checkpoint `step` (default: the
  latest) at `selection.fixed_threshold`.

  `overrides` may change only `EVAL_FIELDS` (paths, batch size); others are refused.
  An ensemble restores each member as above (its kept checkpoint) and decides at the
  ensemble's own threshold.
  """
  members = load_ensemble(workdir)
  if members is not None:
    return _restore_ensemble(workdir, members, step, overrides or {})
  config = apply_overrides(load_run_config(workdir), overrides or {}, workdir)
  class_names = load_class_names(workdir, config)
  normalization = preprocess.resolve_normalization(config.data.normalization,
                                                   config.pretrained.source)
  mesh = parallel.create_mesh()
  # The optimizer state's structure does not depend on the schedule's length.
  tx = create_optimizer(config.optimizer, 1, config.num_epochs)
  graphdef, abstract = train_lib.create_train_state(config, len(class_names), tx, mesh,
                                                    abstract=True)
  selection = train_lib.load_selection(workdir)
  if selection is not None and step is None:
    state, step = train_lib.restore_best(workdir, abstract)
    weights = train_lib.inference_weights(state)
    threshold = selection['threshold']
  else:
    checkpointer = checkpoint_lib.Checkpointer(workdir, keep=max(1, config.keep_checkpoints))
    try:
      if checkpointer.latest_step() is None:
        raise FileNotFoundError(f'No checkpoint in {checkpointer.directory}: train first '
                                '(main.py --mode=train).')
      # The weights only: no optimizer state to read, and the train state of other
      # versions (other running sums) restores too.
      fields = checkpointer.restore(train_lib.weight_fields(abstract), step=step,
                                    partial=True)
      weights = train_lib.inference_weights(abstract.replace(**fields))
      step = checkpointer.restored_step
    finally:
      checkpointer.close()
    selection = None
    threshold = float(config.get('selection', {}).get('fixed_threshold', 0.5))
  if len(class_names) != 2:
    threshold = None
  return RestoredModel(
      workdir=workdir, config=config, class_names=class_names, graphdef=graphdef,
      weights=weights, mesh=mesh, normalization=normalization,
      step=int(step), threshold=threshold, selection=selection,
      _probs=train_lib.make_predict_fn(graphdef, normalization, mesh))


def load_ensemble(workdir: str) -> list[str] | None:
  """The member workdirs of an ensemble run (WORKDIR/ensemble.json), else None."""
  path = os.path.join(workdir, ENSEMBLE_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return [os.path.join(workdir, member) for member in json.load(f)['members']]


def _result_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields that decide what a member trains, as a member of an ensemble sees them."""
  flat = config_validation.flatten(config.to_dict())
  return {k: v for k, v in flat.items() if k not in (*EVAL_FIELDS, *MEMBER_FIELDS)}


def _restore_ensemble(workdir: str, member_workdirs: list[str], step: int | None,
                      overrides: dict[str, Any]) -> RestoredModel:
  if step is not None:
    raise config_validation.ConfigError(
        f'--step={step}: {workdir} is an ensemble of {len(member_workdirs)} runs, each with '
        f'its own checkpoints; evaluate a member ({member_workdirs[0]}) to pick one.')
  config = apply_overrides(load_run_config(workdir), overrides, workdir)
  class_names = load_class_names(workdir, config)
  expected = _result_fields(config)
  member_overrides = {k: v for k, v in overrides.items() if k not in MEMBER_FIELDS}
  members = []
  for member_workdir in member_workdirs:
    member = restore_for_inference(member_workdir, overrides=member_overrides)
    fields = _result_fields(member.config)
    # A field one of them lacks was added to the code in between: nothing to compare.
    differ = sorted(k for k in expected.keys() & fields.keys() if expected[k] != fields[k])
    if differ or member.class_names != class_names:
      shown = ', '.join(f'{k}: {expected[k]!r} -> {fields[k]!r}' for k in differ[:4])
      raise config_validation.ConfigError(
          f'{member_workdir} is not a member of the ensemble {workdir}: it was trained with '
          f'another config or class order ({shown or member.class_names}).')
    members.append(member)
  mesh = members[0].mesh
  stack = jax.jit(lambda *ws: jax.tree.map(lambda *xs: jnp.stack(xs), *ws),
                  out_shardings=parallel.replicated(mesh))
  weights = stack(*(member.weights for member in members))
  selection = train_lib.load_selection(workdir)
  threshold = (selection['threshold'] if selection is not None
               else float(config.selection.fixed_threshold))
  return RestoredModel(
      workdir=workdir, config=config, class_names=class_names,
      graphdef=members[0].graphdef, weights=weights, mesh=mesh,
      normalization=members[0].normalization, step=None,
      threshold=threshold if len(class_names) == 2 else None, selection=selection,
      member_workdirs=tuple(member_workdirs),
      _probs=train_lib.make_predict_fn(members[0].graphdef, members[0].normalization,
                                       mesh, len(members)))


def predict_splits(restored: RestoredModel, splits: tuple[str, ...]
                   ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
  """{split: (probs [N, K], labels [N])} of the model on `splits` of its own dataset
  and split protocol, and the split summary (`InputPipeline.split_summary`)."""
  # inference alone needs no dataset
  from spp_resnet.data import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  config = restored.config
  if config.eval_batch_size % jax.device_count():
    raise config_validation.ConfigError(
        f'config.eval_batch_size={config.eval_batch_size}: must be divisible by the number '
        f'of devices ({jax.device_count()}).')
  pipeline = pipeline_lib.create_input_pipeline(
      config.data, global_batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pretrained_source=config.pretrained.source)
  try:
    return ({split: train_lib.predict_probs(restored.batch_probs, restored.mesh,
                                            pipeline.eval_batches(split))
             for split in splits}, pipeline.split_summary())
  finally:
    pipeline.close()


def run_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits a run's config makes: ('train', 'val', 'test'), or without 'val'."""
  split = config.data.split
  has_val = split.get('val_fraction', 0) > 0 or split.get('val_dataset', '')
  return ('train', 'val', 'test') if has_val else ('train', 'test')


def evaluate_checkpoint(workdir: str, split: str = 'test', *, step: int | None = None,
                        overrides: dict[str, Any] | None = None) -> train_lib.EvalResult:
  """WORKDIR's model (see `restore_for_inference`) on `split` of its own dataset and
  split protocol, at its decision threshold: reproduces the run's final metrics."""
  if not (os.path.isdir(os.path.join(workdir, 'checkpoints'))
          or os.path.exists(os.path.join(workdir, ENSEMBLE_FILE))):
    raise FileNotFoundError(f'{workdir} holds no trained run (no checkpoints/ folder): '
                            'check --workdir, or train first with --mode=train.')
  splits = run_splits(load_run_config(workdir))
  if split not in splits:
    raise config_validation.ConfigError(
        f'--eval_split={split!r}: {workdir} has the splits {", ".join(splits)}'
        + ('' if 'val' in splits else ' (it was trained without a validation split)') + '.')
  restored = restore_for_inference(workdir, step, overrides)
  probs, labels = predict_splits(restored, (split,))[0][split]
  result = train_lib.metrics_from_probs(probs, labels, restored.class_names,
                                        restored.threshold)
  result.step, result.selection = restored.step, restored.selection
  return result
