# device call 9: the demo with its defaults on the GPU (now FP8 GEMMs by default on FP8 GPUs), then the GPU tests of
# the engines (bucket padding, compiled vs eager, FP8 compiled vs eager)
#   bash dev/probe9.sh            (carry .whl and .devdata/shared; ~120 s)
source dev/device_env.sh
cd /tmp
rm -rf /tmp/flexrt-demo-gpu
timeout 75 python3 -m flexrt.cli demo --out /tmp/flexrt-demo-gpu --no-progress > $OUT/demo_gpu.log 2>&1
echo "demo rc=$?"; grep -i "decoder\|engine\|p50\|p99\|latency\|error" $OUT/demo_gpu.log | head -20
cp /tmp/flexrt-demo-gpu/contact_sheet.png /tmp/flexrt-demo-gpu/latency.json $OUT/ 2>/dev/null
timeout 40 python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_engines.py $REPO/tests/test_fp8.py 2>&1 | tail -3
