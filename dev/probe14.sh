# device call 14, 2026-12-02 evening: (issue 10) the gRPC transport alone with RAW-sized responses (786 KB, a 512²
# RGB8 frame), echo server, to tell whether RAW's collapse at 32 streams is the transport; (issue 12) the shipped
# model continued on a corpus rendered at 128x128 instead of 64x64 (eyes 2x larger in the targets).
#   bash dev/probe14.sh            (carry .whl, .devdata/shared and .devdata/init; ~570 s)
source dev/device_env.sh
T0=$(date +%s); el() { echo "[probe14 $(( $(date +%s) - T0 ))s] $*"; }
el "grpc io, 786 KB responses"
(cd /tmp && timeout 70 python3 -m flexrt.benchmarks.bench_grpc_io --streams 8,16,24,32,48 --payload-kb 768 \
  --duration 4 --out $OUT/io_raw 2>&1 | tail -5)
el "training at 128x128"
DEMO_END_S=$(( 565 - $(date +%s) + T0 )) COUNT_2D=4000 COUNT_3D=1000 CORPUS_EXTRA="--image-size 128" \
RECIPES='e1 tiny .devdata/init/b2.safetensors 3e-4 60 --rest-pairs --difference-weight 80
e2 tiny .devdata/init/b2.safetensors 3e-4 120 --rest-pairs --difference-weight 80' bash dev/demo_h200.sh 2>&1 | tail -25
el done
