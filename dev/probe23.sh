# device call 23 (issue 10), 2026-12-03: the stream sweep with the new GPU default (FP8 GEMMs with fused epilogues +
# FP8 upsampler convolutions, torch-compiled-fp8-up8), clients sending at random phases (independent clients,
# --stream-phases random: the new bench default), JPEG 1-96 streams; then the same engine with all streams aligned
# (the pattern of every earlier sweep) and the previous default (fused, bf16 convolutions) at random phases, in the
# same call.
#   bash dev/probe23.sh            (carry .whl and .devdata/shared; ~540 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe23 $(( $(date +%s) - T0 ))s] $*"; }
python3 -c "from flexrt.runtime.engines.torch_engine import resolve_decoder_options as r; print('auto:', r('cuda', 'bf16'))"
sweep() {  # name backend phases streams seconds
  timeout $5 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget $(( $5 - 12 )) --streams $4 \
    --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend $2 --backends $2 --stream-phases $3 \
    --out $OUT/$1 2>&1 | grep -E "grpc|rror|Traceback" | tail -14
  python3 $REPO/dev/sweep_summary.py $OUT/$1/bench.json
}
el up8 random
sweep up8-random torch-compiled-fp8-up8 random 1,32,40,48,56,64,80,96 185
el up8 aligned
sweep up8-aligned torch-compiled-fp8-up8 aligned 32,40,48,64 140
el fused random
LEFT=$(( 530 - $(date +%s) + T0 ))
sweep fused-random torch-compiled-fp8-fused random 40,48,56,64 $LEFT
el done
