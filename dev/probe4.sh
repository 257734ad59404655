# device call 4: fitting on the GPU (tests, step timing with the PyTorch rasterizer: no gsplat here), live streams
# while fits run
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe4 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 110 python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_fit_rpc.py $REPO/tests/test_fitting.py \
  $REPO/tests/test_fitting_service.py $REPO/tests/test_rasterizer_differentiable.py 2>&1 | tee $OUT/gpu_tests.log | tail -6
el bench_fitting
timeout 120 python3 -m flexrt.benchmarks.bench_fitting --steps 10 --warmup 2 --out $OUT/bench_fitting.json 2>&1 | tail -14
el grpc
timeout 190 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 180 --streams 16 --fitting-streams 16 \
  --duration 8 --stream-warmup 1 --grpc-backend torch-compiled-bf16 --backends torch-compiled-bf16 \
  --out $OUT/bench 2>&1 | grep -E "grpc|rror|Traceback" | tail -8
python3 - <<'PY'
import json, os
p = os.environ["OUT"] + "/bench/bench.json"
if os.path.exists(p):
    for r in json.load(open(p)).get("grpc", {}).get("concurrency", []):
        print(r.get("streams"), r.get("status"), r.get("achieved_fps_per_stream_min"), (r.get("latency") or {}).get("p99_ms"), r.get("avatar_fitting"))
PY
el done
