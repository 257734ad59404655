"""Compile the FP8 GEMM and convolution kernels (kernels/_fp8_triton.py) for sm_90 on a machine without a GPU: Triton's
own front end, LLVM and the ptxas it bundles, every autotuning config of kernels/fp8_gemm.py (POINTER_TILES is not
compiled: the pointer kernel is the Ada / A-B path), TMA_TILES, QKV_TILES and kernels/fp8_conv.py's CONV_TILES.
Catches what the CPU interpreter cannot (layouts, TMA and wgmma lowering, shared memory over the limit) and reports
what decides how many programs share an SM (shared memory, registers, spills); says nothing about speed or numbers.
Run it with the Triton the device has (a venv: pip install --no-deps triton==3.6.0):

    python dev/triton_compile_check.py

Integer arguments and pointers are compiled as divisible by 16, as Triton specialises them at launch for FLEX-1's
shapes (without that hint the convolution's loads are not vectorised, so not pipelined, and its shared memory reads
one stage).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flexrt.kernels import _fp8_triton as K
from flexrt.kernels.fp8_conv import CONV_TILES
from flexrt.kernels.fp8_gemm import QKV_TILES, TMA_TILES, register_cap

TARGET = GPUTarget("cuda", 90, 32)
SM_SHARED = 228 * 1024  # H100 / H200: shared memory an SM (1 KB of it reserved a program)
SM_REGISTERS = 65536


def compile_one(fn, signature: dict, constexprs: dict, divisible: list, num_warps: int, num_stages: int,
                maxnreg=None):
    sig = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in divisible}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    t = time.time()
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg:
        options["maxnreg"] = maxnreg
    k = triton.compile(src, target=TARGET, options=options)
    regs, spill = ptxas_usage(k.asm["ptx"])
    return time.time() - t, k.metadata.shared, regs, spill


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers a thread, bytes of spill stores), from the bundled ptxas -v."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        run = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    regs = re.findall(r"Used (\d+) registers", run.stderr)
    spill = re.findall(r"(\d+) bytes spill stores", run.stderr)
    return (int(regs[0]) if regs else -1), (int(spill[0]) if spill else -1)


def programs_an_sm(shared: int, regs: int, warps: int) -> int:
    per_warp = -(-max(regs, 1) * 32 // 256) * 256  # registers are allocated in 256s a warp
    return min(SM_SHARED // (shared + 1024), SM_REGISTERS // (per_warp * warps))


def report(name: str, run) -> int:
    try:
        dt, smem, regs, spill, warps, want = run()
    except Exception as e:  # noqa: BLE001 (report every config)
        print(f"FAIL {name}: {type(e).__name__}: {str(e)[:400]}")
        return 1
    fit = programs_an_sm(smem, regs, warps)
    note = "" if fit >= want else f"  (asks for {want} an SM: the extra programs wait)"
    print(f"ok   {name}: {dt:.1f} s, {smem // 1024} KB shared, {regs} registers, {spill} B spilled, "
          f"{fit} an SM{note}")
    return 0


def main() -> int:
    failures = 0
    epi = {"w_scale_ptr": "*fp32", "bias_ptr": "*bf16", "x_scale_ptr": "*fp32", "out_scale_ptr": "*fp32",
           "M": "i32", "N": "i32", "K": "i32", "M_CLASS": "i32"}
    for residual in (True, False):
        out_ty = "bf16" if residual else "fp8e4nv"
        for bm, bn, bk, w, s, c, flatten in TMA_TILES:
            sig = {**epi, "x_desc": f"tensordesc<fp8e4nv[{bm}, {bk}]>", "w_desc": f"tensordesc<fp8e4nv[{bn}, {bk}]>",
                   "out_desc": f"tensordesc<{out_ty}[{bm}, {bn}]>", "res_desc": f"tensordesc<bf16[{bm}, {bn}]>"}
            cx = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "NUM_SMS": 132, "CTAS": c,
                  "FLATTEN": flatten, "RESIDUAL": residual, "HW_TANH": True}
            failures += report(
                f"gemm_tma residual={residual:d} {bm}x{bn}x{bk} w{w} s{s} ctas{c} flatten={flatten:d}",
                lambda: (*compile_one(K.fp8_gemm_epilogue_tma, sig, cx, ["M", "N", "K"], w, s, register_cap(w, c)),
                         w, c))
    for bm, bk, w, s, c, flatten in QKV_TILES:
        sig = {"x_desc": f"tensordesc<fp8e4nv[{bm}, {bk}]>", "w_desc": f"tensordesc<fp8e4nv[64, {bk}]>",
               "w_scale_ptr": "*fp32", "bias_ptr": "*bf16", "x_scale_ptr": "*fp32", "gain_ptr": "*fp32",
               "out_ptr": "*bf16", "M": "i32", "K": "i32", "M_CLASS": "i32", "N_TOKENS": "i32", "N_JOINT": "i32",
               "N_HEADS": "i32", "eps": "fp32"}
        cx = {"SUB": 64, "BLOCK_M": bm, "BLOCK_K": bk, "GROUP_M": 8, "NUM_SMS": 132, "CTAS": c, "FLATTEN": flatten}
        failures += report(
            f"qkv_rmsnorm {bm}x192x{bk} w{w} s{s} ctas{c} flatten={flatten:d}",
            lambda: (*compile_one(K.fp8_qkv_rmsnorm_tma, sig, cx, ["w_scale_ptr", "bias_ptr", "gain_ptr", "out_ptr",
                                                                  "M", "K", "N_TOKENS"], w, s, register_cap(w, c)),
                     w, c))
    for shuffle in (0, 2):  # bf16 out, or the up-conv's pixel-shuffled e4m3 out (one phase a tile)
        conv = {"x_ptr": "*fp8e4nv", "w_ptr": "*fp8e4nv", "w_scale_ptr": "*fp32", "bias_ptr": "*fp32",
                "out_ptr": "*fp8e4nv" if shuffle else "*bf16", "x_scale_ptr": "*fp32", "out_scale_ptr": "*fp32",
                "B": "i32", "H": "i32", "W": "i32", "C": "i32", "N": "i32", "N_OUT": "i32", "B_CLASS": "i32"}
        divisible = ["x_ptr", "w_ptr", "w_scale_ptr", "bias_ptr", "out_ptr", "x_scale_ptr", "out_scale_ptr", "H", "W",
                     "C", "N", "N_OUT"]
        for bm, bn, bk, w, s in CONV_TILES:
            failures += report(
                f"fp8_conv3x3 shuffle={shuffle:d} {bm}x{bn}x{bk} w{w} s{s}",
                lambda: (*compile_one(K.fp8_conv3x3_kernel, conv, {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
                                                                   "GROUP_M": 8, "SHUFFLE": shuffle}, divisible, w, s),
                         w, 1))
    print(f"triton {triton.__version__}: {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
