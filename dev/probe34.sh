# device call 34 (issue 10), 2026-12-03, the session's last ~6 minutes of device time (too few for a sweep: a fresh
# machine's server start takes ~150 s): GPU tests of the uint8 blend output (the served frames' path), the JPEG
# stuffing scan and the frame renderer; the two changes each against what it replaced, in one process.
#   bash dev/probe34.sh            (carry .whl; ~70 s on a fresh machine)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe34 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_rasterizer_gpu.py" "$REPO/tests/test_jpeg.py" \
  "$REPO/tests/test_frames_gpu.py" -k "not gsplat" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?"
grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | tail -8
el probe
timeout 60 python3 "$REPO/dev/render_u8_probe.py" --out $OUT 2>&1 | tail -3; echo "probe rc=$?"
el done
