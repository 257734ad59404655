#!/usr/bin/env bash
# Device call (one H200, right after dev/train_h200.sh on the same warm machine, which started gsplat's JIT build):
# the GPU tests of corpus / training / fitting / engines, fitting at FLEX-1 size with gsplat (200 steps, 4 views,
# 512²), 16 live streams beside back-to-back fits, and the browser bridge's cost against gRPC.
#   bash dev/fit_web_h200.sh      (carry .whl and .devdata)
set -uo pipefail
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[fit_web $(( $(date +%s) - T0 ))s] $*"; }
el "gsplat: waiting for the background build"
for i in $(seq 1 48); do [ -f /tmp/gsplat_ready ] && break; sleep 5; done
if [ ! -f /tmp/gsplat_ready ]; then  # not warm or not built: build here (minutes)
  el "gsplat not ready ($(tail -c 200 /tmp/gsplat_build.log 2>/dev/null)); building in the foreground"
  MAX_JOBS=14 TORCH_CUDA_ARCH_LIST=9.0 timeout 300 python3 -m flexrt.benchmarks.bench_e2e build-gsplat && touch /tmp/gsplat_ready
fi
cat /tmp/gsplat_build.log 2>/dev/null | tail -2
el tests
timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_corpus.py $REPO/tests/test_training.py \
  $REPO/tests/test_fitting.py $REPO/tests/test_fitting_service.py $REPO/tests/test_fit_rpc.py \
  $REPO/tests/test_rasterizer_differentiable.py $REPO/tests/test_engines.py 2>&1 | tee $OUT/gpu_tests.log | tail -8
el "bench_fitting gsplat fp32"
timeout 100 python3 -m flexrt.benchmarks.bench_fitting --steps 200 --warmup 10 --rasterizer gsplat \
  --out $OUT/bench_fitting_gsplat.json 2>&1 | grep -v -i warn | tail -14
el "bench_fitting gsplat bf16"
timeout 80 python3 -m flexrt.benchmarks.bench_fitting --steps 200 --warmup 10 --rasterizer gsplat --precision bf16 \
  --out $OUT/bench_fitting_gsplat_bf16.json 2>&1 | grep -v -i warn | tail -6
el "bench_web"
timeout 120 python3 -m flexrt.benchmarks.bench_web --model flex1 --device cuda --resolution 512 --frames 300 --rounds 6 \
  --out $OUT/bench_web_h200.json 2>&1 | grep -v -i warn | tail -12
el "grpc: 16 streams with fits beside them (gsplat)"
timeout 150 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 140 --streams 16 --fitting-streams 16 \
  --duration 10 --stream-warmup 1 --grpc-backend torch-compiled-bf16 --backends torch-compiled-bf16 \
  --out $OUT/bench 2>&1 | grep -E "grpc|rror|Traceback" | tail -8
python3 - <<'PY'
import json, os
p = os.environ["OUT"] + "/bench/bench.json"
if os.path.exists(p):
    for r in json.load(open(p)).get("grpc", {}).get("concurrency", []):
        print(r.get("streams"), r.get("status"), r.get("achieved_fps_per_stream_min"), (r.get("latency") or {}).get("p99_ms"), r.get("avatar_fitting"))
PY
el done
