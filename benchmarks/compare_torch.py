r"""JAX (the project's real train step) vs the PyTorch reference, side by side.

Each measurement runs in a fresh subprocess (benchmarks/train_step.py --json, then
benchmarks/torch_reference.py --json, then with --torch_compile the same with
`--compile`), one after the other, so they never compete for the cores, and peak memory
is per run. JAX runs its default CPU thread pool (all cores available to the process);
torch gets `torch.set_num_threads(<the same count>)`. Both run the same dtype (float32
by default; `--dtype=bfloat16`: JAX `--compute_dtype=bfloat16`, torch autocast, both
with float32 parameters), the same architecture (ResNet v1.5, the layout torchvision
uses) and the same head; the runner checks that the parameter counts are equal.

Cases:
  a: configs/default.py, ResNet-50 v1.5 + SPP (1,4,8) + head (512,512), 224x224, batch 32
  b: configs/phantom.py, ResNet-18 v1.5 + SPP (1,4,8) + head (128,128), 64x64, batch 32

  python benchmarks/compare_torch.py --cases=a,b --repeats=2
  # a GPU: JAX vs torch eager vs torch.compile, bf16, batch 256, NHWC for torch
  python benchmarks/compare_torch.py --cases=a --device=cuda --dtype=bfloat16 \
      --batch_size=256 --torch_compile --channels_last --steps_a=50 --warmup_a=5

Options: --batch_size / --image_size override every case's; --channels_last runs torch
in NHWC; --torch_compile adds a torch.compile run (--torch_compile_mode, its compile
time is reported apart from the steps; a failing compile is reported in the table, not
fatal); --device=cpu|cuda pins both sides (JAX through JAX_PLATFORMS, torch through
--device; default: each framework's default device).

With --repeats > 1 the frameworks alternate (J T [C] J T [C] ...) so slow drifts of a
shared machine's load hit all; the table reports the best (highest images/s) run of
each, and every run's numbers and the load average are printed as they come.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_CASES = flags.DEFINE_list('cases', ['a', 'b'], 'Which cases to run (a, b).')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Alternating runs per framework and case.')
_STEPS_A = flags.DEFINE_integer('steps_a', 5, 'Timed steps, case a.')
_WARMUP_A = flags.DEFINE_integer('warmup_a', 2, 'Warm-up steps, case a.')
_STEPS_B = flags.DEFINE_integer('steps_b', 10, 'Timed steps, case b.')
_WARMUP_B = flags.DEFINE_integer('warmup_b', 3, 'Warm-up steps, case b.')
_JAX_SCRIPT = flags.DEFINE_string('jax_script', 'benchmarks/train_step.py',
                                  'JAX benchmark script (a modified copy, say).')
_JSON_OUT = flags.DEFINE_string('json_out', '', 'Also write all runs to this JSON file.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype of both sides (float32 parameters either way).')
_BATCH = flags.DEFINE_integer('batch_size', None, "Batch size of every case (default: "
                              "the case's).")
_IMAGE = flags.DEFINE_integer('image_size', None, "Image size of every case (default: "
                              "the case's).")
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', False, 'Also run torch.compile.')
_TORCH_COMPILE_MODE = flags.DEFINE_string('torch_compile_mode', 'default',
                                          'torch_reference.py --compile_mode.')
_CHANNELS_LAST = flags.DEFINE_bool('channels_last', False, 'torch in NHWC memory format.')
_DEVICE = flags.DEFINE_enum('device', '', ['', 'cpu', 'cuda'],
                            'Pin both sides to this device (default: their own default).')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    'a': dict(title='ResNet-50 v1.5 + SPP', batch_size=32, image_size=224,
              args=['--config=configs/default.py', '--config.model.variant=v1.5']),
    'b': dict(title='ResNet-18 v1.5 + SPP (phantom)', batch_size=32, image_size=64,
              args=['--config=configs/phantom.py']),
}
LABELS = {'jax': 'JAX', 'torch': 'torch', 'torch_compile': 'torch.compile'}


def _load() -> str:
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def _run(cmd: list[str], env: dict | None = None) -> dict:
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                        env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                       f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1])


def case_setup(name: str) -> tuple[str, int, int]:
  """(title, batch size, image size) of a case, with the command line's overrides."""
  case = CASES[name]
  batch = _BATCH.value or case['batch_size']
  size = _IMAGE.value or case['image_size']
  title = f"{case['title']}, {size}x{size}, batch {batch}"
  if _DTYPE.value != 'float32':
    title += f', {_DTYPE.value}'
  if _CHANNELS_LAST.value:
    title += ', torch channels_last'
  return title, batch, size


