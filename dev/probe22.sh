# device call 22 (issue 10), 2026-12-03: the upsampler's convolutions in FP8 inside the decoder (upsampler="fp8",
# kernels/fp8_conv.py): GPU tests (kernel vs the reference op, compiled engine, the shipped model's PSNR on CUDA);
# decoder fused vs fused + FP8 convolutions at batch 1/32/64 in one process + profile; served EMO-1 PSNR; the served
# path's cost per batch size with them (stage_costs_probe).
#   bash dev/probe22.sh            (carry .whl and .devdata/shared; ~520 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe22 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_conv.py" "$REPO/tests/test_fp8.py" 2>&1 \
  | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error|assert" | tail -8
el variants
timeout 170 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 150 --batches 1,32,64 \
  --variants fp8f-res16-up16,fp8f-res16-up8 --profile fp8f-res16-up8 2>&1 | grep -v -i warn | tail -5
el psnr
timeout 100 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8-up8 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -3
el stage costs
LEFT=$(( 540 - $(date +%s) + T0 ))
timeout $LEFT python3 "$REPO/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 1,4,8,16,24,32,48,64 \
  --out $OUT > $OUT/stage_costs.log 2>&1; echo "rc=$?"
grep "^{" $OUT/stage_costs.log | cut -c1-250
el done
