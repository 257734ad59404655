#!/usr/bin/env bash
# Device call (one H200): `flexavatar demo` as a user runs it on a GPU host (defaults: the shipped model, EMO-1
# from the carried reference data, 512x512, turntable), bringing back its pictures and latency report.
#   bash dev/demo_gpu_h200.sh     (carry .whl and .devdata)
set -uo pipefail
source dev/device_env.sh
cd /tmp
rm -rf /tmp/flexrt-demo-gpu
timeout 400 python3 -m flexrt.cli demo --out /tmp/flexrt-demo-gpu --no-progress 2>&1 | tee $OUT/demo_gpu.log
echo "demo rc=${PIPESTATUS[0]}"
cp /tmp/flexrt-demo-gpu/contact_sheet.png /tmp/flexrt-demo-gpu/demo.gif /tmp/flexrt-demo-gpu/latency.json $OUT/ 2>/dev/null
ls -la $OUT
