# device call 20 (issues 10 and 12), 2026-12-03: the fused-epilogue kernel's GPU test with its final shapes (FLEX-1's
# two and a ragged 96x208x160), then `flexavatar demo` with its defaults (the shipped f2, the FP8 default, the blink).
#   bash dev/probe20.sh            (carry .whl and .devdata/shared; ~150 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe20 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_gemm.py" 2>&1 \
  | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error|assert" | tail -6
el demo
rm -rf /tmp/flexrt-demo-gpu
timeout 80 python3 -m flexrt.cli demo --out /tmp/flexrt-demo-gpu --no-progress > $OUT/demo_gpu.log 2>&1
echo "demo rc=$?"; grep -E "^\[demo\] (engine|blink|wrote)|decoder:" $OUT/demo_gpu.log | cut -c1-300
cp /tmp/flexrt-demo-gpu/contact_sheet.png /tmp/flexrt-demo-gpu/latency.json $OUT/ 2>/dev/null
el done
