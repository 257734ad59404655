# device call 18 (issue 10), 2026-12-03: the kernel test again (its bar now the unfused path's own agreement), then
# the stream sweep with the fused FP8 epilogues (fp8="fused"), JPEG 1-96 streams, clients in 8 processes, and the
# committed default (fp8="static") at 48 and 64 streams in the same call.
#   bash dev/probe18.sh            (carry .whl and .devdata/shared; ~570 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe18 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_fp8_gemm.py" 2>&1 \
  | tee $OUT/gpu_tests.log | grep -E "passed|failed|Error" | tail -4
el fused
timeout 320 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 305 \
  --streams 1,32,40,48,56,64,80,96 --stream-encoding jpeg --duration 5 --stream-warmup 1 \
  --grpc-backend torch-compiled-fp8-fused --backends torch-compiled-fp8-fused --out $OUT/fused 2>&1 \
  | grep -E "grpc|rror|Traceback" | tail -12
python3 $REPO/dev/sweep_summary.py $OUT/fused/bench.json
el static
LEFT=$(( 570 - $(date +%s) + T0 ))
timeout $LEFT python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget $(( LEFT - 12 )) \
  --streams 48,64 --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8 \
  --backends torch-compiled-fp8 --out $OUT/static 2>&1 | grep -E "grpc|rror|Traceback" | tail -6
python3 $REPO/dev/sweep_summary.py $OUT/static/bench.json
el done
