r"""Times the project's real jitted train and eval steps on synthetic, device-resident data.

The model, optimizer, state and steps come from the project itself
(`spp_resnet.training.train.create_train_state` / `make_steps`, `create_optimizer`), so this
measures exactly what `main.py` runs per step: uint8 -> model input, device-side
augmentation, forward, loss, backward, SGD update and the on-device metric sums.
The input pipeline is NOT part of it: one synthetic uint8 batch is placed on the devices
once (sharded with `parallel.global_batch`) and fed to every step.

Protocol: AOT lower + compile (timed, reported separately; the jit call path then reuses
that executable), `--warmup` untimed steps, then `--steps` steps dispatched back to back
with no host sync inside the timed loop and one `jax.block_until_ready` at the end. The
same for the eval step. It also checks that the timed loop did not recompile and that a
step makes no implicit host<->device transfer (`jax.transfer_guard`).

  python benchmarks/train_step.py --config=configs/default.py --batch_size=32 \
      --image_size=224 [--compute_dtype=bfloat16] [--steps=20 --warmup=3]

Any config field can be overridden, e.g. `--config.model.variant=v1.5`.
`--json` prints one JSON line (used by benchmarks/compare_torch.py).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Global batch (default: config).')
_IMAGE = flags.DEFINE_integer('image_size', None, 'Square input size (default: config).')
_DTYPE = flags.DEFINE_enum('compute_dtype', None, ['float32', 'bfloat16'],
                           'config.model.compute_dtype (default: config).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 2, 'Classes (2 = one sigmoid logit).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed train steps.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed warm-up steps (after compile).')
_EVAL_STEPS = flags.DEFINE_integer('eval_steps', -1, 'Timed eval steps (-1: = steps, '
                                   '0: skip eval).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')


def _peak_memory(device) -> tuple[float, str]:
  """(MiB, kind): accelerator peak bytes in use, else the process' peak RSS."""
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, f'{device.platform} peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 'host peak RSS'


def _time_loop(fn, n: int) -> tuple[float, float]:
  """(wall s, process CPU s) of n back-to-back calls of fn(), synced once at the end."""
  import jax  # pylint: disable=import-outside-toplevel
  out = None
  c0, t0 = time.process_time(), time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - t0, time.process_time() - c0


