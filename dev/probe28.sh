# device call 28 (issue 10), 2026-12-03: the TMA GEMM with TMA residual/output, the cheaper GELU epilogue and 2
# programs an SM as autotuning candidates. GPU tests; each GEMM alone (pointer vs TMA vs cuBLAS); the served path's
# stage costs; the stream sweep 1-96 (512² JPEG, random phases); expression -> frame at batch 1; PSNR.
# If the GPU tests fail, the rest runs with FLEXRT_FP8_GEMM=pointer (the previous kernels) and says so.
# As run on 2026-12-03 07:40 the check read the log's last line, which the step's 190 s timeout had cut while the
# 7 tests had passed: the rest ran in the pointer mode (docs/BENCHMARKS.md says what that measured). Fixed below:
# the step's exit status decides, and the step has 300 s.
#   bash dev/probe28.sh            (carry .whl, .devdata/shared; ~500 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe28 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_gemm.py" "$REPO/tests/test_fp8.py" \
  > $OUT/gpu_tests.log 2>&1
TESTS_RC=$?
grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | tail -8
if [ $TESTS_RC -ne 0 ]; then
  export FLEXRT_FP8_GEMM=pointer; el "GPU TESTS FAILED: the rest runs with FLEXRT_FP8_GEMM=pointer"
fi
el gemm probe
timeout 80 python3 "$REPO/dev/gemm_tma_probe.py" --out $OUT 2>&1 | grep -E "^\{|rror" | cut -c1-330
el stage costs
timeout 100 python3 "$REPO/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 32,64 \
  --out $OUT/stage > $OUT/stage_costs.log 2>&1; echo "rc=$?"
grep "^{" $OUT/stage_costs.log | cut -c1-250
grep -E "fp8_|sdpa|red_fused|fr_blend" $OUT/stage_costs.log | head -8 | cut -c1-160
el sweep
timeout 180 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 168 --streams 1,32,40,48,56,64,80,96 \
  --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8-up8 \
  --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 | grep -E "grpc|rror|Traceback" | tail -12
el e2e
timeout 75 python3 -m flexrt.cli bench --preset flex1 --phases e2e --budget 65 \
  --backends torch-compiled-fp8-up8 --resolutions 512 --batch-sizes 1 --encodings jpeg \
  --iters 50 --out $OUT/e2e 2>&1 | grep -E "e2e|rror" | tail -4
el psnr
LEFT=$(( 555 - $(date +%s) + T0 ))
timeout $LEFT python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8-up8 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -2
el done
