# device call 6 (issue 10): static-scale FP8 GEMMs and the bf16 residual stream: GPU tests, decoder variants
# (speed at batch 1/32/64 and render PSNR vs fp32, same process), the served path's EMO-1 PSNR, then the stream sweep
# with the faster of torch-compiled-fp8 / torch-compiled-bf16 as measured by the variants just before.
#   bash dev/probe6.sh            (carry .whl and .devdata/shared; ~560 s)
source dev/device_env.sh
cd /tmp
T0=$(date +%s); el() { echo "[probe6 $(( $(date +%s) - T0 ))s] $*"; }
el tests
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider $REPO/tests/test_fp8.py 2>&1 | tee $OUT/gpu_tests.log | tail -3
el variants
timeout 250 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 215 --batches 1,32,64 \
  --variants bf16-up16,fp8s-res16-up16,res16-up16,fp8s-up16,fp8s-res16-up16-cudnnb 2>&1 | grep -v -i warn | tail -8
BACKEND=$(python3 - <<'PY'
import json, os
try:
    v = {r["variant"]: r for r in json.load(open(os.environ["OUT"] + "/variants.json"))["variants"] if r.get("status") == "ok"}
    a, b = v["bf16-up16"], v["fp8s-res16-up16"]
    ok = b["accuracy_vs_fp32"]["render_psnr_min_db"] >= 45 and b["batch32"]["per_frame_ms"] < a["batch32"]["per_frame_ms"]
    print("torch-compiled-fp8" if ok else "torch-compiled-bf16")
except Exception:
    print("torch-compiled-bf16")
PY
)
el "psnr (sweep backend: $BACKEND)"
timeout 80 python3 -m flexrt.benchmarks.fp16_render_psnr --preset flex1 --pairs "served-fp8 vs torch-fp32" \
  --out $OUT/psnr 2>&1 | tail -3
el grpc
LEFT=$(( 555 - $(date +%s) + T0 ))
timeout $LEFT python3 -m flexrt.cli bench --preset flex1 --phases grpc --budget $(( LEFT - 15 )) \
  --streams 32,48,64,80,96 --stream-encoding jpeg --duration 5 --stream-warmup 1 --grpc-backend $BACKEND \
  --backends $BACKEND --out $OUT/bench 2>&1 | grep -E "grpc|rror|Traceback" | tail -12
python3 $REPO/dev/sweep_summary.py $OUT/bench/bench.json
el done
