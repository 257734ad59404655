# device call 17 (issue 10), 2026-12-03: the decoder with its FP8 GEMM epilogues fused (fp8="fused",
# kernels/fp8_gemm.py) against the committed default (fp8="static") in one process: GPU tests, decoder variants at
# batch 1/32/64 with render PSNR vs fp32, the served path's EMO-1 PSNR, expression -> frame at batch 1 and 32.
#   bash dev/probe17.sh            (carry .whl and .devdata/shared; ~540 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe17 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_fp8_gemm.py $REPO/tests/test_fp8.py \
  $REPO/tests/test_engines.py 2>&1 | tee $OUT/gpu_tests.log | tail -4
el variants
timeout 200 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 170 --batches 1,32,64 \
  --variants fp8s-res16-up16,fp8f-res16-up16 --profile fp8f-res16-up16 2>&1 | grep -v -i warn | tail -5
python3 - <<'PY'
import json, os
for r in json.load(open(os.environ["OUT"] + "/variants.json"))["variants"]:
    for p in r.get("profile", [])[:16]:
        print(f'{p["ms_per_call"]:8.3f} ms x{p["count"]:4d}  {p["name"][:110]}')
PY
el psnr
timeout 90 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8-fused vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -2
el e2e
LEFT=$(( 560 - $(date +%s) + T0 ))
timeout $LEFT python3 -m flexrt.cli bench --preset flex1 --phases e2e --budget $(( LEFT - 10 )) \
  --backends torch-compiled-fp8,torch-compiled-fp8-fused --resolutions 512 --batch-sizes 1,32 --encodings jpeg \
  --iters 50 --out $OUT/e2e 2>&1 | grep -E "e2e|rror" | tail -8
el done
