# device call 16 (issue 10), prepared 2026-12-02 evening, NOT YET RUN: the sample stream's FP8 GEMMs with their
# epilogues fused (Triton: GELU + quantise for ff_in, the residual add for to_out / ff_out) against today's cuBLAS
# GEMM + inductor kernels, at 32 and 64 frames: agreement with the fp32 function and time. If they win by more than
# a few percent, wire them into Fp8Linear / DeployedJointBlock and re-measure the decoder and the sweep.
#   bash dev/probe16.sh            (carry .whl; ~90 s)
source dev/device_env.sh
cd /tmp
timeout 240 python3 $REPO/dev/fused_ffn_probe.py --out $OUT 2>&1 | grep -v -i warn | tail -10
