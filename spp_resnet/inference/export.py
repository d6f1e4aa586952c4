r"""Exports a trained run as one self-contained model file: StableHLO or ONNX.

  python -m spp_resnet.export --workdir=RUN --format=stablehlo|onnx [--out=PATH]

Both map uint8 images [B, S, S, 1], preprocessed as the run's training images were
(`RestoredModel.prepare`: intensity window, contrast stretching, resize to S), to float32
class probabilities [B, K]; the input normalization of the weights happens inside, and
the batch size B is symbolic (any B works, with no re-export). The weights are
constants of the file.

- stablehlo (default OUT: WORKDIR/export/model.jax_export): a `jax.export` serialization,
  lowered for --platforms; in Python, without this project:
    exported = jax.export.deserialize(open(path, 'rb').read())
    probs = exported.call(images)
- onnx (default OUT: WORKDIR/export/model.onnx; needs `pip install 'spp_resnet[onnx]'`):
  converted by jax2onnx, input 'images', output 'probs'; checked against the JAX model
  with onnxruntime after writing (max abs difference logged, > 1e-4 fails).

Next to the file, OUT.json describes what the model file cannot: class names, the
decision threshold, image size, the preprocessing, the checkpoint step (also in the ONNX
file's metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import itertools
import json
import logging as std_logging
import os

from absl import app, flags, logging
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from spp_resnet import cli
from spp_resnet.data import phantom
from spp_resnet.inference import site_threshold
from spp_resnet.training import restore
from spp_resnet.training import train as train_lib

FLAGS = flags.FLAGS
FORMATS = {'stablehlo': '.jax_export', 'onnx': '.onnx'}
ONNX_TOLERANCE = 1e-4  # max abs difference of the probabilities, ONNX Runtime vs JAX
ONNX_OPSET = 21


def images_spec(image_size: int) -> jax.ShapeDtypeStruct:
  """uint8 [B, S, S, 1] with a symbolic batch size B."""
  batch, = jax.export.symbolic_shape('batch')
  return jax.ShapeDtypeStruct((batch, image_size, image_size, 1), jnp.uint8)


def probs_function(restored) -> Callable[[jax.Array], jax.Array]:
  """uint8 images [B, S, S, 1] -> probabilities [B, K], the weights as constants."""
  probs = train_lib.probs_fn(restored.graphdef, restored.normalization, restored.members)
  weights = jax.device_get(restored.weights)  # host copies: one device, no sharding
  return lambda images: probs(weights, {'image': images})


def describe(restored, model_format: str) -> dict:
  """What a user of the model file needs besides it (OUT.json)."""
  return {
      'format': model_format, 'workdir': os.path.abspath(restored.workdir),
      'step': restored.step, 'model': restored.description,
      'class_names': restored.class_names,
      'threshold': restored.threshold,
      **({'threshold_source': restored.threshold_source} if restored.threshold_source else {}),
      'decision': (f'P({restored.class_names[1]}) >= threshold' if restored.threshold
                   is not None else 'argmax'),
      'input': {'name': 'images', 'dtype': 'uint8',
                'shape': ['batch', restored.image_size, restored.image_size, 1]},
      'output': {'name': 'probs', 'dtype': 'float32',
                 'shape': ['batch', len(restored.class_names)]},
      # preprocess_image's arguments: what to do to a slice before it goes in.
      'preprocessing': {'function': 'spp_resnet.data.preprocess.preprocess_image',
                        **dataclasses.asdict(restored.preprocessor)},
      'normalization_inside': restored.normalization,
  }


def export_stablehlo(restored, path: str,
                     platforms: Sequence[str] = ('cpu', 'cuda', 'tpu')) -> jax.export.Exported:
  exported = jax.export.export(jax.jit(probs_function(restored)), platforms=platforms)(
      images_spec(restored.image_size))
  with open(path, 'wb') as f:
    f.write(exported.serialize())
  return exported


# ---- ONNX ------------------------------------------------------------------------------
#
# jax2onnx (0.17) is given the model as a jaxpr of lax primitives, staged before it
# patches Flax: its Flax-level converters fail on this model (nnx.max_pool with a
# positional window, nnx.Dropout called with rngs=) and, once those are avoided, emit
# an ONNX graph with mismatched NHWC/NCHW shapes. Two of its lax converters fail too,
# and are given equivalent primitives instead (`_ONNX_REWRITES`):
# - `pad` with a symbolic batch dimension (InconclusiveDimensionOperation in
#   jax2onnx/plugins/jax/lax/pad.py): edges of the pad value, concatenated;
# - `reduce_window_max` over NHWC maps becomes a MaxPool over 4 "spatial" dimensions,
#   which ONNX Runtime rejects ("Unsupported pooling size"): the maximum of the
#   window's strided slices.


def _pad_by_concatenation(x, value, *, padding_config):
  for axis, (low, high, interior) in enumerate(padding_config):
    if interior or low < 0 or high < 0:
      raise NotImplementedError(f'ONNX export: pad {padding_config} (interior or negative)')

    def edge(width, axis=axis):
      shape = (*x.shape[:axis], int(width), *x.shape[axis + 1:])
      return jnp.broadcast_to(jnp.asarray(value, x.dtype), shape)

    parts = [edge(low)] * bool(low) + [x] + [edge(high)] * bool(high)
    x = jnp.concatenate(parts, axis=axis) if len(parts) > 1 else x
  return x


def _max_pool_by_slices(x, *, window_dimensions, window_strides, padding, base_dilation,
                        window_dilation):
  if any(d != 1 for d in (*base_dilation, *window_dilation)):
    raise NotImplementedError('ONNX export: dilated reduce_window_max')
  x = _pad_by_concatenation(x, -jnp.inf, padding_config=[(lo, hi, 0) for lo, hi in padding])
  pooled = None
  for offsets in itertools.product(*map(range, window_dimensions)):
    window = tuple(
        slice(None) if size == 1 else slice(start, start + (n - size) // stride * stride + 1,
                                            stride)
        for start, n, size, stride in zip(offsets, x.shape, window_dimensions,
                                          window_strides))
    pooled = x[window] if pooled is None else jnp.maximum(pooled, x[window])
  return pooled


_ONNX_REWRITES = {jax.lax.pad_p: _pad_by_concatenation,
                  jax.lax.reduce_window_max_p: _max_pool_by_slices}


def _eval_for_onnx(jaxpr, consts, *args):
  """`jax.core.eval_jaxpr` with nested jits inlined and `_ONNX_REWRITES` applied."""
  env = {}

  def read(var):
    return var.val if isinstance(var, jax_core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    inputs = [read(var) for var in eqn.invars]
    if eqn.primitive.name in ('jit', 'pjit'):
      inner = eqn.params['jaxpr']
      outputs = _eval_for_onnx(inner.jaxpr, inner.consts, *inputs)
    elif eqn.primitive in _ONNX_REWRITES:
      outputs = [_ONNX_REWRITES[eqn.primitive](*inputs, **eqn.params)]
    else:
      outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
      outputs = outputs if eqn.primitive.multiple_results else [outputs]
    env.update(zip(eqn.outvars, outputs))
  return [read(var) for var in jaxpr.outvars]


def to_onnx(restored):
  """The run's model as an ONNX ModelProto ('images' uint8 -> 'probs' float32)."""
  # jax2onnx logs a traceback for each of its Equinox and dm-pix plugins whose package
  # is absent; this model needs neither.
  std_logging.getLogger('jax2onnx.plugins.plugin_system').setLevel(std_logging.ERROR)
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top  # optional (these 3)
  except ImportError:
    raise ImportError("ONNX export needs jax2onnx: pip install 'spp_resnet[onnx]' && pip "
                      'install --no-deps jax2onnx==0.17.1') from None
  spec = images_spec(restored.image_size)
  staged = jax.make_jaxpr(probs_function(restored))(spec)

  def probs(images):
    return _eval_for_onnx(staged.jaxpr, staged.consts, images)[0]

  model = jax2onnx.to_onnx(probs, [spec], model_name='spp_resnet', opset=ONNX_OPSET,
                           input_names=['images'], output_names=['probs'])
  for key, value in describe(restored, 'onnx').items():
    model.metadata_props.add(key=key, value=json.dumps(value))
  return model


