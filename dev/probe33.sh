# device call 33 (issue 10), 2026-12-03, the session's last ~7 minutes of device time: GPU tests of the uint8 blend
# output (the served frames' path) and the batch-wide JPEG stuffing scan, then the stream sweep of this tree (v3
# blend, uint8 straight from the blend, JPEG scan; epilogue residual GEMMs), 512² JPEG, random phases, up to 96
# streams; its bench.json + plot come back (call 32's did not: more than 8 files under $OUT).
#   bash dev/probe33.sh            (carry .whl and .devdata/shared; ~290 s on a fresh machine)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe33 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_rasterizer_gpu.py" "$REPO/tests/test_jpeg.py" \
  "$REPO/tests/test_frames_gpu.py" -k "not gsplat" > /tmp/gpu_tests.log 2>&1
TESTS_RC=$?
grep -E "passed|failed|Error|assert" /tmp/gpu_tests.log | tail -8
[ $TESTS_RC -eq 0 ] || { el "GPU tests failed (rc=$TESTS_RC): stopping"; tail -30 /tmp/gpu_tests.log; exit 1; }
el sweep
timeout 225 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 218 \
  --streams 32,48,56,64,80,96 --stream-encoding jpeg --duration 5 --stream-warmup 1 \
  --grpc-backend torch-compiled-fp8-up8 --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 \
  | grep -E "grpc|rror|Traceback" | tail -12
rm -f $OUT/sweep/bench.md  # at most 8 files come back
el done
