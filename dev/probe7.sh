# device call 7 (issue 10): where the FP8 decoder's time goes at batch 64 (torch.profiler), and two variants not
# reached in call 6: cuDNN's timed algorithm choice for the upsampler (cudnnb), FP8 with the fp32 residual.
#   bash dev/probe7.sh            (carry .whl and .devdata/shared; ~250 s)
source dev/device_env.sh
cd /tmp
timeout 250 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 200 --batches 32,64 \
  --variants fp8s-res16-up16,fp8s-res16-up16-cudnnb,fp8s-up16 --profile fp8s-res16-up16 2>&1 | grep -v -i warn | tail -8
python3 - <<'PY'
import json, os
for r in json.load(open(os.environ["OUT"] + "/variants.json"))["variants"]:
    for p in r.get("profile", []):
        print(f'{p["ms_per_call"]:8.3f} ms x{p["count"]:4d}  {p["name"]}')
PY
