#!/usr/bin/env bash
# Device call (one H200, fresh machine): the demo model, continued from the ablation's mixed_sinks run
# (.devdata/init/mixed_sinks_676.safetensors) with gsplat's differentiable rasterizer (batched, ~100x the PyTorch
# reference's speed). Two recipes side by side on the one GPU; both come back with their held-out evaluation.
#   bash dev/demo_h200.sh     (carry .whl and .devdata)
set -uo pipefail
source dev/device_env.sh
cd /tmp
W=/tmp/flexrt-demo
mkdir -p "$W"
LOG=$OUT/demo_h200.log
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
END=${DEMO_END_S:-530}

# 1. corpus (same config and counts as dev/train_h200.sh) in the background; gsplat's JIT build in the foreground
say "corpus build (background) + gsplat build"
python3 -m flexrt.corpus build --out $W/corpus --count-2d 6000 --count-3d 1500 --count-heldout 64 --pose-scale 0.35 \
  --jobs 6 --device cuda --shard-size 250 > $W/corpus.log 2>&1 &
CORPUS=$!
MAX_JOBS=10 TORCH_CUDA_ARCH_LIST=9.0 timeout 330 python3 -m flexrt.benchmarks.bench_e2e build-gsplat > $W/gsplat.log 2>&1
RB=gsplat; grep -q "ready in" $W/gsplat.log || RB=torch  # said in the log: never a silent fallback
say "gsplat build: $(tail -n 1 $W/gsplat.log | cut -c1-200); training renders with: $RB"
wait $CORPUS; say "corpus rc=$?"
ext=$(ls -d ~/.cache/torch_extensions/*/gsplat_cuda 2>/dev/null | head -1)
[ -n "$ext" ] && tar czf $OUT/gsplat_build_h200.tar.gz -C "$(dirname $ext)" "$(basename $ext)" --exclude='*.o' --exclude='*.ninja*' 2>/dev/null

# 2. two recipes at once, same time budget
TB=$(( END - SECONDS - 60 ))
say "training, time budget ${TB}s each"
COMMON=(--corpus-cache $W/corpus --steps 1000000 --lr-warmup 100 --lr-schedule cosine --device cuda
        --render-backend $RB --time-budget $TB --no-progress --eval --eval-count 64 --ckpt-every 2000
        --init-checkpoint $REPO/.devdata/init/mixed_sinks_676.safetensors)
timeout $(( TB + 100 )) python3 -m flexrt.cli train "${COMMON[@]}" --out $W/a --batch-size 16 --views-per-sample 2 \
  --lr 1e-3 --lr-min 1e-4 > $W/a.log 2>&1 &
A=$!
timeout $(( TB + 100 )) python3 -m flexrt.cli train "${COMMON[@]}" --out $W/b --batch-size 32 --views-per-sample 2 \
  --lr 2e-3 --lr-min 1e-4 > $W/b.log 2>&1 &
B=$!
sleep 45; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | tee -a "$LOG"
wait $A; say "a rc=$?"; wait $B; say "b rc=$?"
grep -h "\[eval\]\|\[train\]\|time budget\|rror" $W/a.log $W/b.log | tee -a "$LOG"
for r in a b; do
  w=$(ls $W/$r/checkpoints/step_*.safetensors 2>/dev/null | tail -1)
  [ -n "$w" ] && cp "$w" "$OUT/demo_${r}_$(basename $w)"
done
cd $W && tar czf $OUT/demo_results.tar.gz --exclude='*.train.pt' --exclude='*.safetensors' a b ./*.log 2>/dev/null
ls -la $OUT | tee -a "$LOG"
say done
