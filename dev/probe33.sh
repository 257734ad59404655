# device call 33 (issue 10), 2026-12-03: call 32's stream sweep again, for its files (call 32's bench.json did not
# come back: more than 8 files under $OUT) and as a second run: commit 63ac14f (blend with the exact sub-tile test,
# epilogue residual GEMMs), 512² JPEG, random phases, 1-96 streams (the session's last ~7 minutes of device time).
#   bash dev/probe33.sh            (carry .whl and .devdata/shared; ~250 s on a fresh machine)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe33 $(( $(date +%s) - T0 ))s] $*"; }
el sweep
timeout 245 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 236 \
  --streams 1,32,48,56,64,72,80,96 --stream-encoding jpeg --duration 5 --stream-warmup 1 \
  --grpc-backend torch-compiled-fp8-up8 --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 \
  | grep -E "grpc|rror|Traceback" | tail -12
rm -f $OUT/sweep/bench.md  # at most 8 files come back
el done
