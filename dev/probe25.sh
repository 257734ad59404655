# device call 25 (issue 10), 2026-12-03: the sweep points call 24 left out (32, 40, 96 streams), same code, random
# phases, so docs/results/h200-streams.json covers 1-96 streams of one engine (merged from calls 24 and 25).
#   bash dev/probe25.sh            (carry .whl and .devdata/shared; ~150 s)
source dev/device_env.sh
cd /tmp
timeout 150 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 140 --streams 32,40,96 \
  --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8-up8 \
  --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 | grep -E "grpc|rror|Traceback" | tail -8
