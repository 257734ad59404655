# device call 31 (issue 10), 2026-12-03: the blend with an exact ellipse vs sub-tile test and a 2-FMA + 2^x inner
# loop (kernels/cuda/rasterize.cu), and the residual GEMMs as torch's row-wise FP8 GEMM (FLEXRT_FP8_RESIDUAL_GEMM=
# rowwise, an A/B). GPU tests of the rasterizer and the FP8 GEMMs; the served path's stage costs in three variants
# in the same call: the previous commit (060dddb, carried in .devdata/old), this tree, this tree with row-wise
# residual GEMMs; then the stream sweep of this tree with the faster residual variant (512² JPEG, random phases).
#   bash dev/probe31.sh            (carry .whl, .devdata/shared, .devdata/old; ~580 s on a fresh machine)
source dev/device_env.sh
NEW=$REPO
cd /tmp
T0=$(date +%s); el() { echo "[probe31 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider "$NEW/tests/test_rasterizer_gpu.py" \
  "$NEW/tests/test_fp8_gemm.py" -k "not pointer and not bf16" > $OUT/gpu_tests.log 2>&1
TESTS_RC=$?
grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | tail -6
[ $TESTS_RC -eq 0 ] || { el "GPU tests failed (rc=$TESTS_RC): stopping"; exit 1; }
stage() {  # $1 name, $2 tree
  el "stage costs $1"
  (cd "$2" && source dev/device_env.sh > /dev/null && cd /tmp && timeout 100 python3 "$2/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 32,64 \
    --iters 20 --out $OUT/$1 > $OUT/stage_$1.log 2>&1; echo "rc=$?")
  grep "^{" $OUT/stage_$1.log | cut -c1-260
  grep -E "fr_blend|fr_emit|fp8_gemm|_scaled_mm|cutlass|sm90_xmma|native_layer_norm" $OUT/stage_$1.log | head -6 | cut -c1-150
}
stage old "$NEW/.devdata/old"
stage new "$NEW"
FLEXRT_FP8_RESIDUAL_GEMM=rowwise stage rowwise "$NEW"
FPS() { python3 -c "import json;r=json.load(open('$OUT/$1/stage_costs.json'))['rows'];print(max(x['pipelined_frames_per_s'] for x in r))" 2>/dev/null || echo 0; }
VARIANT=epilogue
python3 -c "import sys; sys.exit(0 if $(FPS rowwise) > 1.01 * $(FPS new) else 1)" && VARIANT=rowwise
el "sweep with FLEXRT_FP8_RESIDUAL_GEMM=$VARIANT (old $(FPS old), new $(FPS new), rowwise $(FPS rowwise) frames/s)"
(cd "$NEW" && source dev/device_env.sh > /dev/null)  # flexrt -> this tree again
LEFT=$(( 575 - $(date +%s) + T0 )); [ $LEFT -gt 120 ] || { el "no time left for the sweep"; exit 0; }
FLEXRT_FP8_RESIDUAL_GEMM=$VARIANT timeout $LEFT python3 -m flexrt.cli bench --preset flex1 --phases grpc \
  --budget $(( LEFT - 12 )) --streams 1,40,48,56,64,80,96 --stream-encoding jpeg --duration 5 --stream-warmup 1 \
  --grpc-backend torch-compiled-fp8-up8 --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 \
  | grep -E "grpc|rror|Traceback" | tail -12
el done
