#!/usr/bin/env bash
# The speed items of issue 11 on a lent GPU, as one prepared script for a single
# ~10-minute call of the device tool. Stages (each under `timeout`, against one deadline,
# in this order; those the deadline leaves no time for are skipped and say so):
#   a. env: nvidia-smi, jax / flax / torch versions and devices, date -u.
#   b. jax-*: the project's real jitted train + eval step (benchmarks/train_step.py --json:
#      compile time apart, steps/s, images/s, peak device memory) on synthetic
#      device-resident data, configs/default.py with model.variant=v1.5 (torchvision's
#      layout, so that it matches the torch reference), 224 px, 50 timed steps:
#      fp32 batch 32 (jax-fp32-b32), bf16 batch 32 (jax-bf16-b32), bf16 batch 256
#      (jax-bf16-b256). bf16 = compute_dtype=bfloat16: float32 parameters, bf16 compute.
#   c. torch-*: the same network, step and data in PyTorch (benchmarks/torch_reference.py
#      --json, CUDA, TF32 and cudnn.benchmark on, as XLA's defaults): eager fp32 b32
#      (torch-eager-fp32-b32), eager bf16 b256 channels_last (torch-eager-bf16-b256),
#      torch.compile bf16 b256 channels_last (torch-compile-bf16-b256; its compile time,
#      the warm-up steps' excess over the steady step time, reported apart).
#      summary.json's `ratios` divides JAX images/s by torch's for the matching cases.
#   d. paper-cold, paper-warm: the paper's training run end to end (configs/default.py:
#      ResNet-50 v1 + SPP, 224 px, batch 32, 25 epochs, fp32, the paper's split; no
#      ImageNet weights exist there, so pretrained.source='') on the Bohaju sample the
#      bundle carries (316 images: 256 train, 60 test), first with an empty JAX
#      compilation cache (on a fresh machine the TFDS dir is empty too, so the cold run
#      also prepares the dataset), then warm; wall time of each whole
#      command, and the run's own timing.json (seconds per phase: data, init, restore,
#      compile, train, eval, checkpoint, test) and metrics.jsonl.
#   e. dtype-*: the same run with compute_dtype=bfloat16 (seed 0 and 1) and fp32 seed 1
#      (fp32 seed 0 is paper-warm; paper-cold vs paper-warm shows the GPU's own run-to-run
#      noise): summary.json's `dtype_table` has the final test accuracy / ROC AUC per
#      dtype and seed (config.seed: the model's init, dropout and augmentation; the
#      split stays fixed), to show whether bf16 changes results beyond seed noise.
#      The seed is an argument of the jitted init and train step, so another seed reuses
#      the compiled steps; each dtype's first run compiles its own.
#   f. profile-bf16-b256: the paper run in bf16 at batch 256 (1 step an epoch on the
#      sample) with config.profile_steps=(20,22): a jax.profiler trace of 3 train steps
#      and, since each of them ends an epoch, 2 test evaluations -> profile.tgz
#      (TensorBoard's profile tab, or Perfetto).
#   g. ablation (+ ablation-report): Table 2 at the paper's setting in one process
#      (spp_resnet.experiments.ablation, configs/ablation_gpu.py, --protocols=paper
#      --folds=3 unless ABLATION_ARGS says otherwise); the TL rows read "not run (no
#      ImageNet weights available)" (SPP_RESNET_OFFLINE=1: no download is tried); its
#      wall time. `ablation-report` (--report_only, on time reserved for it) rebuilds
#      results.md/.json from the finished runs if the deadline cut the ablation short.
# Not all of it fits one 540-s call: a-g run in order and the rest is skipped. STAGES (an
# extended regex on the stage names above) picks stages for another call, e.g.
#   STAGES='^(env|paper-|dtype-)' BUDGET=540 bash scripts/gpu_speed.sh
#
# Outputs (the device tool returns at most 8 files from $OUT, so everything else is
# packed): $OUT/env.txt, $OUT/stages.txt (one line per stage: rc, limit, wall seconds),
# $OUT/summary.json (every benchmark's JSON, the JAX/torch ratios, each training run's
# wall time, timing.json and final test metrics, the dtype table, the ablation's table),
# $OUT/results.tgz (logs/, json/ (benchmark lines), runs/NAME.{timing.json,metrics.jsonl,
# config.json}, stages.jsonl, the ablation's results.md/.json; no checkpoints) and
# $OUT/profile.tgz. Both are refreshed after every stage, so a call cut short keeps
# what finished.
#
# Prepare, in the project root on the development machine:
#   bash ../shared/tools/gpu_bundle.sh sartaj bohaju      # .gpu/whl + .gpu/data
# then call the device tool with carry [".gpu"] and the command
#   BUDGET=540 bash scripts/gpu_speed.sh
# (timeout_s 600: BUDGET leaves time for the wheel install and the packing).
#
# Smoke-tested on a CPU only (not yet on a GPU), with tiny settings:
#   SMOKE=1 NO_WHEELS=1 BUDGET=1800 OUT=/tmp/gpu_speed_smoke WORK=/tmp/gpu_speed_smoke_work \
#   DATA=../shared/data/bohaju_brain_tumor_sample TFDS=/tmp/gpu_speed_smoke_tfds \
#   CACHE=/tmp/gpu_speed_smoke_cache \
#   EXTRA='--config.model.backbone=resnet18 --config.model.spp_levels=(1,2)' \
#   bash scripts/gpu_speed.sh
# Knobs (environment): OUT, WORK (scratch: runs, logs; default a new /tmp dir), DATA (the
# Bohaju folder, default .gpu/data/bohaju), TFDS (TFDS data_dir, default /tmp/tfds),
# CACHE (JAX compilation cache, default /tmp/jax_cache; emptied before paper-cold),
# BUDGET (seconds, default 540), STAGES (env always runs), NO_WHEELS (skip the wheel
# install), TORCH_DEVICE (default cuda; SMOKE: cpu), EXTRA
# (overrides for every python command that takes --config), SMOKE=1 (64 px, 2 steps,
# 2 epochs, small batches, a tiny profile, CPU allowed) or each of IMG STEPS WARMUP
# EVAL_STEPS BATCH BIG_BATCH TRAIN_OVERRIDES PROFILE_STEPS, ABLATION_ARGS.
# Without SMOKE the script stops after `env` unless JAX's default backend is the GPU
# (a silent CPU fallback would spend the whole budget), and torch runs --device=cuda.
set -u
OUT=${OUT:-/tmp/gpu_speed_out}
WORK=${WORK:-$(mktemp -d /tmp/gpu_speed.XXXXXX)}  # not $OUT: at most 8 files come back
mkdir -p "$OUT" "$WORK/logs" "$WORK/json" "$WORK/runs_out"
rm -f "$OUT"/{env.txt,stages.txt,summary.json,results.tgz,profile.tgz}
if [ -z "${NO_WHEELS:-}" ]; then  # the GPU image lacks grain, TFDS, ml-collections, ...
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl \
    > "$WORK/logs/pip.log" 2>&1 || { echo "pip install failed"; tail "$WORK/logs/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 SPP_RESNET_OFFLINE=1
DATA=${DATA:-$PWD/.gpu/data/bohaju}
DATA=$(cd "$DATA" && pwd) || { echo "no data folder $DATA"; exit 1; }
TFDS=${TFDS:-/tmp/tfds}
CACHE=${CACHE:-/tmp/jax_cache}
export SPP_RESNET_COMPILATION_CACHE=$CACHE TFDS_DATA_DIR=$TFDS
# torch.compile compiles cold every call, as the JAX benchmarks (no persistent cache).
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor_cache TRITON_CACHE_DIR=$WORK/triton_cache
EXTRA=${EXTRA:-}  # overrides for every run, e.g. a tiny CPU smoke test of this script
RUNS=$WORK/runs
if [ -n "${SMOKE:-}" ]; then  # a tiny CPU smoke test of every command line
  IMG=${IMG:-64} STEPS=${STEPS:-2} WARMUP=${WARMUP:-3} EVAL_STEPS=${EVAL_STEPS:-1}
  BATCH=${BATCH:-4} BIG_BATCH=${BIG_BATCH:-8} PROFILE_STEPS=${PROFILE_STEPS:-(2,3)}
  TRAIN_OVERRIDES=${TRAIN_OVERRIDES:---config.num_epochs=2 --config.data.image_size=$IMG --config.eval_batch_size=16}
  ABLATION_ARGS=${ABLATION_ARGS:---protocols=paper --folds=2 --keep_checkpoints=none}
  TORCH_DEVICE=${TORCH_DEVICE:-cpu}
fi
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
IMG=${IMG:-224} STEPS=${STEPS:-50} WARMUP=${WARMUP:-5} EVAL_STEPS=${EVAL_STEPS:-20}
BATCH=${BATCH:-32} BIG_BATCH=${BIG_BATCH:-256} PROFILE_STEPS=${PROFILE_STEPS:-(20,22)}
TRAIN_OVERRIDES=${TRAIN_OVERRIDES:-}  # for the training runs (d-g), e.g. fewer epochs
ABLATION_ARGS=${ABLATION_ARGS:---protocols=paper --folds=3 --keep_checkpoints=none}
deadline=$((SECONDS + ${BUDGET:-540}))
main_deadline=$((deadline - ${REPORT_SECONDS:-40}))  # kept for ablation-report and packing

now() { date +%s.%N; }
stage() {  # NAME SECONDS COMMAND...: runs COMMAND under the smaller of SECONDS and what is left
  local name=$1 limit=$2 left=$((${STAGE_DEADLINE:-$main_deadline} - SECONDS)); shift 2
  if [[ -n ${STAGES:-} && $name != env && ! $name =~ $STAGES ]]; then return 1; fi
  if (( left < 25 )); then echo "skip $name (deadline)" | tee -a "$OUT/stages.txt"; return 1; fi
  (( limit > left )) && limit=$left
  local t0; t0=$(now)
  timeout -k 10 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  local wall; wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
  echo "$name rc=$rc ${limit}s-limit ${wall}s" | tee -a "$OUT/stages.txt"
  printf '{"stage": "%s", "rc": %d, "limit_s": %d, "wall_s": %s}\n' "$name" "$rc" "$limit" \
    "$wall" >> "$WORK/stages.jsonl"
  (( rc != 0 )) && tail -n 5 "$WORK/logs/$name.log"
  return $rc
}

bench() {  # NAME SECONDS COMMAND...: a stage whose last JSON line goes to json/NAME.json
  local name=$1 rc
  stage "$@"; rc=$?
  grep '^{' "$WORK/logs/$name.log" 2>/dev/null | tail -n 1 > "$WORK/json/$name.json"
  [ -s "$WORK/json/$name.json" ] || rm -f "$WORK/json/$name.json"
  summarize; pack
  return $rc
}

train_run() {  # NAME SECONDS ARGS...: main.py, the paper's setting on the Bohaju sample
  local name=$1 limit=$2 rc; shift 2
  stage "$name" "$limit" python3 main.py $PAPER --workdir="$RUNS/$name" "$@" \
    $TRAIN_OVERRIDES $EXTRA; rc=$?
  for f in timing.json metrics.jsonl config.json; do
    [ -f "$RUNS/$name/$f" ] && cp "$RUNS/$name/$f" "$WORK/runs_out/$name.$f"
  done
  summarize; pack
  return $rc
}

pack() {  # results so far -> $OUT/results.tgz (no checkpoints, no traces)
  local abl=()
  [ -f "$RUNS/ablation/results.md" ] && abl=(-C "$RUNS" ablation/results.md ablation/results.json)
  tar czf "$OUT/results.tgz" -C "$WORK" logs json runs_out $(cd "$WORK" && ls stages.jsonl 2>/dev/null) \
    "${abl[@]}" 2>/dev/null
}

summarize() {  # $OUT/summary.json from what has finished
  python3 - "$WORK" "$OUT/summary.json" <<'PY' > /dev/null 2>> "$WORK/logs/summarize.log"
import glob, json, os, sys
work, out = sys.argv[1:3]

def load(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None

stages = []
for line in open(os.path.join(work, 'stages.jsonl')) if os.path.exists(
    os.path.join(work, 'stages.jsonl')) else []:
  stages.append(json.loads(line))
wall = {s['stage']: s['wall_s'] for s in stages}
rc = {s['stage']: s['rc'] for s in stages}
keys = ('framework', 'devices', 'dtype', 'batch_size', 'image_size', 'params', 'compiled',
        'channels_last', 'compile_train_s', 'compile_eval_s', 'first_step_s',
        'train_step_ms', 'train_images_per_s', 'eval_images_per_s', 'peak_memory_mib',
        'peak_memory_kind', 'recompiles_in_timed_loop', 'implicit_transfers', 'final_loss',
        'error')
bench = {}
for path in sorted(glob.glob(os.path.join(work, 'json', '*.json'))):
  r = load(path) or {}
  bench[os.path.basename(path)[:-5]] = {k: r[k] for k in keys if k in r}

def ratio(a, b, key='train_images_per_s'):
  a, b = bench.get(a, {}).get(key), bench.get(b, {}).get(key)
  return round(a / b, 3) if a and b else None

ratios = {f'{a} / {b} ({k.split("_")[0]})': ratio(a, b, k)
          for a, b in (('jax-fp32-b32', 'torch-eager-fp32-b32'),
                       ('jax-bf16-b256', 'torch-eager-bf16-b256'),
                       ('jax-bf16-b256', 'torch-compile-bf16-b256'))
          for k in ('train_images_per_s', 'eval_images_per_s')}

runs = {}
for path in sorted(glob.glob(os.path.join(work, 'runs_out', '*.config.json'))):
  name = os.path.basename(path)[:-len('.config.json')]
  config = load(path) or {}
  rows = []
  mpath = os.path.join(work, 'runs_out', f'{name}.metrics.jsonl')
  if os.path.exists(mpath):
    for line in open(mpath):
      try:
        rows.append(json.loads(line))
      except ValueError:
        pass
  test = [r for r in rows if 'test/accuracy' in r]
  final = test[-1] if test else {}
  runs[name] = {
      'rc': rc.get(name), 'command_wall_s': wall.get(name),
      'dtype': config.get('model', {}).get('compute_dtype'), 'seed': config.get('seed'),
      'batch_size': config.get('batch_size'), 'epochs_done': final.get('epoch'),
      'test_accuracy': final.get('test/accuracy'), 'test_roc_auc': final.get('test/roc_auc'),
      'test_num_examples': final.get('test/num_examples'),
      'timing': load(os.path.join(work, 'runs_out', f'{name}.timing.json')),
  }

# fp32 seed 0 is paper-warm (paper-cold if it alone finished); the other of the two is
# the same config again: its difference is the GPU's run-to-run noise.
same_config = {k: {m: runs[k][m] for m in ('test_accuracy', 'test_roc_auc')}
               for k in ('paper-cold', 'paper-warm') if k in runs}
seed0 = 'paper-warm' if runs.get('paper-warm', {}).get('rc') == 0 else 'paper-cold'
dtype_table = []
for name, r in runs.items():
  if ((name == seed0 or name.startswith('dtype-')) and r['rc'] == 0
      and r['test_accuracy'] is not None):
    dtype_table.append({'run': name, 'dtype': r['dtype'], 'seed': r['seed'],
                        'test_accuracy': r['test_accuracy'],
                        'test_roc_auc': r['test_roc_auc']})
by_dtype = {}
for row in dtype_table:
  by_dtype.setdefault(row['dtype'], []).append(row)
dtype_means = {d: {'runs': len(rs),
                   'test_accuracy_mean': sum(r['test_accuracy'] for r in rs) / len(rs),
                   'test_roc_auc_mean': (sum(r['test_roc_auc'] for r in rs) / len(rs)
                                         if all(r['test_roc_auc'] is not None for r in rs)
                                         else None)}
               for d, rs in by_dtype.items()}

ablation = None
res = load(os.path.join(work, 'runs', 'ablation', 'results.json'))
if res:
  ablation = {'stage_wall_s': wall.get('ablation'), 'train_s_total': res.get('train_s_total'),
              'not_run': res.get('not_run'), 'protocols': {}}
  for p, pj in res.get('protocols', {}).items():
    ablation['protocols'][p] = {
        v: {k: vj.get(k) for k in ('status', 'metrics', 'wall_s') if k in vj}
        for v, vj in pj.get('variants', {}).items()}

env = None
if os.path.exists(os.path.join(os.path.dirname(out), 'env.txt')):
  env = open(os.path.join(os.path.dirname(out), 'env.txt')).read()
summary = {'env': env, 'stages': stages, 'bench': bench, 'ratios': ratios, 'runs': runs,
           'dtype_table': dtype_table, 'dtype_means': dtype_means,
           'fp32_seed0_cold_vs_warm': same_config, 'ablation': ablation}
with open(out, 'w') as f:
  json.dump(summary, f, indent=1, default=str)
PY
}

# a. The machine and the versions.
stage env 60 bash -c '
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvidia-smi
  python3 -c "import jax, flax; print(\"jax\", jax.__version__, \"flax\", flax.__version__, jax.devices()); print(\"jax_backend\", jax.default_backend())"
  python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"no cuda\")"
  python3 --version; nproc; date -u'
cp "$WORK/logs/env.log" "$OUT/env.txt" 2>/dev/null
if [[ -z ${SMOKE:-} ]] && ! grep -q '^jax_backend gpu' "$OUT/env.txt"; then
  echo "JAX's default backend is not the GPU: stopping (env.txt below)"; cat "$OUT/env.txt"
  summarize; pack; exit 1
fi

# b. The project's JAX train step (ResNet-50 v1.5 + SPP, synthetic data on the device).
JBENCH="benchmarks/train_step.py --config=configs/default.py --config.model.variant=v1.5 --image_size=$IMG --steps=$STEPS --warmup=$WARMUP --eval_steps=$EVAL_STEPS --json"
bench jax-fp32-b32 120 python3 $JBENCH --batch_size=$BATCH --compute_dtype=float32 $EXTRA
bench jax-bf16-b32 120 python3 $JBENCH --batch_size=$BATCH --compute_dtype=bfloat16 $EXTRA
bench jax-bf16-b256 150 python3 $JBENCH --batch_size=$BIG_BATCH --compute_dtype=bfloat16 $EXTRA

# c. The PyTorch reference of the same step: eager, then torch.compile.
TBENCH="benchmarks/torch_reference.py --device=$TORCH_DEVICE --config=configs/default.py --config.model.variant=v1.5 --image_size=$IMG --steps=$STEPS --warmup=$WARMUP --eval_steps=$EVAL_STEPS --json"
bench torch-eager-fp32-b32 90 python3 $TBENCH --batch_size=$BATCH --dtype=float32 $EXTRA
bench torch-eager-bf16-b256 90 python3 $TBENCH --batch_size=$BIG_BATCH --dtype=bfloat16 --channels_last $EXTRA
bench torch-compile-bf16-b256 240 python3 $TBENCH --batch_size=$BIG_BATCH --dtype=bfloat16 --channels_last --compile $EXTRA

# d. The paper's training run end to end: cold (empty compilation cache), then warm.
PAPER="--config=configs/default.py --config.pretrained.source= --config.data.dataset=brain_tumor --config.data.manual_dir=$DATA --config.data.data_dir=$TFDS"
if [[ -z ${STAGES:-} || paper-cold =~ $STAGES ]]; then rm -rf "$CACHE"; fi
train_run paper-cold 180
train_run paper-warm 150

# e. bf16 vs fp32 beyond seed noise (fp32 seed 0 = paper-warm).
BF16="--config.model.compute_dtype=bfloat16"
train_run dtype-bf16-seed0 150 $BF16 --config.seed=0
train_run dtype-fp32-seed1 150 --config.seed=1
train_run dtype-bf16-seed1 150 $BF16 --config.seed=1

# f. A profile of 3 train steps of the bf16 batch-256 run.
train_run profile-bf16-b256 150 $BF16 --config.batch_size=$BIG_BATCH \
  "--config.profile_steps=$PROFILE_STEPS"
if [ -d "$RUNS/profile-bf16-b256/profile" ]; then
  tar czf "$OUT/profile.tgz" -C "$RUNS/profile-bf16-b256" profile
  if (( $(stat -c %s "$OUT/profile.tgz") > 15000000 )); then  # the device tool's 16 MiB a file
    echo "profile.tgz over 15 MB: left out" | tee -a "$OUT/stages.txt"; rm -f "$OUT/profile.tgz"
  fi
fi

# g. Table 2 at the paper's setting, in one process.
ABLATION="-m spp_resnet.experiments.ablation --config=configs/ablation_gpu.py --workdir=$RUNS/ablation --config.data.dataset=brain_tumor --config.data.manual_dir=$DATA --config.data.data_dir=$TFDS"
stage ablation 600 python3 $ABLATION "--title=Bohaju sample, paper setting (GPU)" \
  $ABLATION_ARGS $TRAIN_OVERRIDES $EXTRA
if [[ $? != 0 && -d $RUNS/ablation/runs ]]; then  # cut short: the table of what finished
  STAGE_DEADLINE=$deadline stage ablation-report 60 python3 $ABLATION \
    "--title=Bohaju sample, paper setting (GPU)" $ABLATION_ARGS $TRAIN_OVERRIDES $EXTRA --report_only
fi
summarize; pack

echo; echo "== stages"; cat "$OUT/stages.txt"
python3 - "$OUT/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print('\nbenchmarks (train img/s, eval img/s, compile s, peak MiB):')
for k, r in s['bench'].items():
  print(f"  {k:26s}", r.get('error', '')[:200] if 'error' in r else
        f"{r.get('train_images_per_s', 0):9.1f} {r.get('eval_images_per_s', 0):9.1f} "
        f"{r.get('compile_train_s', 0):7.1f} {r.get('peak_memory_mib', 0):8.0f}  {r.get('devices')}")
print('ratios:', json.dumps(s['ratios']))
print('runs (wall s, timing, test acc, auc):')
for k, r in s['runs'].items():
  print(f"  {k:20s} rc={r['rc']} {r['command_wall_s']} {r['timing']} {r['test_accuracy']} {r['test_roc_auc']}")
print('dtype means:', json.dumps(s['dtype_means']))
print('fp32 seed 0, cold vs warm run:', json.dumps(s['fp32_seed0_cold_vs_warm']))
if s['ablation']:
  print('ablation:', json.dumps(s['ablation'])[:1500])
PY
ls -la "$OUT"
