# device call 38 (issue 10), 2026-12-03 (session 17): the 0.35 ms decoder goal. Two kernel changes against the
# previous commit (31cf3c8, carried in .devdata/old):
#   * the FP8 convolution's loop over taps and channel blocks flattened into one loop (the pipeline no longer
#     restarts at every tap) and three more conv tiles
#   * 4-warp GEMM / q|k|v tiles that let two programs share an SM (one's epilogue overlaps the other's MMAs)
# Steps: GPU tests of both kernels; each kernel old vs new in one process (dev/kernel_ab_probe.py); the served
# path's decode / render stage costs at 16 / 32 / 64 frames, new then old; the served EMO-1 PSNR vs fp32.
#   bash dev/probe38.sh      (carry .whl, .devdata/shared, .devdata/old; ~560 s)
source dev/device_env.sh
NEW=$REPO
cd /tmp
T0=$(date +%s); el() { echo "[probe38 $(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( 575 - $(date +%s) + T0 )); }
el tests
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider "$NEW/tests/test_fp8_gemm.py" "$NEW/tests/test_fp8_conv.py" \
  > /tmp/gpu_tests.log 2>&1; echo "rc=$?"
grep -E "passed|failed|Error|assert" /tmp/gpu_tests.log | tail -8
el "kernel A/B"
timeout 150 python3 "$NEW/dev/kernel_ab_probe.py" --old "$NEW/.devdata/old" --frames 32 --out $OUT > /tmp/kab.log 2>&1; echo "rc=$?"
grep -E "^\{|rror" /tmp/kab.log | cut -c1-700
el "stage costs new ($(left)s left)"
timeout $(( $(left) > 200 ? 200 : $(left) )) python3 "$NEW/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 \
  --batches 16,32,64 --graphs-for-batches-only --iters 20 --out $OUT/new > /tmp/stage_new.log 2>&1; echo "rc=$?"
grep -E "^\{|^setup" /tmp/stage_new.log | cut -c1-260
grep -E "fp8_|qkv|conv" /tmp/stage_new.log | head -6 | cut -c1-160
if [ $(left) -gt 100 ]; then
  el "psnr ($(left)s left)"
  timeout 90 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8-up8 vs torch-fp32" \
    --out $OUT/psnr 2>&1 | tail -3
  rm -f $OUT/psnr/*.md
fi
if [ $(left) -gt 90 ]; then
  el "stage costs old ($(left)s left)"
  (cd "$NEW/.devdata/old" && source dev/device_env.sh >/dev/null && cd /tmp && timeout $(( $(left) - 5 )) python3 \
    "$NEW/.devdata/old/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 16,32,64 \
    --graphs-for-batches-only --iters 20 --out $OUT/old > /tmp/stage_old.log 2>&1; echo "rc=$?")
  grep -E "^\{|^setup" /tmp/stage_old.log | cut -c1-260
fi
el done
