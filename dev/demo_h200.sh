#!/usr/bin/env bash
# Device call (one H200): the demo model, continued from earlier weights (DEMO_INIT, default the ablation's
# mixed_sinks run continued 1,655 steps: .devdata/init/demo_a_1655.safetensors) with gsplat's differentiable
# rasterizer and the expression-weighted loss (the corpus's expression masks). Two recipes side by side on the one
# GPU (they differ in --expression-weight); both come back with their held-out evaluation and the quality bar.
#   bash dev/demo_h200.sh                 (carry .whl and .devdata; ~DEMO_END_S seconds)
#   PREP_ONLY=1 bash dev/demo_h200.sh     (corpus + gsplat build only, for a following call on the warm machine)
# Environment: DEMO_END_S (530), DEMO_INIT, W_A / W_B (expression weights, 4 / 10), LR (1e-3), BATCH (16),
# EXTRA_A / EXTRA_B (more train options per recipe, e.g. EXTRA_B="--rest-pairs --difference-weight 40": the
# locality term, docs/TRAINING.md section 3).
set -uo pipefail
source dev/device_env.sh
cd /tmp
W=/tmp/flexrt-demo
mkdir -p "$W"
LOG=$OUT/demo_h200.log
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
END=${DEMO_END_S:-530}
INIT=${DEMO_INIT:-$REPO/.devdata/init/demo_a_1655.safetensors}
CORPUS_DIR=$W/corpus-rest  # masks + at-rest renders

# 1. corpus (same config and counts as dev/train_h200.sh, plus expression masks) in the background; gsplat's JIT
#    build in the foreground (both resume / load from cache on a warm machine)
say "corpus build (background) + gsplat build"
python3 -m flexrt.corpus build --out $CORPUS_DIR --count-2d 6000 --count-3d 1500 --count-heldout 64 --pose-scale 0.35 \
  --jobs 6 --device cuda --shard-size 250 > $W/corpus.log 2>&1 &
CORPUS=$!
MAX_JOBS=10 TORCH_CUDA_ARCH_LIST=9.0 timeout 330 python3 -m flexrt.benchmarks.bench_e2e build-gsplat > $W/gsplat.log 2>&1
RB=gsplat; grep -q "ready in" $W/gsplat.log || RB=torch  # said in the log: never a silent fallback
say "gsplat build: $(tail -n 1 $W/gsplat.log | cut -c1-200); training renders with: $RB"
wait $CORPUS; say "corpus rc=$? $(tail -n 2 $W/corpus.log | tr '\n' ' ' | cut -c1-300)"
[ -n "${PREP_ONLY:-}" ] && { say "prep only: done"; exit 0; }

# 2. two recipes at once, same time budget
TB=$(( END - SECONDS - 75 ))
rm -rf $W/a $W/b  # a fresh run directory: an old run's later checkpoints would be taken for this run's
say "training from $(basename $INIT), time budget ${TB}s each"
COMMON=(--corpus-cache $CORPUS_DIR --steps 1000000 --lr-warmup 100 --lr-schedule cosine --device cuda
        --render-backend $RB --time-budget $TB --no-progress --eval --eval-count 64 --ckpt-every 2000
        --init-checkpoint $INIT --batch-size ${BATCH:-16} --views-per-sample 2 --lr ${LR:-1e-3} --lr-min 1e-4)
timeout $(( TB + 100 )) python3 -m flexrt.cli train "${COMMON[@]}" --out $W/a --expression-weight ${W_A:-4} ${EXTRA_A:-} \
  > $W/a.log 2>&1 &
A=$!
timeout $(( TB + 100 )) python3 -m flexrt.cli train "${COMMON[@]}" --out $W/b --expression-weight ${W_B:-10} ${EXTRA_B:-} \
  > $W/b.log 2>&1 &
B=$!
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | tee -a "$LOG"
tail -n 2 $W/a/log.csv | tee -a "$LOG"
wait $A; say "a rc=$?"; wait $B; say "b rc=$?"
grep -h "\[eval\]\|\[train\]\|time budget\|rror" $W/a.log $W/b.log | tee -a "$LOG"
for r in a b; do
  w=$(ls $W/$r/checkpoints/step_*.safetensors 2>/dev/null | tail -1)
  [ -n "$w" ] && cp "$w" "$OUT/demo_${r}_$(basename $w)"
done
cd $W && tar czf $OUT/demo_results.tar.gz --exclude='*.train.pt' --exclude='*.safetensors' a b ./*.log 2>/dev/null
ls -la $OUT | tee -a "$LOG"
say done
