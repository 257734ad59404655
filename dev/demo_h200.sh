#!/usr/bin/env bash
# Device call (one H200): training runs for the shipped corpus model, side by side on the one GPU, each with its
# held-out evaluation and the quality bar (training.evaluate.expression_response), on gsplat's differentiable
# rasterizer with the corpus's expression masks and at-rest twins.
#   bash dev/demo_h200.sh                 (carry .whl and .devdata; ~DEMO_END_S seconds)
#   PREP_ONLY=1 bash dev/demo_h200.sh     (corpus + gsplat build only)
# RECIPES: one run per line, "name preset init lr expression_weight [more train options...]"; init is a file
# (relative to the repo), "keep:NAME" (the last weights of run NAME in an earlier call on this warm machine, or
# .devdata/init/NAME.safetensors when the machine is fresh) or "scratch" (seeded random weights). Example:
#   RECIPES='a tiny .devdata/init/cpu_c_e30_d80_unfrozen_303.safetensors 5e-4 30 --rest-pairs --difference-weight 80
#            b small scratch 1e-3 30 --rest-pairs --difference-weight 80' bash dev/demo_h200.sh
# Environment: DEMO_END_S (530, seconds from the start of this script to the end of training + evaluation),
# BATCH (16), VIEWS (2), LR_MIN (1e-4), COUNT_2D / COUNT_3D (6000 / 1500 corpus samples), CORPUS_EXTRA (more corpus options, e.g. "--exp-scale 1.7
# --translation-scale 4": the tracker's spread of the codes, docs/TRAINING.md section 3; its own cache folder).
set -uo pipefail
source dev/device_env.sh
cd /tmp
W=/tmp/flexrt-demo
mkdir -p "$W/keep"
LOG=$OUT/demo_h200.log
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
END=${DEMO_END_S:-530}
CORPUS_EXTRA=${CORPUS_EXTRA:-}
CORPUS_DIR=$W/corpus-rest$(printf '%s' "$CORPUS_EXTRA" | tr -c 'a-z0-9.' '_')  # masks + at-rest renders
RECIPES=${RECIPES:-"a tiny .devdata/init/c3_a_w10_3593.safetensors 5e-4 30 --rest-pairs --difference-weight 80"}

# 1. corpus (same config and counts as dev/train_h200.sh, plus expression masks) in the background; gsplat's JIT
#    build in the foreground (both resume / load from cache on a warm machine)
say "corpus build (background) + gsplat build"
python3 -m flexrt.corpus build --out $CORPUS_DIR --count-2d ${COUNT_2D:-6000} --count-3d ${COUNT_3D:-1500} --count-heldout 64 --pose-scale 0.35 \
  --jobs 6 --device cuda --shard-size 250 $CORPUS_EXTRA > $W/corpus.log 2>&1 &
CORPUS=$!
MAX_JOBS=10 TORCH_CUDA_ARCH_LIST=9.0 timeout 330 python3 -m flexrt.benchmarks.bench_e2e build-gsplat > $W/gsplat.log 2>&1
RB=gsplat; grep -q "ready in" $W/gsplat.log || RB=torch  # said in the log: never a silent fallback
say "gsplat build: $(tail -n 1 $W/gsplat.log | cut -c1-200); training renders with: $RB"
wait $CORPUS; say "corpus rc=$? $(tail -n 2 $W/corpus.log | tr '\n' ' ' | cut -c1-300)"
[ -n "${PREP_ONLY:-}" ] && { say "prep only: done"; exit 0; }

# 2. the recipes at once, same time budget
TB=$(( END - SECONDS - 75 ))
say "time budget ${TB}s per run"
COMMON=(--corpus-cache $CORPUS_DIR --steps 1000000 --lr-warmup 100 --lr-schedule cosine --device cuda
        --render-backend $RB --time-budget $TB --no-progress --eval --eval-count 64 --ckpt-every 2000
        --batch-size ${BATCH:-16} --views-per-sample ${VIEWS:-2} --lr-min ${LR_MIN:-1e-4})
PIDS=(); NAMES=()
while read -r name preset init lr ew extra; do
  [ -z "$name" ] && continue
  case "$init" in
    scratch) INIT=() ;;
    keep:*) k=${init#keep:}; f=$W/keep/$k.safetensors; [ -f "$f" ] || f=$REPO/.devdata/init/$k.safetensors
            INIT=(--init-checkpoint "$f") ;;
    *) INIT=(--init-checkpoint "$REPO/$init") ;;
  esac
  rm -rf "$W/$name"  # a fresh run directory: an old run's later checkpoints would be taken for this run's
  say "run $name: preset $preset, init $init, lr $lr, expression weight $ew, $extra"
  # shellcheck disable=SC2086
  timeout $(( TB + 100 )) python3 -m flexrt.cli train "${COMMON[@]}" "${INIT[@]}" --preset "$preset" --lr "$lr" \
    --expression-weight "$ew" --out "$W/$name" $extra > "$W/$name.log" 2>&1 &
  PIDS+=($!); NAMES+=("$name")
done <<< "$RECIPES"
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | tee -a "$LOG"
for i in "${!PIDS[@]}"; do
  n=${NAMES[$i]}; wait "${PIDS[$i]}"; say "$n rc=$?"
  tail -n 1 "$W/$n/log.csv" | tee -a "$LOG"
  grep -h "\[eval\]\|\[train\]\|time budget\|rror" "$W/$n.log" | tee -a "$LOG"
  w=$(ls $W/$n/checkpoints/step_*.safetensors 2>/dev/null | tail -1)
  [ -n "$w" ] && cp "$w" "$W/keep/$n.safetensors" && cp "$w" "$OUT/${n}_$(basename $w)"
done
cd $W && tar czf $OUT/demo_results.tar.gz --exclude='*.train.pt' --exclude='*.safetensors' --exclude='corpus-rest' \
  --exclude=keep "${NAMES[@]}" ./*.log 2>/dev/null
ls -la $OUT | tee -a "$LOG"
say done