def onnx_max_abs_diff(path: str, restored, images: np.ndarray) -> float:
  """Max |ONNX Runtime - JAX| over the probabilities of uint8 `images` [N, S, S, 1]."""
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("Checking the ONNX file needs onnxruntime: pip install "
                      "'spp_resnet[onnx]'") from None
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  onnx_probs, = session.run(['probs'], {'images': np.asarray(images, np.uint8)})
  return float(np.abs(onnx_probs - restored.probs(images)).max())


def sample_images(restored, count: int = 8) -> np.ndarray:
  """A few SYNTHETIC phantom slices, prepared as the run's inputs (for the ONNX check)."""
  return np.stack([restored.prepare(phantom.generate(0, i, restored.image_size)[0])
                   for i in range(count)])


def export(workdir: str, model_format: str = 'stablehlo', out: str = '', *,
           step: int | None = None, platforms: Sequence[str] = ('cpu', 'cuda', 'tpu'),
           threshold: str = '') -> str:
  """Writes WORKDIR's model as `model_format` to `out` (default WORKDIR/export/model.*)
  and its description to OUT.json; returns `out`. `threshold`: the decision threshold
  OUT.json gives instead of the run's (a probability or a site threshold file)."""
  if model_format not in FORMATS:
    raise ValueError(f'--format must be one of {sorted(FORMATS)}, got {model_format!r}')
  restored = restore.restore_for_inference(workdir, step)
  if threshold:
    restored = site_threshold.apply(restored, threshold)
  out = out or os.path.join(workdir, 'export', 'model' + FORMATS[model_format])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if model_format == 'stablehlo':
    export_stablehlo(restored, out, platforms)
  else:
    import onnx  # pylint: disable=g-import-not-at-top  # jax2onnx's dependency
    onnx.save(to_onnx(restored), out)
    diff = onnx_max_abs_diff(out, restored, sample_images(restored))
    if diff > ONNX_TOLERANCE:
      raise ValueError(f'{out}: ONNX Runtime differs from JAX by up to {diff:.2e} '
                       f'(> {ONNX_TOLERANCE}) on phantom slices; not usable.')
    logging.info('ONNX Runtime matches JAX to %.1e (max abs difference of the '
                 'probabilities, phantom slices).', diff)
  with open(out + '.json', 'w', encoding='utf-8') as f:
    json.dump(describe(restored, model_format), f, indent=1)
  return out


def _define_flags():
  flags.DEFINE_string('workdir', None, 'The trained run (checkpoints/, config.json).')
  flags.DEFINE_enum('format', 'stablehlo', sorted(FORMATS), 'Model file format.')
  flags.DEFINE_string('out', '', 'Output file (default WORKDIR/export/model.jax_export '
                      'or model.onnx).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the kept or latest one).')
  flags.DEFINE_string('threshold', '', "The decision threshold OUT.json gives: a P(positive) "
                      'or a site threshold file (evaluate_external --save_threshold); '
                      "default the run's.")
  flags.DEFINE_list('platforms', ['cpu', 'cuda', 'tpu'], 'stablehlo: the platforms to '
                    'lower for.')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  with cli.exit_on_user_error(ValueError, ImportError):
    out = export(FLAGS.workdir, FLAGS.format, FLAGS.out, step=FLAGS.step,
                 platforms=FLAGS.platforms, threshold=FLAGS.threshold)
  print(f'Written {out} and {out}.json')


def run():
  """The console script (pyproject.toml) and `python -m`."""
  _define_flags()
  cli.run(main)


if __name__ == '__main__':
  run()
