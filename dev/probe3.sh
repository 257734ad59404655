# device call 3: GPU tests, the FLEX-1 stream sweep, expression -> frame at batch 1, EMO-1 PSNR, decoder vs before
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe3 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_frames_gpu.py $REPO/tests/test_jpeg.py \
  $REPO/tests/test_engines.py 2>&1 | tee $OUT/gpu_tests.log | tail -4
el grpc
timeout 250 python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget 235 --streams 1,16,24,32,40,48,64,96 \
  --stream-encoding jpeg,raw --creation-streams 32 --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-bf16 \
  --backends torch-compiled-bf16 \
  --out $OUT/bench 2>&1 | grep -E "grpc|rror|Traceback" | tail -24
el e2e
timeout 75 python3 -m flexrt.cli bench --preset flex1 --phases e2e --budget 65 --backends torch-compiled-bf16 \
  --resolutions 512 --batch-sizes 1,32 --encodings raw,jpeg --iters 50 --out $OUT/e2e 2>&1 | grep -E "e2e|rror" | tail -8
el psnr
timeout 70 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-bf16 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -4
el variants
timeout 130 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 100 --batches 1,32 --variants bf16-up16,previous 2>&1 \
  | grep -v -i warn | tail -5
el done
python3 - <<'PY'
import json, os
p = os.environ["OUT"] + "/bench/bench.json"
if os.path.exists(p):
    d = json.load(open(p)); print("server", d.get("grpc", {}).get("server", {}).get("engine"))
PY
