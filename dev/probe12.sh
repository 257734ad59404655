# device call 12 (issue 10), prepared 2026-12-02 evening, NOT YET RUN: serving-pipeline variants by the stream
# sweep at the edge of the bar (32, 40, 48 streams, 512² JPEG, FP8 decoder), one process per variant
# (dev/serving_variants.py): as committed, the render stream above the decode stream, finer capture buckets, both.
#   bash dev/probe12.sh            (carry .whl and .devdata/shared; ~450 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe12 $(( $(date +%s) - T0 ))s] $*"; }
for v in default prio b4 prio-b4; do
  LEFT=$(( 560 - $(date +%s) + T0 )); [ $LEFT -lt 90 ] && { el "skip $v: ${LEFT}s left"; continue; }
  el "variant $v"
  timeout $(( LEFT < 150 ? LEFT : 150 )) python3 $REPO/dev/serving_variants.py $v -- --preset flex1 --phases grpc \
    --budget 135 --streams 32,40,48 --stream-encoding jpeg --duration 5 --stream-warmup 1 \
    --grpc-backend torch-compiled-fp8 --backends torch-compiled-fp8 --out $OUT/$v 2>&1 | grep -E "variant|grpc [0-9]+ streams|rror" | tail -6
done
el done
