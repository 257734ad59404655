# device call 32 (issue 10), 2026-12-03 (call 31 could not start a machine): the blend with an exact ellipse vs
# sub-tile test and a 2-FMA + 2^x inner loop (kernels/cuda/rasterize.cu); the residual GEMMs as torch's row-wise
# FP8 GEMM (FLEXRT_FP8_RESIDUAL_GEMM=rowwise, an opt-in A/B). In order of need:
#   1. GPU tests: the rasterizer (not the gsplat comparison: its JIT build takes ~90 s) and the row-wise GEMM
#   2. the rasterizer alone, previous commit (060dddb, carried in .devdata/old) vs this tree, same scenes and call
#   3. the served path's stage costs, this tree: epilogue residual GEMMs (default) and row-wise
#   4. the stream sweep of this tree (default), 512² JPEG, random phases, up to 96 streams
#   5. served EMO-1 PSNR vs fp32 (bar 45 dB)
#   bash dev/probe32.sh            (carry .whl, .devdata/shared, .devdata/old; ~590 s on a fresh machine)
source dev/device_env.sh
NEW=$REPO
cd /tmp
T0=$(date +%s); el() { echo "[probe32 $(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( 585 - $(date +%s) + T0 )); }
el tests
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider "$NEW/tests/test_rasterizer_gpu.py" \
  "$NEW/tests/test_fp8_gemm.py" -k "not gsplat and not triton_kernel and not qkv and not compiled_graphs" \
  > $OUT/gpu_tests.log 2>&1
TESTS_RC=$?
grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | tail -6
[ $TESTS_RC -eq 0 ] || { el "GPU tests failed (rc=$TESTS_RC): stopping"; exit 1; }
raster() {  # $1 name, $2 tree
  el "rasterizer $1"
  (cd "$2" && source dev/device_env.sh > /dev/null && cd /tmp && timeout 60 python3 -m flexrt.benchmarks.bench_rasterizer \
    --G 58361 --res 512 --cams 1 8 --backends cupy --no-check --iters 100 --out $OUT/raster_$1.json 2>&1 \
    | grep -iE "median|blend|rror" | head -8 | cut -c1-200)
}
raster old "$NEW/.devdata/old"
raster new "$NEW"
stage() {  # $1 name
  el "stage costs $1"
  (cd "$NEW" && source dev/device_env.sh > /dev/null && cd /tmp && timeout 100 python3 "$NEW/dev/stage_costs_probe.py" \
    --backend torch-compiled-fp8-up8 --batches 32,64 --iters 20 --out $OUT/stage_$1 > $OUT/stage_$1.log 2>&1; echo "rc=$?")
  grep "^{" $OUT/stage_$1.log | cut -c1-260
  grep -E "fr_blend|fp8_gemm|scaled_mm|cutlass|Rowwise|native_layer_norm" $OUT/stage_$1.log | head -6 | cut -c1-150
}
stage epilogue
el "sweep"
L=$(left); SW=$(( L - 140 )); [ $SW -gt 230 ] && SW=230
timeout $SW python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget $(( SW - 10 )) \
  --streams 40,48,56,64,80,96 --stream-encoding jpeg --duration 5 --stream-warmup 1 \
  --grpc-backend torch-compiled-fp8-up8 --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 \
  | grep -E "grpc|rror|Traceback" | tail -10
el psnr
timeout 60 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8-up8 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -1
L=$(left); [ $L -gt 70 ] && FLEXRT_FP8_RESIDUAL_GEMM=rowwise stage rowwise
el done