def commands(name: str, threads: int) -> list[tuple[str, list[str], dict | None]]:
  """[(framework, command, environment)] of one repeat of a case."""
  _, batch, size = case_setup(name)
  steps, warmup = ((_STEPS_A.value, _WARMUP_A.value) if name == 'a'
                   else (_STEPS_B.value, _WARMUP_B.value))
  common = CASES[name]['args'] + [f'--batch_size={batch}', f'--image_size={size}',
                                  f'--steps={steps}', f'--warmup={warmup}', '--json']
  jax_env = None
  torch_args = [f'--threads={threads}', f'--dtype={_DTYPE.value}']
  if _DEVICE.value:
    jax_env = {**os.environ, 'JAX_PLATFORMS': _DEVICE.value}
    torch_args.append(f'--device={_DEVICE.value}')
  if _CHANNELS_LAST.value:
    torch_args.append('--channels_last')
  out = [('jax', [sys.executable, _JAX_SCRIPT.value, *common,
                  f'--config.model.compute_dtype={_DTYPE.value}'], jax_env),
         ('torch', [sys.executable, 'benchmarks/torch_reference.py', *common, *torch_args],
          None)]
  if _TORCH_COMPILE.value:
    # At least 3 warm-up steps: the first ones compile, and their excess over the
    # steady step time is the compile time.
    out.append(('torch_compile',
                 [sys.executable, 'benchmarks/torch_reference.py', *common, *torch_args,
                  f'--warmup={max(3, warmup)}', '--compile',
                  f'--compile_mode={_TORCH_COMPILE_MODE.value}'], None))
  return out


def run_case(name: str) -> dict:
  title, _, _ = case_setup(name)
  threads = len(os.sched_getaffinity(0))
  runs: dict[str, list[dict]] = {}
  for rep in range(_REPEATS.value):
    for fw, cmd, env in commands(name, threads):
      before = _load()
      try:
        r = _run(cmd, env)
      except RuntimeError as e:
        if fw != 'torch_compile':
          raise
        r = {'error': str(e)[-2000:]}
        print(f'[{name} run {rep + 1}/{_REPEATS.value}] {LABELS[fw]}: FAILED\n{e}',
              flush=True)
      r['load_before'], r['load_after'] = before, _load()
      runs.setdefault(fw, []).append(r)
      if 'error' in r:
        continue
      print(f'[{name} run {rep + 1}/{_REPEATS.value}] {LABELS[fw]:13s} train '
            f'{r["train_step_ms"]:8.1f} ms/step {r["train_images_per_s"]:7.1f} img/s, '
            f'eval {r["eval_images_per_s"]:7.1f} img/s, CPU {r["train_cpu_s_per_step"]:.2f} '
            f's/step  (load {before} -> '
            f'{r["load_after"]})', flush=True)
  best, best_eval = {}, {}
  for fw, rs in runs.items():
    ok = [r for r in rs if 'error' not in r]
    if ok:
      best[fw] = max(ok, key=lambda r: r['train_images_per_s'])
      best_eval[fw] = max(r['eval_images_per_s'] for r in ok)
  for fw in ('torch', 'torch_compile'):
    if fw in best and best['jax']['params'] != best[fw]['params']:
      raise AssertionError(f'parameter counts differ: jax {best["jax"]["params"]:,} vs '
                           f'{fw} {best[fw]["params"]:,}')
  return dict(name=name, title=title, runs=runs, best=best, best_eval=best_eval,
              threads=threads)


def _img(r: dict | None) -> str:
  return 'failed' if r is None else f"{r['train_images_per_s']:.1f} ({r['train_step_ms']:.0f} ms)"


def _ratio(a: float | None, b: float | None) -> str:
  return '-' if a is None or b is None else f'{a / b:.2f}'


def _memory_label(results: list[dict]) -> str:
  kinds = {r.get('peak_memory_kind', 'host peak RSS')
           for res in results for r in res['best'].values()}
  return 'peak RSS MiB' if kinds == {'host peak RSS'} else 'peak memory MiB'


