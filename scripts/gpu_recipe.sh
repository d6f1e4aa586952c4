#!/usr/bin/env bash
# The GPU runs behind docs/results.md's "A from-scratch recipe" and "Cross-dataset"
# sections, as one prepared script for a single ~10-minute call on a lent GPU:
#   1. looks for cached ImageNet ResNet-50 weights (torch hub, timm/Hugging Face, Keras);
#   2. the recipe (configs/scratch.py, with the head crop since 2026-11-30), its `plain`
#      preset (the better at 64 px on the CPU; with `ema,ensemble,mixup`: the recommended model) and its lever
#      ablation (no_crop first), trained on Bhuvaji's set (binarized), each selected on
#      its own validation split;
#   3. the paper's setting without ImageNet weights on the same split, as the baseline,
#      and the recipe on Bhuvaji's set pooled with the figshare tumors;
#   4. the recipe, the recommended model and the paper's setting trained on the Bohaju sample;
#   5. the cross-dataset matrix of every run (evaluate_external at each run's threshold);
#   6. the paper's learning-rate / batch-size / epoch sweeps (Figs 7-9), reduced, as time
#      allows;
#   7. self-supervised (BYOL) pretraining as a stand-in for ImageNet weights
#      (configs/ssl.py), then the recipe fine-tuned from it: the `+SSL` row. Alone, with
#      the recipe from random init beside it and both in the cross-dataset matrix (estimated, not
#      measured: about 3 minutes of H200 time):
#        STAGES='^(recipe|ssl-pretrain|recipe-ssl)$' BUDGET=240 CROSS_SECONDS=45 bash scripts/gpu_recipe.sh
# Every stage runs under `timeout` against one deadline; results land in $OUT as they
# come (results.tgz: every run's config, metrics, selection and the logs, no checkpoints).
#
# Prepare, in the project root on the development machine:
#   bash ../shared/tools/gpu_bundle.sh sartaj bohaju      # .gpu/whl + .gpu/data
#   python scripts/figshare_to_jpeg.py ../shared/data/figshare_brain_tumor_subset .gpu/data/figshare_jpg
# then call the device tool with carry [".gpu"] and the command
#   BUDGET=560 bash scripts/gpu_recipe.sh
set -u
OUT=${OUT:-/tmp/gpu_recipe_out}
mkdir -p "$OUT/logs"
if [ -z "${NO_WHEELS:-}" ]; then  # the GPU image lacks grain, TFDS, ml-collections, ...
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl \
    > "$OUT/logs/pip.log" 2>&1 || { echo "pip install failed"; tail "$OUT/logs/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
export SPP_RESNET_COMPILATION_CACHE=/tmp/jax_cache TFDS_DATA_DIR=/tmp/tfds
D=$PWD/.gpu/data
EXTRA=${EXTRA:-}  # overrides for every run, e.g. a tiny CPU smoke test of this script
RUNS=$PWD/runs/gpu
deadline=$((SECONDS + ${BUDGET:-540}))
train_deadline=$((deadline - ${CROSS_SECONDS:-100}))  # the cross-dataset matrix always runs

stage() {  # NAME SECONDS COMMAND...: runs COMMAND under the smaller of SECONDS and what is left
  local name=$1 limit=$2 left=$((${STAGE_DEADLINE:-$train_deadline} - SECONDS)); shift 2
  # STAGES (an extended regex) picks stages, e.g. STAGES='^(sweep-|recipe-all)' ; cross always runs.
  if [[ -n ${STAGES:-} && $name != cross && ! $name =~ $STAGES ]]; then return 1; fi
  if (( left < 25 )); then echo "skip $name (deadline)" | tee -a "$OUT/stages.txt"; return 1; fi
  (( limit > left )) && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc ${limit}s-limit $((SECONDS - t0))s" | tee -a "$OUT/stages.txt"
  (( rc == 0 )) && echo "$name" >> "$OUT/finished.txt"
  pack
  return $rc
}

pack() {  # results so far -> $OUT/results.tgz (the device tool returns at most 8 files)
  tar czf "$OUT/results.tgz" --exclude='*checkpoint*' --exclude='tensorboard' \
    -C "$(dirname "$RUNS")" "$(basename "$RUNS")" -C "$OUT" logs 2>/dev/null
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())'
  date -u; } > "$OUT/env.txt" 2>&1

# 1. ImageNet weights anywhere on the image?
{ for d in ~/.cache/torch/hub/checkpoints ~/.cache/huggingface ~/.cache/timm ~/.keras/models \
           ~/.cache /usr/share/torch; do echo "== $d"; ls -la "$d" 2>&1 | head -20; done
  echo "== find / (names with resnet, or .pth/.safetensors/.h5/.pt files over 20 MB)"
  timeout 20 find / -xdev \( -path /proc -o -path /sys \) -prune -o \( -iname '*resnet*' \
    -o -iname '*.pth' -o -iname '*.safetensors' -o -iname '*.h5' -o -iname '*.pt' \) \
    -size +20M -print 2>/dev/null | head -50
} > "$OUT/imagenet_weights_search.txt" 2>&1

SARTAJ="--config.data.dataset=brain_tumor_mri/binary --config.data.manual_dir=$D/sartaj"
BOHAJU="--config.data.dataset=brain_tumor --config.data.manual_dir=$D/bohaju"
GPU="--config.model.compute_dtype=bfloat16"
PAPER="--config=configs/default.py --config.pretrained.source= --config.data.split.protocol=grouped"
recipe() {  # NAME LEVERS [OVERRIDES...]: the recipe with LEVERS off, on Bhuvaji's set
  local name=$1 levers=$2; shift 2
  stage "$name" "${LIMIT:-90}" python3 main.py --config=configs/scratch.py${levers:+:$levers} \
    --workdir=$RUNS/$name $SARTAJ $GPU "$@" $EXTRA
}

