# device call 35 (issue 10), PREPARED 2026-12-03 (session 15), NOT RUN (its device time was spent): commit 1218977+
# (v3 blend, uint8 frames from the blend, the batch-wide JPEG scan, warm-up progress lines) end to end:
#   1. GPU tests of the served path (a failure stops the call)
#   2. the stream sweep (512² JPEG, random phases, 1-96; its bench.json + plot come back: <= 8 files under $OUT)
#   3. the served path's stage costs, default epilogue residual GEMMs vs FLEXRT_FP8_RESIDUAL_GEMM=rowwise, one
#      after the other on the same machine (the sweep's server start has warmed the compile caches by then)
#   4. expression -> frame at batch 1 (bar 2.29 ms; 2.10 at 060dddb)
#   bash dev/probe35.sh            (carry .whl and .devdata/shared; ~580 s on a fresh machine)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe35 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_rasterizer_gpu.py" "$REPO/tests/test_jpeg.py" \
  "$REPO/tests/test_frames_gpu.py" "$REPO/tests/test_engines.py" -k "not gsplat" > /tmp/gpu_tests.log 2>&1
TESTS_RC=$?
grep -E "passed|failed|Error|assert" /tmp/gpu_tests.log | tail -8
[ $TESTS_RC -eq 0 ] || { el "GPU tests failed (rc=$TESTS_RC): stopping"; tail -30 /tmp/gpu_tests.log; exit 1; }
el sweep
timeout 250 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 240 \
  --streams 1,32,48,56,64,72,80,96 --stream-encoding jpeg --duration 5 --stream-warmup 1 \
  --grpc-backend torch-compiled-fp8-up8 --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 \
  | grep -E "grpc|warm-up|rror|Traceback" | tail -16
rm -f $OUT/sweep/bench.md
for v in epilogue rowwise; do
  el "stage costs $v"
  FLEXRT_FP8_RESIDUAL_GEMM=$v timeout 85 python3 "$REPO/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 \
    --batches 32,64 --iters 20 --out $OUT/stage_$v > /tmp/stage_$v.log 2>&1; echo "rc=$?"
  grep "^{" /tmp/stage_$v.log | cut -c1-260
done
el e2e
LEFT=$(( 585 - $(date +%s) + T0 ))
timeout $LEFT python3 -m flexrt.cli bench --preset flex1 --phases e2e --budget $(( LEFT - 5 )) \
  --backends torch-compiled-fp8-up8 --resolutions 512 --batch-sizes 1 --encodings jpeg --iters 50 --out $OUT/e2e 2>&1 \
  | grep -E "e2e|rror" | tail -3
rm -f $OUT/e2e/bench.md
el done