def format_results(results: list[dict]) -> str:
  if not any('torch_compile' in res['runs'] for res in results):
    return _format_two(results)
  memory = _memory_label(results)
  head = ('| case | params (JAX = torch) | JAX train img/s | torch eager train img/s | '
          'torch.compile train img/s | ratio JAX/torch eager (train) | '
          'ratio JAX/torch.compile (train) | JAX eval img/s | torch eager eval img/s | '
          'torch.compile eval img/s | ratio JAX/torch.compile (eval) | '
          'compile s JAX / torch.compile (train) | '
          f'JAX / torch eager / torch.compile {memory} |')
  lines = [head, '|' + '---|' * 13]
  for res in results:
    b, be = res['best'], res['best_eval']
    j, t, c = b['jax'], b.get('torch'), b.get('torch_compile')
    mem = ' / '.join('-' if r is None else f"{r['peak_memory_mib']:.0f}" for r in (j, t, c))
    lines.append(
        f"| {res['name']}: {res['title']} | {j['params']:,} | {_img(j)} | {_img(t)} | "
        f"{_img(c)} | "
        f"{_ratio(j['train_images_per_s'], t and t['train_images_per_s'])} | "
        f"{_ratio(j['train_images_per_s'], c and c['train_images_per_s'])} | "
        f"{be['jax']:.1f} | "
        f"{'-' if t is None else format(be['torch'], '.1f')} | "
        f"{'failed' if c is None else format(be['torch_compile'], '.1f')} | "
        f"{_ratio(be['jax'], be.get('torch_compile'))} | "
        f"{j['compile_train_s']:.1f} / "
        f"{'-' if c is None else format(c['compile_train_s'], '.1f')} | {mem} |")
  return '\n'.join(lines)


def _format_two(results: list[dict]) -> str:
  """JAX vs torch eager (the table without --torch_compile)."""
  memory = _memory_label(results)
  head = ('| case | params (JAX = torch) | JAX train img/s | torch train img/s | '
          'ratio JAX/torch (train) | JAX eval img/s | torch eval img/s | '
          f'ratio (eval) | JAX / torch train CPU s/step | JAX / torch {memory} |')
  lines = [head, '|' + '---|' * 10]
  for res in results:
    j, t = res['best']['jax'], res['best']['torch']
    je, te = res['best_eval']['jax'], res['best_eval']['torch']
    lines.append(
        f"| {res['name']}: {res['title']} | {j['params']:,} | "
        f"{j['train_images_per_s']:.1f} ({j['train_step_ms']:.0f} ms) | "
        f"{t['train_images_per_s']:.1f} ({t['train_step_ms']:.0f} ms) | "
        f"{j['train_images_per_s'] / t['train_images_per_s']:.2f} | "
        f"{je:.1f} | {te:.1f} | {je / te:.2f} | "
        f"{j['train_cpu_s_per_step']:.2f} / {t['train_cpu_s_per_step']:.2f} | "
        f"{j['peak_memory_mib']:.0f} / {t['peak_memory_mib']:.0f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  unknown = set(_CASES.value) - set(CASES)
  if unknown:
    raise app.UsageError(f'unknown cases {sorted(unknown)}; choose from {sorted(CASES)}')
  results = [run_case(name) for name in _CASES.value]
  print()
  best = results[0]['best']
  print(f'threads: JAX default CPU pool and torch.set_num_threads({results[0]["threads"]})'
        f'; {best["jax"]["framework"]} vs '
        f'{best["torch"]["framework"]}; best of {_REPEATS.value} run(s)')
  if _DEVICE.value or _TORCH_COMPILE.value or _DTYPE.value != 'float32':
    print(f'devices: JAX {best["jax"]["devices"]}; torch {best["torch"]["devices"]}; '
          f'dtype {_DTYPE.value}; torch memory format '
          f'{"channels_last" if _CHANNELS_LAST.value else "NCHW"}'
          + (f'; torch.compile mode {_TORCH_COMPILE_MODE.value} (compile s: the warm-up '
             "steps' excess over the steady step time)" if _TORCH_COMPILE.value else ''))
  print(format_results(results))
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
  app.run(main)