# 2-4, most important first: the recipe, the paper's setting without ImageNet weights on
# the same grouped split (the baseline), the levers off one at a time, pooled data, and
# both trained on the Bohaju sample.
recipe recipe ''
rc=$(grep '^recipe rc=' "$OUT/stages.txt" 2>/dev/null | sed 's/.*rc=\([0-9]*\).*/\1/')
if [[ -n $rc && $rc != 0 && $rc != 124 ]]; then  # a broken setup: return at once, with the log
  tail -n 40 "$OUT/logs/recipe.log"; exit 1
fi
stage paper 120 python3 main.py $PAPER --workdir=$RUNS/paper $SARTAJ $EXTRA
# The recommended model: `plain` (the better of the two at 64 px on the CPU) with mixup
# and the moving average of its weights, as an ensemble of 3 seeds (each member is also
# a single run of the matrix below). 8 epochs, as the README recommends: trained 40, it
# ranked Bohaju worse (docs/results.md, "How long to train").
LIMIT=240 recipe recipe-plain plain,ema,ensemble,mixup --config.num_epochs=8
for lever in no_crop paper_augment no_class_weights gap no_label_smoothing; do
  recipe "recipe-$lever" $lever
done
# Bhuvaji's set plus the figshare tumors (Bohaju held out).
recipe recipe-mix '' --config.data.dataset=mix \
  --config.data.mix="brain_tumor_mri/binary=$D/sartaj;image_folder=$D/figshare_jpg"
for lever in resnet50 size224 sgd; do
  recipe "recipe-$lever" $lever
done
# Every labelled source in training (nothing left to test on but the hidden sets), and
# the recipe selected on Bohaju as external validation (Bohaju then is not a test set).
recipe recipe-all-mix '' --config.data.dataset=mix \
  --config.data.mix="brain_tumor_mri/binary=$D/sartaj;brain_tumor=$D/bohaju;image_folder=$D/figshare_jpg"
recipe recipe-extval '' --config.data.dataset=mix --config.data.split.val_fraction=0 \
  --config.data.mix="brain_tumor_mri/binary=$D/sartaj;image_folder=$D/figshare_jpg;brain_tumor=$D/bohaju" \
  --config.data.split.val_dataset=brain_tumor
stage bohaju-recipe 60 python3 main.py --config=configs/scratch.py --workdir=$RUNS/bohaju-recipe $BOHAJU $GPU $EXTRA
stage bohaju-plain 200 python3 main.py --config=configs/scratch.py:plain,ema,ensemble,mixup \
  --workdir=$RUNS/bohaju-plain $BOHAJU $GPU $EXTRA
stage bohaju-paper 80 python3 main.py $PAPER --workdir=$RUNS/bohaju-paper $BOHAJU $EXTRA
# 7. BYOL on every image outside the recipe's validation and test splits (its own data
# config) plus the figshare tumors, the Bohaju slices held out by content; then the
# recipe from that backbone (recipe-ssl; the matrix below evaluates it on Bohaju).
stage ssl-pretrain 150 python3 -m spp_resnet.training.ssl --config=configs/ssl.py \
  --workdir=$RUNS/ssl $SARTAJ $GPU --config.ssl.extra="image_folder=$D/figshare_jpg" \
  --config.ssl.holdout="brain_tumor=$D/bohaju" $EXTRA \
  && recipe recipe-ssl ssl --config.pretrained.path=$RUNS/ssl

# 5. Cross-dataset matrix of every finished run, and of each finished ensemble member.
runs=$(for n in $(cat "$OUT/finished.txt" 2>/dev/null); do
  [ -f "$RUNS/$n/config.json" ] && printf '%s=%s,' "$n" "$RUNS/$n"
  for m in "$RUNS/$n"/members/seed_*; do
    [ -f "$m/selection.json" ] && printf '%s=%s,' "$n-$(basename "$m")" "$m"; done; done)
STAGE_DEADLINE=$deadline stage cross 300 python3 -m spp_resnet.experiments.cross_dataset --runs="${runs%,}" \
  --datasets="bhuvaji=brain_tumor_mri/binary:$D/sartaj,bohaju=brain_tumor:$D/bohaju,figshare=image_folder:$D/figshare_jpg" \
  --refit_threshold=10 $(b=$(grep -xE 'paper|bohaju-paper' "$OUT/finished.txt" 2>/dev/null | paste -sd,); \
                         [ -n "$b" ] && echo --baseline=$b) \
  --out=$RUNS/cross_dataset

# 6. The paper's sweeps (Figs 7-9), reduced, if time is left: ResNet-18 at 128 px on the
# Bohaju sample.
REDUCED="--config.model.backbone=resnet18 --config.model.variant=v1.5 --config.data.image_size=128 --config.model.spp_levels=(1,2,4) --config.pretrained.source= --config.data.split.protocol=grouped --config.data.split.num_folds=0 $GPU"
for sweep in learning_rate batch_size epochs; do
  STAGE_DEADLINE=$deadline stage "sweep-$sweep" 120 python3 -m spp_resnet.experiments.sweep \
    --config=configs/sweeps/$sweep.py --workdir=$RUNS/sweep-$sweep --folds=2 $BOHAJU $REDUCED $EXTRA
done

pack
rm -rf "$OUT/logs"  # they are in results.tgz
cat "$OUT/stages.txt"; ls -la "$OUT"
