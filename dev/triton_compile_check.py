"""Compile the FP8 GEMM and convolution kernels (kernels/_fp8_triton.py) for sm_90 on a machine without a GPU: Triton's own
front end, LLVM and the ptxas it bundles, every autotuning config of kernels/fp8_gemm.py. Catches what the CPU
interpreter cannot (layouts, TMA and wgmma lowering, shared memory over the limit); says nothing about speed or
numbers. Run it with the Triton the device has (a venv: pip install --no-deps triton==3.6.0):

    python dev/triton_compile_check.py
"""
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flexrt.kernels import _fp8_triton as K

TARGET = GPUTarget("cuda", 90, 32)


def compile_one(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int, maxnreg=None):
    sig = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    t = time.time()
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg:
        options["maxnreg"] = maxnreg
    k = triton.compile(src, target=TARGET, options=options)
    return time.time() - t, k.metadata.shared, registers(k.asm["ptx"])


def registers(ptx: str) -> int:
    """Registers a thread, from the bundled ptxas -v (what decides 1 or 2 programs an SM)."""
    import os
    import re
    import subprocess
    import tempfile
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        run = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    found = re.findall(r"Used (\d+) registers", run.stderr)
    return int(found[0]) if found else -1


def main() -> int:
    failures = 0
    epi = {"w_scale_ptr": "*fp32", "bias_ptr": "*bf16", "x_scale_ptr": "*fp32", "out_scale_ptr": "*fp32",
           "M": "i32", "N": "i32", "K": "i32", "M_CLASS": "i32"}
    for residual in (True, False):
        out_ty = "bf16" if residual else "fp8e4nv"
        for bm, bn, bk, w, s, c in ((128, 256, 128, 8, 3, 1), (128, 256, 64, 8, 4, 1), (128, 128, 128, 8, 3, 1),
                                    (128, 128, 128, 8, 3, 2), (128, 128, 64, 8, 3, 2), (256, 128, 128, 8, 3, 1)):
            for flatten in (True, False):
                sig = {**epi, "x_desc": f"tensordesc<fp8e4nv[{bm}, {bk}]>", "w_desc": f"tensordesc<fp8e4nv[{bn}, {bk}]>",
                       "out_desc": f"tensordesc<{out_ty}[{bm}, {bn}]>", "res_desc": f"tensordesc<bf16[{bm}, {bn}]>"}
                cx = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "NUM_SMS": 132, "CTAS": c,
                      "FLATTEN": flatten, "RESIDUAL": residual}
                name = f"gemm_tma residual={residual} {bm}x{bn}x{bk} w{w} s{s} ctas{c} flatten={flatten}"
                try:
                    dt, smem, regs = compile_one(K.fp8_gemm_epilogue_tma, sig, cx, w, s, 128 if c == 2 else None)
                    print(f"ok   {name}: {dt:.1f} s, {smem} B shared, {regs} registers")
                except Exception as e:  # noqa: BLE001 (report every config)
                    failures += 1
                    print(f"FAIL {name}: {type(e).__name__}: {str(e)[:400]}")
    for bm, bk, w, s, c in ((128, 128, 8, 3, 1), (128, 64, 8, 4, 1), (128, 128, 8, 4, 1), (64, 128, 4, 4, 1),
                            (64, 128, 4, 3, 2), (128, 64, 8, 3, 2)):
        for flatten in (True, False):
            sig = {"x_desc": f"tensordesc<fp8e4nv[{bm}, {bk}]>", "w_desc": f"tensordesc<fp8e4nv[64, {bk}]>",
                   "w_scale_ptr": "*fp32", "bias_ptr": "*bf16", "x_scale_ptr": "*fp32", "gain_ptr": "*fp32",
                   "out_ptr": "*bf16", "M": "i32", "K": "i32", "M_CLASS": "i32", "N_TOKENS": "i32", "N_JOINT": "i32",
                   "N_HEADS": "i32", "eps": "fp32"}
            cx = {"SUB": 64, "BLOCK_M": bm, "BLOCK_K": bk, "GROUP_M": 8, "NUM_SMS": 132, "CTAS": c, "FLATTEN": flatten}
            name = f"qkv_rmsnorm {bm}x192x{bk} w{w} s{s} ctas{c} flatten={flatten}"
            try:
                dt, smem, regs = compile_one(K.fp8_qkv_rmsnorm_tma, sig, cx, w, s,
                                             65536 // (2 * 32 * w) if c == 2 else None)
                print(f"ok   {name}: {dt:.1f} s, {smem} B shared, {regs} registers")
            except Exception as e:  # noqa: BLE001
                failures += 1
                print(f"FAIL {name}: {type(e).__name__}: {str(e)[:400]}")
    conv = {"x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv", "w_scale_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": "*bf16",
            "x_scale_ptr": "*fp32", "B": "i32", "H": "i32", "W": "i32", "C": "i32", "N": "i32", "B_CLASS": "i32"}
    for bm, bn, bk, w, s in ((128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 64, 4, 4),
                             (256, 128, 128, 8, 3), (128, 256, 64, 8, 4), (64, 128, 128, 4, 4)):
        name = f"fp8_conv3x3 {bm}x{bn}x{bk} w{w} s{s}"
        try:
            dt, smem, regs = compile_one(K.fp8_conv3x3_kernel, conv,
                                         {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, w, s)
            print(f"ok   {name}: {dt:.1f} s, {smem} B shared, {regs} registers")
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:400]}")
    print(f"triton {triton.__version__}: {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
