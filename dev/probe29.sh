# device call 29 (issue 10), 2026-12-03: the stream sweep with the final code of the session (TMA FP8 GEMMs, the
# fused q|k|v + head RMS norm kernel), 512² JPEG, random phases; the session's last ~270 s of device time.
#   bash dev/probe29.sh            (carry .whl, .devdata/shared; ~130 s)
source dev/device_env.sh
cd /tmp
timeout 140 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 110 --streams 1,48,56,64,96 \
  --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8-up8 \
  --backends torch-compiled-fp8-up8 --stream-phases random --out $OUT/sweep 2>&1 | grep -E "grpc|rror|Traceback|engine" | tail -12
