# device call 30 (issue 10), prepared in session 14, run 2026-12-03 08:43 (session 15): commit 060dddb
# (TMA FP8 GEMMs, the q|k|v + head RMS norm kernel) end to end: GPU tests; stage costs at every batch size (for
# dev/batcher_sim.py); the stream sweep 1-96 (512² JPEG, random phases; ran 2026-12-03 08:43, cut at 48 streams by its budget);
# expression -> frame at batch 1 (bar 2.29 ms); served EMO-1 PSNR vs fp32 (bar 45 dB). A failed test step stops
# the call (its exit status decides; call 28 misread a log and measured a non-default mode).
#   bash dev/probe30.sh            (carry .whl and .devdata/shared; ~560 s on a fresh machine)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe30 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_gemm.py" "$REPO/tests/test_fp8_conv.py" "$REPO/tests/test_fp8.py" \
  "$REPO/tests/test_jpeg.py" "$REPO/tests/test_frames_gpu.py" > $OUT/gpu_tests.log 2>&1
TESTS_RC=$?
grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | tail -6
[ $TESTS_RC -eq 0 ] || { el "GPU tests failed (rc=$TESTS_RC): stopping"; exit 1; }
el sweep
timeout 190 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 178 --streams 1,32,40,48,56,64,80,96 \
  --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8-up8 \
  --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 | grep -E "grpc|rror|Traceback" | tail -12
el e2e
timeout 75 python3 -m flexrt.cli bench --preset flex1 --phases e2e --budget 65 --backends torch-compiled-fp8-up8 \
  --resolutions 512 --batch-sizes 1 --encodings jpeg --iters 50 --out $OUT/e2e 2>&1 | grep -E "e2e|rror" | tail -4
el psnr
timeout 60 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8-up8 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -2
el stage costs
LEFT=$(( 560 - $(date +%s) + T0 ))
TRITON_PRINT_AUTOTUNING=1 timeout $LEFT python3 "$REPO/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 \
  --batches 1,4,8,16,24,32,48,64 --out $OUT/stage > $OUT/stage_costs.log 2>&1; echo "rc=$?"
grep "^{" $OUT/stage_costs.log | cut -c1-250
grep -i "best config" $OUT/stage_costs.log | sort | uniq -c | sort -rn | head -12 | cut -c1-220  # to prune the configs
el done
