# device call 19 (issues 10 and 12), 2026-12-03: (1) the fused-epilogue kernel's GPU test with its bar set to the
# unfused path's own agreement (call 18's run of it failed on a bar relative to each output's size, which Hopper's
# FP8 accumulation misses near zero in both paths), in the background; (2) f2 of call 15 again (its weights were lost
# here): the shipped e2 continued on the 128x128 corpus with feature masks, feature weight 200, for its 2,744 steps.
#   cp training/assets/flexavatar_tiny_corpus.safetensors .devdata/init/e2.safetensors
#   bash dev/probe19.sh            (carry .whl, .devdata/shared and .devdata/init; ~500 s)
source dev/device_env.sh
T0=$(date +%s)
( cd /tmp && timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_gemm.py" \
  > $OUT/gpu_tests.log 2>&1 ) &
DEMO_END_S=560 COUNT_2D=4000 COUNT_3D=1000 CORPUS_EXTRA="--image-size 128 --feature-masks" \
RECIPES='f2 tiny .devdata/init/e2.safetensors 3e-4 120 --rest-pairs --difference-weight 80 --feature-weight 200 --steps 2744' \
  bash dev/demo_h200.sh 2>&1 | tail -14
wait
grep -E "passed|failed|Error|assert" $OUT/gpu_tests.log | tail -6
echo "[probe19 $(( $(date +%s) - T0 ))s] done"
