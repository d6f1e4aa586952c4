r"""JAX (the project's real train step) vs the PyTorch reference, side by side.

Each measurement runs in a fresh subprocess (benchmarks/train_step.py --json, then
benchmarks/torch_reference.py --json), one after the other, so the two never compete for
the cores, and peak RSS is per framework. JAX runs its default CPU thread pool (all
cores available to the process); torch gets `torch.set_num_threads(<the same count>)`.
Both run float32, the same architecture (ResNet v1.5, the layout torchvision uses) and
the same head; the runner checks that the parameter counts are equal.

Cases:
  a: configs/default.py, ResNet-50 v1.5 + SPP (1,4,8) + head (512,512), 224x224, batch 32
  b: configs/phantom.py, ResNet-18 v1.5 + SPP (1,4,8) + head (128,128), 64x64, batch 32

  python benchmarks/compare_torch.py --cases=a,b --repeats=2

With --repeats > 1 the frameworks alternate (J T J T ...) so slow drifts of a shared
machine's load hit both; the table reports the best (highest images/s) run of each, and
every run's numbers and the load average are printed as they come.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    'a': dict(title='ResNet-50 v1.5 + SPP, 224x224, batch 32',
              args=['--config=configs/default.py', '--config.model.variant=v1.5',
                    '--batch_size=32', '--image_size=224']),
    'b': dict(title='ResNet-18 v1.5 + SPP (phantom), 64x64, batch 32',
              args=['--config=configs/phantom.py', '--batch_size=32', '--image_size=64']),
}


def _load() -> str:
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def _run(cmd: list[str]) -> dict:
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                       f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1])


def run_case(name: str) -> dict:
  case = CASES[name]
  steps, warmup = ((_STEPS_A.value, _WARMUP_A.value) if name == 'a'
                   else (_STEPS_B.value, _WARMUP_B.value))
  common = case['args'] + [f'--steps={steps}', f'--warmup={warmup}', '--json']
  threads = len(os.sched_getaffinity(0))
  runs = {'jax': [], 'torch': []}
  for rep in range(_REPEATS.value):
    for fw, cmd in (
        ('jax', [sys.executable, _JAX_SCRIPT.value, *common,
                 '--config.model.compute_dtype=float32']),
        ('torch', [sys.executable, 'benchmarks/torch_reference.py', *common,
                   f'--threads={threads}'])):
      before = _load()
      r = _run(cmd)
      r['load_before'], r['load_after'] = before, _load()
      runs[fw].append(r)
      print(f'[{name} run {rep + 1}/{_REPEATS.value}] {fw:5s} train '
            f'{r["train_step_ms"]:8.1f} ms/step {r["train_images_per_s"]:7.1f} img/s, '
            f'eval {r["eval_images_per_s"]:7.1f} img/s, CPU {r["train_cpu_s_per_step"]:.2f} '
            f's/step  (load {before} -> '
            f'{r["load_after"]})', flush=True)
  best = {fw: max(rs, key=lambda r: r['train_images_per_s']) for fw, rs in runs.items()}
  best_eval = {fw: max(r['eval_images_per_s'] for r in rs) for fw, rs in runs.items()}
  if best['jax']['params'] != best['torch']['params']:
    raise AssertionError(f'parameter counts differ: jax {best["jax"]["params"]:,} vs '
                         f'torch {best["torch"]["params"]:,}')
  return dict(name=name, title=case['title'], runs=runs, best=best, best_eval=best_eval,
              threads=threads)


def format_results(results: list[dict]) -> str:
  head = ('| case | params (JAX = torch) | JAX train img/s | torch train img/s | '
          'ratio JAX/torch (train) | JAX eval img/s | torch eval img/s | '
          'ratio (eval) | JAX / torch train CPU s/step | JAX / torch peak RSS MiB |')
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
  print(f'threads: JAX default CPU pool and torch.set_num_threads({results[0]["threads"]})'
        f'; {results[0]["best"]["jax"]["framework"]} vs '
        f'{results[0]["best"]["torch"]["framework"]}; best of {_REPEATS.value} run(s)')
  print(format_results(results))
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
  app.run(main)
