# device call 13 (issue 10), 2026-12-02 evening: the full stream sweep of the committed default (FP8 decoder,
# token-major attention, capture buckets every 8), JPEG up to 96 streams and RAW, with avatar creation beside 32
# live streams; then expression -> frame at batch 1 and 32, and the GPU tests.
#   bash dev/probe13.sh            (carry .whl and .devdata/shared; ~570 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe13 $(( $(date +%s) - T0 ))s] $*"; }
el grpc
timeout 380 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 365 \
  --streams 1,16,24,32,40,48,56,64,80,96 --stream-encoding jpeg,raw --creation-streams 32 --duration 5 \
  --stream-warmup 1 --grpc-backend torch-compiled-fp8 --backends torch-compiled-fp8 \
  --out $OUT/bench 2>&1 | grep -E "grpc|rror|Traceback" | tail -30
el e2e
timeout 90 python3 -m flexrt.cli bench --preset flex1 --phases e2e --budget 80 --backends torch-compiled-fp8 \
  --resolutions 512 --batch-sizes 1,32 --encodings raw,jpeg --iters 50 --out $OUT/e2e 2>&1 | grep -E "e2e|rror" | tail -8
el tests
LEFT=$(( 575 - $(date +%s) + T0 ))
[ $LEFT -gt 40 ] && timeout $LEFT python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_frames_gpu.py \
  $REPO/tests/test_jpeg.py $REPO/tests/test_engines.py $REPO/tests/test_fp8.py 2>&1 | tee $OUT/gpu_tests.log | tail -4
el done
