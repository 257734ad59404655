# device call 37 (issue 10), 2026-12-03 (session 16): call 36's sweep of the new default (one CUDA graph per batch
# size) was cut at 1 stream by its budget (the fresh machine's first server start took ~200 s), so:
#   1. the stream sweep of the committed default (512² JPEG, random phases, 1-96; bench.json + plot come back),
#      with torch's recompile log counted (do the 64 batch sizes recompile the dynamic-batch decoder?)
#   2. FLEXRT_FP8_RESIDUAL_GEMM=rowwise at 56 / 64 / 72 streams, same machine (the A/B call 36 could not finish)
#   PROBE_S=520 bash dev/probe37.sh   (carry .whl and .devdata/shared; PROBE_S: the call's seconds, default 520)
source dev/device_env.sh
cd /tmp
PROBE_S=${PROBE_S:-520}
T0=$(date +%s); el() { echo "[probe37 $(( $(date +%s) - T0 ))s] $*"; }
BENCH="--preset flex1 --phases grpc --stream-encoding jpeg --duration 5 --stream-warmup 1 --stream-phases random \
  --grpc-backend torch-compiled-fp8-up8 --backends torch-compiled-fp8-up8"
el "sweep (one graph per batch size, epilogue residual GEMMs)"
SWEEP_S=$(( PROBE_S - 130 < 340 ? PROBE_S - 130 : 340 ))
TORCH_LOGS=recompiles timeout $(( SWEEP_S + 10 )) python3 -m flexrt.cli bench $BENCH --budget $SWEEP_S --streams 1,32,48,56,64,72,80,96 \
  --out $OUT/sweep > /tmp/sweep.log 2>&1
grep -E "grpc|rror|Traceback" /tmp/sweep.log | tail -14
echo "recompiles logged: $(grep -c 'Recompiling function' /tmp/sweep.log)"; grep -A3 -m1 "Recompiling function" /tmp/sweep.log | cut -c1-300
rm -f $OUT/sweep/bench.md
LEFT=$(( PROBE_S - $(date +%s) + T0 ))
if [ $LEFT -gt 90 ]; then
  el "rowwise residual GEMMs (${LEFT}s left)"
  FLEXRT_FP8_RESIDUAL_GEMM=rowwise timeout $(( LEFT - 5 )) python3 -m flexrt.cli bench $BENCH --budget $(( LEFT - 15 )) \
    --streams 64,56,72 --out $OUT/rowwise 2>&1 | grep -E "grpc [0-9]+ streams|rror" | tail -5
  rm -f $OUT/rowwise/bench.md
else
  el "rowwise: skipped (${LEFT}s left)"
fi
el done
