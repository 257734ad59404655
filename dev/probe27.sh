# device call 27 (issue 10), 2026-12-03: the TMA persistent FP8 GEMMs and the fused q|k|v + head RMS norm kernel.
# GPU tests of both kernels and the engine; each GEMM alone (pointer vs TMA vs cuBLAS); the served path's stage costs
# with the new kernels and, in the same call, with the previous commit (1f5b1f6, carried in .devdata/old); PSNR.
#   bash dev/probe27.sh            (carry .whl, .devdata/shared, .devdata/old; ~500 s)
source dev/device_env.sh
NEW=$REPO
cd /tmp
T0=$(date +%s); el() { echo "[probe27 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider "$NEW/tests/test_fp8_gemm.py" "$NEW/tests/test_fp8.py" 2>&1 \
  | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error|assert" | tail -8
el gemm probe
timeout 100 python3 "$NEW/dev/gemm_tma_probe.py" --out $OUT 2>&1 | grep -E "^\{|rror" | cut -c1-330
el stage costs new
timeout 110 python3 "$NEW/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 16,32,64 \
  --out $OUT/new > $OUT/stage_costs_new.log 2>&1; echo "rc=$?"
grep "^{" $OUT/stage_costs_new.log | cut -c1-250
grep -E "fp8_|qkv|sdpa|red_fused|fr_blend" $OUT/stage_costs_new.log | head -10 | cut -c1-160
el psnr
timeout 90 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8-up8 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -3
el stage costs old
LEFT=$(( 560 - $(date +%s) + T0 ))
(cd "$NEW/.devdata/old" && source dev/device_env.sh && cd /tmp && timeout $LEFT python3 "$NEW/.devdata/old/dev/stage_costs_probe.py" \
  --backend torch-compiled-fp8-up8 --batches 16,32,64 --out $OUT/old > $OUT/stage_costs_old.log 2>&1; echo "rc=$?")
grep "^{" $OUT/stage_costs_old.log | cut -c1-250
el done