def _dispatch_ms(state, mesh, calls: int = 50) -> dict[str, float]:
  """Host time of one jitted call that passes the state through (a step counter bump,
  no other compute): the TrainState pytree vs its flat list of arrays (`LeafStep`).
  The median of `calls` calls, each synced, so device work never hides in it."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from spp_resnet.training import parallel  # pylint: disable=import-outside-toplevel

  copy = lambda: jax.tree.map(lambda x: x.copy(), state)  # the real state stays undonated
  leaves, treedef = jax.tree.flatten(copy())
  bump = lambda s: s.replace(step=s.step + 1)
  replicated = parallel.replicated(mesh)
  on_state = jax.jit(bump, donate_argnums=0, out_shardings=replicated)
  on_leaves = jax.jit(lambda l: jax.tree.leaves(bump(jax.tree.unflatten(treedef, l))),
                      donate_argnums=0, out_shardings=replicated)
  out = {}
  for name, fn, x in (('train_state', on_state, copy()), ('leaves', on_leaves, leaves)):
    x = jax.block_until_ready(fn(x))  # compile
    times = []
    for _ in range(calls):
      t0 = time.perf_counter()
      x = fn(x)
      times.append(time.perf_counter() - t0)
      jax.block_until_ready(x)
    out[name] = 1e3 * float(np.median(times))
  return out


def run(config, *, num_classes: int, steps: int, warmup: int, eval_steps: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from spp_resnet.data import preprocess  # pylint: disable=import-outside-toplevel
  from spp_resnet.training import parallel  # pylint: disable=import-outside-toplevel
  from spp_resnet.training import train as train_lib  # pylint: disable=import-outside-toplevel
  from spp_resnet.training.optimizer import create_optimizer  # pylint: disable=import-outside-toplevel

  config.pretrained.source = ''  # random init: no weight files needed
  batch_size, image_size = config.batch_size, config.data.image_size
  mesh = parallel.create_mesh()
  if batch_size % mesh.size:
    raise ValueError(f'batch_size {batch_size} is not divisible by {mesh.size} devices')
  tx = create_optimizer(config.optimizer, steps_per_epoch=100,
                        num_epochs=config.num_epochs)
  t0 = time.perf_counter()
  graphdef, state = train_lib.create_train_state(config, num_classes, tx, mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  normalization = preprocess.resolve_normalization(config.data.normalization,
                                                   config.pretrained.source)
  steps_ = train_lib.make_steps(graphdef, tx, config, normalization, mesh)
  n_params = sum(int(np.prod(x.shape)) for x in
                 jax.tree.leaves((state.params, state.frozen)))

  # This process' slice of a synthetic global batch, uint8 as the pipeline ships it.
  local = batch_size // jax.process_count()
  rng = np.random.default_rng(jax.process_index())
  host_batch = {
      'image': rng.integers(0, 256, (local, image_size, image_size, 1), dtype=np.uint8),
      'label': rng.integers(0, num_classes, (local,)).astype(np.int32),
  }
  train_batch = parallel.global_batch(host_batch, mesh)
  eval_batch = parallel.global_batch({**host_batch, 'mask': np.ones((local,), bool)}, mesh)

  # Compile (ahead of time; the jitted call below reuses the executable). As in the
  # train loop, the state crosses the jit boundary as its flat list of arrays.
  train_step, consts = steps_.train.jitted, steps_.train.consts  # (leaves, batch, *consts)
  leaves = steps_.train.leaves(state)
  t0 = time.perf_counter()
  train_step.lower(leaves, train_batch, *consts).compile()
  compile_train_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  leaves = train_step(leaves, train_batch, *consts)
  jax.block_until_ready(leaves)
  first_step_s = time.perf_counter() - t0
  # A step must not move data between host and device implicitly.
  try:
    with jax.transfer_guard('disallow'):
      leaves = train_step(leaves, train_batch, *consts)
      jax.block_until_ready(leaves)
    transfers = 'none'
  except Exception as e:  # pylint: disable=broad-except
    transfers = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
  for _ in range(max(0, warmup - 2)):
    leaves = train_step(leaves, train_batch, *consts)
  jax.block_until_ready(leaves)

  cache_before = train_step._cache_size()  # pylint: disable=protected-access
  holder = [leaves]

  def one_train_step():
    holder[0] = train_step(holder[0], train_batch, *consts)  # donated: keep the new arrays
    return holder[0]

  train_s, train_cpu_s = _time_loop(one_train_step, steps)
  state = steps_.train.state(holder[0])
  recompiled = train_step._cache_size() - cache_before  # pylint: disable=protected-access
  loss = float(jax.device_get(state.train_sums['loss'] / state.train_sums['count']))

  eval_steps = steps if eval_steps < 0 else eval_steps
  compile_eval_s = eval_s = float('nan')
  if eval_steps:
    t0 = time.perf_counter()
    steps_.eval.lower(state, eval_batch).compile()
    compile_eval_s = time.perf_counter() - t0
    for _ in range(max(1, warmup)):
      out = steps_.eval(state, eval_batch)
    jax.block_until_ready(out)
    eval_s, _ = _time_loop(lambda: steps_.eval(state, eval_batch), eval_steps)

  device = jax.local_devices()[0]
  peak_mib, peak_kind = _peak_memory(device)
  dispatch = _dispatch_ms(state, mesh)  # after the peak: it copies the state twice
  m = config.model
  return {
      'framework': f'jax {jax.__version__} / flax {_flax_version()}',
      'config': config_flags_path(),
      'backbone': m.backbone, 'variant': m.variant, 'pooling': m.pooling,
      'spp_levels': list(m.spp_levels), 'head_hidden': list(m.head_hidden),
      'image_size': image_size, 'batch_size': batch_size, 'dtype': m.compute_dtype,
      'devices': f'{jax.device_count()} x {device.device_kind} ({device.platform})',
      'platform': device.platform, 'threads': len(os.sched_getaffinity(0)),
      'params': n_params, 'steps': steps, 'warmup': warmup, 'eval_steps': eval_steps,
      'init_s': init_s, 'compile_train_s': compile_train_s,
      'compile_eval_s': compile_eval_s, 'first_step_s': first_step_s,
      'train_step_ms': 1e3 * train_s / steps,
      'train_images_per_s': batch_size * steps / train_s,
      'train_cpu_s_per_step': train_cpu_s / steps,
      'eval_step_ms': 1e3 * eval_s / eval_steps if eval_steps else float('nan'),
      'eval_images_per_s': batch_size * eval_steps / eval_s if eval_steps else float('nan'),
      'peak_memory_mib': peak_mib, 'peak_memory_kind': peak_kind,
      'recompiles_in_timed_loop': recompiled, 'implicit_transfers': transfers,
      'final_loss': loss,
      'dispatch_ms_train_state': dispatch['train_state'],
      'dispatch_ms_leaves': dispatch['leaves'],
  }


def _flax_version() -> str:
  import flax  # pylint: disable=import-outside-toplevel
  return flax.__version__


def config_flags_path() -> str:
  try:
    return config_flags.get_config_filename(flags.FLAGS['config'])
  except Exception:  # pylint: disable=broad-except
    return '?'


def format_table(r: dict) -> str:
  rows = [
      ('framework', r['framework']),
      ('config', r['config']),
      # The variant is ResNet's stride placement; the other backbones ignore it.
      ('backbone', r['backbone'] + (f" {r['variant']}" if r['backbone'].startswith('resnet')
                                    else '')),
      ('pooling', f"{r['pooling']} {r['spp_levels'] if r['pooling'] == 'spp' else ''}"
                  f" + head {r['head_hidden']}"),
      ('params', f"{r['params']:,}"),
      ('image size', r['image_size']), ('batch', r['batch_size']), ('dtype', r['dtype']),
      ('devices', r['devices']),
      ('compile s (train / eval)', f"{r['compile_train_s']:.1f} / {r['compile_eval_s']:.1f}"),
      ('first step after compile s', f"{r['first_step_s']:.2f}"),
      (f"train step ms (mean of {r['steps']})", f"{r['train_step_ms']:.1f}"),
      ('train images/s', f"{r['train_images_per_s']:.1f}"),
      ('train CPU s/step (all threads)', f"{r['train_cpu_s_per_step']:.2f}"),
      ('eval images/s', f"{r['eval_images_per_s']:.1f}"),
      (f"peak memory MiB ({r['peak_memory_kind']})", f"{r['peak_memory_mib']:.0f}"),
      ('host dispatch ms/call: TrainState / its arrays',
       f"{r['dispatch_ms_train_state']:.2f} / {r['dispatch_ms_leaves']:.2f}"),
      ('recompiles in timed loop', r['recompiles_in_timed_loop']),
      ('implicit host<->device transfers', r['implicit_transfers']),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv):
  del argv
  config = _CONFIG.value
  if _BATCH.value is not None:
    config.batch_size = _BATCH.value
  if _IMAGE.value is not None:
    config.data.image_size = _IMAGE.value
  if _DTYPE.value is not None:
    config.model.compute_dtype = _DTYPE.value
  result = run(config, num_classes=_NUM_CLASSES.value, steps=_STEPS.value,
               warmup=_WARMUP.value, eval_steps=_EVAL_STEPS.value)
  result['python'] = platform.python_version()
  if _JSON.value:
    print(json.dumps(result))
  else:
    print(format_table(result))


if __name__ == '__main__':
  # Runnable as `python benchmarks/train_step.py` from the repository root.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main)
