# device call 24 (issue 10), 2026-12-03: JPEG's colour conversion, 4:2:0, DCT and quantisation as one CUDA kernel
# (jpeg_coefficients, kernels/cuda/jpeg.cu) instead of ~15 tensor operations over int64 coefficients: GPU tests of
# the JPEG encoder and the frame renderer, the stream sweep (random phases, new default engine), then the served
# path's cost at batch 16 and 64 (stage_costs_probe; compare docs/results/h200-stage-costs-up8.json).
#   bash dev/probe24.sh            (carry .whl and .devdata/shared; ~360 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe24 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 80 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_jpeg.py" "$REPO/tests/test_frames_gpu.py" 2>&1 \
  | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error|assert" | tail -6
el sweep
timeout 175 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 163 --streams 1,48,56,64,80 \
  --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8-up8 \
  --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 | grep -E "grpc|rror|Traceback" | tail -10
el stage costs
LEFT=$(( 430 - $(date +%s) + T0 ))
timeout $LEFT python3 "$REPO/dev/stage_costs_probe.py" --backend torch-compiled-fp8-up8 --batches 16,64 \
  --out $OUT > $OUT/stage_costs.log 2>&1; echo "rc=$?"
grep "^{" $OUT/stage_costs.log | cut -c1-250
grep -E "jpeg|scan|fr_blend|AUnary|Mean" $OUT/stage_costs.log | head -12
el done
