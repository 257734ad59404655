# device call 21 (issue 10), 2026-12-03: the fused-epilogue kernel's GPU test with its final shapes; the upsampler's
# convolutions as FP8 implicit GEMMs (dev/fp8_conv_probe.py, first GPU run); the served path's GPU cost per batch size,
# alone and pipelined, and the render stage's kernels at 64 frames (dev/stage_costs_probe.py).
#   bash dev/probe21.sh            (carry .whl and .devdata/shared; ~330 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe21 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_gemm.py" 2>&1 \
  | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error|assert" | tail -6
el fp8 conv
timeout 150 python3 "$REPO/dev/fp8_conv_probe.py" --out $OUT > $OUT/fp8_conv.log 2>&1; echo "rc=$?"
tail -25 $OUT/fp8_conv.log | cut -c1-250
el stage costs
timeout 240 python3 "$REPO/dev/stage_costs_probe.py" --out $OUT > $OUT/stage_costs.log 2>&1; echo "rc=$?"
grep -v "^USDT\|Warning\|warn" $OUT/stage_costs.log | tail -60 | cut -c1-250
el done
