# device call 16 (issue 10), prepared 2026-12-02 evening, NOT YET RUN: the feed forward's first GEMM with its GELU
# and quantisation fused into the GEMM's epilogue (Triton), against today's cuBLAS GEMM + inductor kernel, at 32 and
# 64 frames: agreement (e4m3 steps) and time. If it wins by more than a few percent, wire it into Fp8Linear.
#   bash dev/probe16.sh            (carry .whl; ~90 s)
source dev/device_env.sh
cd /tmp
timeout 240 python3 $REPO/dev/fused_ffn_probe.py --out $OUT 2>&1 | grep -v -i warn | tail -8
