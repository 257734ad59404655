# device call 11 (issue 10): inductor's max-autotune for the GEMMs only ("matg": Triton templates for the FP8
# _scaled_mm and bf16 GEMMs, with the following GELU / quantise / LayerNorm fused into their epilogues where the
# template wins) against the default FP8 decoder, same process; profile of the tuned one at batch 64.
#   bash dev/probe11.sh            (carry .whl and .devdata/shared; ~300 s)
source dev/device_env.sh
cd /tmp
timeout 290 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 90 --batches 32,64 \
  --variants fp8s-res16-up16,fp8s-res16-up16-matg --profile fp8s-res16-up16-matg 2>&1 | grep -v -i warn | tail -6
python3 - <<'PY'
import json, os
for r in json.load(open(os.environ["OUT"] + "/variants.json"))["variants"]:
    for p in r.get("profile", [])[:26]:
        print(f'{p["ms_per_call"]:8.3f} ms x{p["count"]:4d}  {p["name"][:110]}')
PY
