# device call 39 (issue 10), 2026-12-03 (session 17): the 0.35 ms decoder goal, against the previous commit
# (31cf3c8, carried in .devdata/old), same machine:
#   * the GELU GEMM's epilogue with one tanh.approx.f32 instead of exp2 + a division
#   * the up-convs' epilogue pixel-shuffles and quantises for the next convolution (no bf16 image, no shuffle kernel)
#   * the convolution's tap x channel-block loops flattened into one
# Steps: GPU tests of the kernels; the served path's decode / render stage costs at 16 / 32 / 64 frames, the served
# EMO-1 PSNR vs fp32; the previous commit's stage costs.
#   bash dev/probe39.sh      (carry .whl, .devdata/shared, .devdata/old; ~560 s)
source dev/device_env.sh
NEW=$REPO
cd /tmp
T0=$(date +%s); el() { echo "[probe39 $(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( 575 - $(date +%s) + T0 )); }
el "kernel tests"
timeout 130 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 "$NEW/tests/test_fp8_conv.py" \
  "$NEW/tests/test_fp8_gemm.py" -k "gpu_triton or gpu_qkv" > /tmp/gpu_tests.log 2>&1; echo "rc=$?"
grep -E "passed|failed|Error|assert|s call" /tmp/gpu_tests.log | tail -12 | cut -c1-300
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
(cd "$NEW/.devdata/old" && source dev/device_env.sh >/dev/null && cd /tmp && timeout $(( $(left) - 3 )) \
  python3 "$NEW/.devdata/old/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 16,32,64 \
  --graphs-for-batches-only --iters 20 --out $OUT/old > /tmp/stage_old.log 2>&1; echo "rc=$?")
grep -E "^\{|^setup" /tmp/stage_old.log | cut -c1-260
el done
