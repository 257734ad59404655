#!/usr/bin/env bash
# Device call (one H200, <= 10 min): the procedural corpus rendered on the GPU, the bias-sink ablation (4 runs) and
# the demo model trained side by side on the one GPU, each with the same time budget; gsplat's JIT build started in
# the background (setsid: it outlives this command while the machine stays warm) for the next call.
#   bash dev/train_h200.sh        (results: $OUT/train_results.tar.gz + weights)
set -uo pipefail
source dev/device_env.sh
cd /tmp  # not the repo root: its flexrt/ folder would shadow the namespace of links
W=/tmp/flexrt-train
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
LOG=$OUT/train_h200.log
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
END=${TRAIN_END_S:-555}  # seconds into this command by which everything must be done

# 0. gsplat (for fitting, next call): JIT build in the background on 6 cores
if [ ! -f /tmp/gsplat_ready ] && [ ! -f /tmp/gsplat_started ] && [ -d /tmp/site/gsplat ]; then
  touch /tmp/gsplat_started
  say "gsplat: background JIT build started (log /tmp/gsplat_build.log)"
  MAX_JOBS=6 TORCH_CUDA_ARCH_LIST=9.0 setsid nohup bash -c \
    'python3 -m flexrt.benchmarks.bench_e2e build-gsplat > /tmp/gsplat_build.log 2>&1 && touch /tmp/gsplat_ready' \
    >/dev/null 2>&1 < /dev/null &
fi
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader | tee -a "$LOG"

# 1. corpus: 6000 2D, 1500 3D, 64 held-out samples, rasterized on the GPU by 10 processes
say "corpus build"
timeout 200 python3 -m flexrt.corpus build --out $W/corpus --count-2d 6000 --count-3d 1500 --count-heldout 64 \
  --pose-scale 0.35 --jobs 10 --device cuda --shard-size 250 >>"$LOG" 2>$W/corpus.err
rc=$?; say "corpus rc=$rc: $(du -sh $W/corpus | cut -f1)"; tail -c 600 $W/corpus.err | tr '\r' '\n' | tail -3 >>"$LOG"
[ $rc -eq 0 ] || { tar czf $OUT/train_results.tar.gz -C $W corpus.err 2>/dev/null; exit 1; }

# 2. five training processes at once: the four ablation runs (batch 8, one view) and the demo model (batch 16,
#    two views); each cuts its steps after 20 so that training ends at the same time
TB=$(( END - SECONDS - 110 ))
say "training, time budget ${TB}s each"
COMMON=(--corpus-cache $W/corpus --steps 100000 --lr 1e-3 --lr-warmup 100 --lr-schedule cosine --lr-min 1e-4
        --device cuda --render-backend torch --time-budget $TB --no-progress)
pids=()
for r in only_2d only_3d mixed_no_sinks mixed_sinks; do
  timeout $(( TB + 150 )) python3 -m flexrt.training.ablation "${COMMON[@]}" --out $W/ablation --runs $r \
    --batch-size 8 --eval-count 64 --ckpt-every 500 > $W/ablation_$r.log 2>&1 &
  pids+=($!)
done
timeout $(( TB + 150 )) python3 -m flexrt.cli train "${COMMON[@]}" --out $W/demo --batch-size 16 --views-per-sample 2 \
  --eval --eval-count 64 --ckpt-every 500 > $W/demo.log 2>&1 &
pids+=($!)
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | tee -a "$LOG"
for p in "${pids[@]}"; do wait $p; say "pid $p rc=$?"; done
grep -h "\[ablation\]\|\[eval\]\|\[train\]\|time budget\|rror" $W/*.log | tee -a "$LOG"

# 3. the table and the picture of the four runs
say "collect"
timeout $(( END - SECONDS + 30 )) python3 -m flexrt.training.ablation --corpus-cache $W/corpus --out $W/ablation --collect \
  --device cuda --eval-count 3 >>"$LOG" 2>&1
say "gsplat: $( [ -f /tmp/gsplat_ready ] && echo ready || echo "not ready: $(tail -c 300 /tmp/gsplat_build.log 2>/dev/null)")"

# 4. what comes back: logs, configs, results, table, picture (tar), the demo and mixed_sinks weights
cd $W && tar czf $OUT/train_results.tar.gz --exclude='*.train.pt' --exclude='*.safetensors' --exclude='corpus' \
  ablation demo ./*.log corpus.err corpus/corpus.json 2>/dev/null
for run in demo ablation/mixed_sinks; do
  w=$(ls $W/$run/checkpoints/step_*.safetensors 2>/dev/null | tail -1)
  [ -n "$w" ] && cp "$w" "$OUT/$(echo $run | tr / _)_$(basename $w)"
done
ls -la $OUT | tee -a "$LOG"
say "done"
