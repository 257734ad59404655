# device call 26 (issue 10), PREPARED 2026-12-03, NOT RUN (the session's device time was spent): what the session
# could not measure with the committed code: the GPU tests it changed, expression -> frame at batch 1 with the new
# default (FP8 convolutions; bar: no slower than 2.29 ms), the full sweep 1-96 with the JPEG coefficient kernel
# (random phases), and `flexavatar demo` with its defaults on the GPU (the shipped model with FP8 convolutions).
#   bash dev/probe26.sh            (carry .whl and .devdata/shared; ~560 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe26 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_gemm.py" "$REPO/tests/test_fp8_conv.py" \
  "$REPO/tests/test_jpeg.py" "$REPO/tests/test_frames_gpu.py" 2>&1 | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error|assert" | tail -6
el e2e
timeout 120 python3 -m flexrt.cli bench --preset flex1 --phases e2e --budget 110 \
  --backends torch-compiled-fp8-fused,torch-compiled-fp8-up8 --resolutions 512 --batch-sizes 1 --encodings jpeg \
  --iters 50 --out $OUT/e2e 2>&1 | grep -E "e2e|rror" | tail -6
el sweep
timeout 190 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 178 --streams 1,32,40,48,56,64,80,96 \
  --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8-up8 \
  --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 | grep -E "grpc|rror|Traceback" | tail -12
el demo
rm -rf /tmp/flexrt-demo-gpu
LEFT=$(( 550 - $(date +%s) + T0 ))
timeout $LEFT python3 -m flexrt.cli demo --out /tmp/flexrt-demo-gpu --no-progress > $OUT/demo_gpu.log 2>&1
echo "demo rc=$?"; grep -E "^\[demo\] (engine|blink|wrote)|decoder:" $OUT/demo_gpu.log | cut -c1-300
cp /tmp/flexrt-demo-gpu/contact_sheet.png /tmp/flexrt-demo-gpu/latency.json $OUT/ 2>/dev/null
el done
