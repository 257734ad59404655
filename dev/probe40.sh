# device call 40 (issue 10), 2026-12-03 (session 17): call 39's shuffle epilogue wrote PixelShuffle's channel order
# (every byte to another pixel) and made the convolutions 1.7x slower; the up-convs' channels are now phase-major, so
# a tile's output rows are contiguous runs of channels. Against the previous commit (31cf3c8, in .devdata/old):
#   the GELU GEMM's epilogue with one tanh.approx.f32; the up-convs' shuffle-and-quantise epilogue; the flattened
#   convolution loop.
# Steps: GPU tests of the changed kernels; the served path's stage costs at 16 / 32 / 64 frames; the served EMO-1
# PSNR vs fp32; the previous commit's stage costs; each kernel old vs new (dev/kernel_ab_probe.py) if time is left.
#   bash dev/probe40.sh      (carry .whl, .devdata/shared, .devdata/old; ~520 s)
source dev/device_env.sh
NEW=$REPO
cd /tmp
T0=$(date +%s); el() { echo "[probe40 $(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( 520 - $(date +%s) + T0 )); }
el "kernel tests"
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider "$NEW/tests/test_fp8_conv.py" "$NEW/tests/test_fp8_gemm.py" \
  -k "gpu_triton_kernel_matches_the_reference_op and not pointer" \
  > /tmp/gpu_tests.log 2>&1; echo "rc=$?"
grep -E "passed|failed|Error|^E " /tmp/gpu_tests.log | tail -8 | cut -c1-300
el "stage costs new ($(left)s left)"
timeout 200 python3 "$NEW/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 \
  --batches 16,32,64 --graphs-for-batches-only --iters 20 --out $OUT/new > /tmp/stage_new.log 2>&1; echo "rc=$?"
grep -E "^\{|^setup" /tmp/stage_new.log | cut -c1-260
grep -E "fp8_|qkv|conv|shuffle" /tmp/stage_new.log | head -8 | cut -c1-160
el "psnr ($(left)s left)"
timeout 90 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 \
  --pairs "served-fp8-up8 vs torch-fp32" --out $OUT/psnr 2>&1 | tail -3
rm -f $OUT/psnr/*.md
el "stage costs old ($(left)s left)"
(cd "$NEW/.devdata/old" && source dev/device_env.sh >/dev/null && cd /tmp && timeout $(( $(left) > 130 ? 130 : $(left) )) \
  python3 "$NEW/.devdata/old/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 16,32,64 \
  --graphs-for-batches-only --iters 20 --out $OUT/old > /tmp/stage_old.log 2>&1; echo "rc=$?")
grep -E "^\{|^setup" /tmp/stage_old.log | cut -c1-260
(cd "$NEW" && source dev/device_env.sh >/dev/null)  # the links back to this tree
if [ $(left) -gt 60 ]; then
  el "kernel A/B ($(left)s left)"
  timeout $(( $(left) - 3 )) python3 "$NEW/dev/kernel_ab_probe.py" --old "$NEW/.devdata/old" --frames 32 --out $OUT \
    > /tmp/kab.log 2>&1; echo "rc=$?"
  grep -E "^\{|rror" /tmp/kab.log | cut -c1-900
fi
el done
