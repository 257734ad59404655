# device call 8 (issue 10): inductor's kernel tuning on the FP8 decoder: coordinate-descent tuning of its generated
# (elementwise / norm) kernels, then max-autotune on top, against the untuned FP8 decoder in the same process.
#   bash dev/probe8.sh            (carry .whl and .devdata/shared; ~300 s)
source dev/device_env.sh
cd /tmp
timeout 270 python3 $REPO/dev/decoder_variants.py --out $OUT --budget 120 --batches 32,64 \
  --variants fp8s-res16-up16,fp8s-res16-up16-cdt 2>&1 | grep -v -i warn | tail -6
