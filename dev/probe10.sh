# device call 10 (issue 10): the joint blocks' attention token-major (no head-major transposes or fp32 q/k around
# attention): GPU tests, decoder variants against the previous
# default in the same process (speed at batch 1/32/64, render PSNR vs fp32, profile of the new default at batch 64),
# the served path's EMO-1 PSNR, then the stream sweep with the new default.
#   bash dev/probe10.sh            (carry .whl and .devdata/shared; ~570 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe10 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_fp8.py $REPO/tests/test_engines.py 2>&1 \
  | tee $OUT/gpu_tests.log | tail -3
el variants
timeout 230 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 190 --batches 1,32,64 \
  --variants fp8s-res16-up16-bhsd,fp8s-res16-up16 --profile fp8s-res16-up16 2>&1 \
  | grep -v -i warn | tail -6
python3 - <<'PY'
import json, os
for r in json.load(open(os.environ["OUT"] + "/variants.json"))["variants"]:
    for p in r.get("profile", [])[:24]:
        print(f'{p["ms_per_call"]:8.3f} ms x{p["count"]:4d}  {p["name"][:110]}')
PY
el psnr
timeout 80 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -2
el grpc
LEFT=$(( 560 - $(date +%s) + T0 ))
timeout $LEFT python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget $(( LEFT - 15 )) \
  --streams 32,40,48,64 --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend torch-compiled-fp8 \
  --backends torch-compiled-fp8 --out $OUT/bench 2>&1 | grep -E "grpc|rror|Traceback" | tail -8
python3 $REPO/dev/sweep_summary.py $OUT/bench/bench.json
el done
