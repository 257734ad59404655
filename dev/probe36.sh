# device call 36 (issue 10), prepared 2026-12-03 (session 16): one CUDA graph per batch size (no padding to
# buckets 8 frames apart; dev/batcher_sim.py predicted 64 streams p99 78 -> 41 ms), measured against the old
# buckets on the same machine, then the row-wise residual GEMMs on top:
#   1. GPU tests of the renderer's shared per-size buffers and the engine's per-size graphs (a failure stops it)
#   2. the stream sweep of the new default (512² JPEG, random phases, 1-96; its bench.json + plot come back)
#   3. the same at 56 / 64 / 72 streams with the old buckets (dev/serving_variants.py coarse)
#   4. the new default with FLEXRT_FP8_RESIDUAL_GEMM=rowwise at 56 / 64 / 72 streams (if time is left)
#   bash dev/probe36.sh            (carry .whl and .devdata/shared; ~580 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe36 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_frames_gpu.py" \
  "$REPO/tests/test_engines.py::test_gpu_torch_cuda_graphs_equal_eager_one_graph_per_batch_size" > /tmp/gpu_tests.log 2>&1
TESTS_RC=$?
grep -E "passed|failed|Error|assert" /tmp/gpu_tests.log | tail -8
[ $TESTS_RC -eq 0 ] || { el "GPU tests failed (rc=$TESTS_RC): stopping"; tail -30 /tmp/gpu_tests.log; exit 1; }
BENCH="--preset flex1 --phases grpc --stream-encoding jpeg --duration 5 --stream-warmup 1 --stream-phases random \
  --grpc-backend torch-compiled-fp8-up8 --backends torch-compiled-fp8-up8"
el "sweep (one graph per batch size)"
timeout 250 python3 -m flexrt.cli bench $BENCH --budget 240 --streams 1,32,48,56,64,72,80,96 --out $OUT/sweep 2>&1 \
  | grep -E "grpc|warm-up (for|1/|64/|8/)|GPU memory|rror|Traceback" | tail -18
rm -f $OUT/sweep/bench.md
LEFT=$(( 585 - $(date +%s) + T0 ))
el "coarse buckets (${LEFT}s left)"
timeout $(( LEFT < 160 ? LEFT : 160 )) python3 $REPO/dev/serving_variants.py coarse -- $BENCH --budget 150 \
  --streams 56,64,72 --out $OUT/coarse 2>&1 | grep -E "variant|grpc [0-9]+ streams|warm-up for|rror" | tail -6
rm -f $OUT/coarse/bench.md
LEFT=$(( 585 - $(date +%s) + T0 ))
if [ $LEFT -gt 100 ]; then
  el "rowwise residual GEMMs (${LEFT}s left)"
  FLEXRT_FP8_RESIDUAL_GEMM=rowwise timeout $(( LEFT - 5 )) python3 -m flexrt.cli bench $BENCH --budget $(( LEFT - 15 )) \
    --streams 56,64,72 --out $OUT/rowwise 2>&1 | grep -E "grpc [0-9]+ streams|warm-up for|rror" | tail -5
  rm -f $OUT/rowwise/bench.md
else
  el "rowwise: skipped (${LEFT}s left)"
fi
el done
