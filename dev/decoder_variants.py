"""Development probe (not installed): decoder variants on the GPU, speed at batch and accuracy against fp32.

    python dev/decoder_variants.py --out DIR [--budget 300] [--batches 1,32,64] [--variants previous,bf16,...]

FLEX-1 size, seeded random weights, the official template when FLEXRT_SHARED has it, expression codes from
EMO-1-shout+laugh. Variants (all torch.compile + one CUDA graph per batch size, as served):

  previous       the design before this probe: autocast bf16 over ``model.decode_frames`` with the per-frame Linear
                 weights stored in bf16, upsampler fp32, compiled per batch size (static shapes)
  bf16           ``model.deploy_decoder("bf16")``: fused q|k|v projections, constant bias-sink token
  bf16-up16      + StyleGAN upsampler in bf16 (channels-last)
  fp8            + FP8 sample-stream GEMMs (torch._scaled_mm), activations scaled per row at run time, upsampler fp32
  fp8-up16       + FP8 and the bf16 upsampler
  Any name is read as "-"-separated parts: "fp8" (row scales) or "fp8s" (static scales, calibrated once:
  ``fp8_calibration_inputs``) or "fp8f" (static, with the epilogues fused into the GEMMs: kernels/fp8_gemm.py),
  "up16" (bf16 upsampler), "up8" (its 3x3 convolutions in FP8, kernels/fp8_conv.py), "res16" (bf16 residual
  stream), "cudnnb" (cuDNN picks its convolution algorithms by
  timing them: torch.backends.cudnn.benchmark, set from then on), "cdt" (inductor's coordinate-descent tuning of its
  generated kernels), "mat" (inductor's max-autotune), "matg" (max-autotune of the GEMMs only: Triton templates, FP8
  ones included, with their epilogues fused, against cuBLAS), "bhsd" (the joint blocks' attention as before
  2026-12-02 evening: q/k/v transposed head-major before the join, fp32 q/k into attention;
  ``previous_block_attention``), e.g. fp8s-res16-up16. (A "tgelu" part measured the feed forward's GELU in sigmoid
  form against F.gelu's tanh on 2026-12-02, commit f22bb18: slower, removed.)

For each: compile + capture time, median / p99 ms per call (CUDA events, 10 warm-up, 40 timed, inputs rotating),
per-frame ms, and the accuracy against the fp32 eager decoder: max|diff|/max|ref| per output and the PSNR of the
EMO-1 frames rendered with the CuPy rasterizer at 512² (default camera, white background), min over frames.
Also the time of layer 0's sample-stream q|k|v GEMM at batch 32: the most a per-avatar cache of it could save.
Writes variants.json and prints a table last.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _shared():
    from flexrt.runtime.cli import find_shared_dir

    return find_shared_dir()


def _expressions(n: int) -> torch.Tensor:
    shared = _shared()
    seq = shared / "reference/assets/expressions/EMO-1-shout+laugh.npz" if shared else None
    if seq is not None and seq.is_file():
        e = np.load(seq)["expression_codes"].astype(np.float32)
    else:
        from flexrt.runtime.cli import synthetic_sequence

        e = synthetic_sequence(121).expressions
    return torch.from_numpy(e[np.arange(n) % len(e)])


def previous_block_attention(self, x, c):
    """DeployedJointBlock.attention before the token-major rewrite (kept here to measure against it): q/k/v are
    transposed to [B,H,N,hd] before the sample|context join, q/k enter attention in fp32 (autocast casts them).
    x [B,N,D], c [B,M,D] -> [B,N+M,D]."""
    import torch.nn.functional as F

    def qkv(linear, t, norm_q, norm_k):
        b, n, d = t.shape
        q, k, v = linear(t).view(b, n, 3, self.n_heads, d // self.n_heads).unbind(2)
        return norm_q(q).transpose(1, 2), norm_k(k).transpose(1, 2), v.transpose(1, 2)

    q, k, v = qkv(self.to_qkv, self.norm1(x), self.norm_q, self.norm_k)
    qc, kc, vc = qkv(self.add_qkv, self.norm1_context(c), self.norm_added_q, self.norm_added_k)
    y = F.scaled_dot_product_attention(torch.cat([q, qc], 2), torch.cat([k, kc], 2), torch.cat([v, vc], 2))
    b, h, s, hd = y.shape
    return y.transpose(1, 2).reshape(b, s, h * hd)


class PreviousPath:
    """The pre-deploy-decoder design, kept here only to measure against it in the same process."""

    def __init__(self, model, batch: int):
        self.model = copy.deepcopy(model).cuda().eval()
        htm = self.model._head_transformer
        for part in (htm._expression_mlp, htm._expression_transformer, htm._dataset_embedding):
            for m in part.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    m.to(torch.bfloat16)
        self.model._gaussian_decoder._stylegan_upsampler.fold()

        def fn(code, expr):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                g = self.model.decode_frames(code, expr)
            return tuple(g[k] for k in ("positions", "scales", "rotations", "colors", "opacities"))

        self.fn = torch.compile(fn, dynamic=False)
        self.graphs = {}

    @torch.no_grad()
    def decode(self, code, expr):
        from flexrt.model.gaussians import Gaussians

        b = code.shape[0]
        if b not in self.graphs:
            s_code, s_expr = torch.zeros_like(code), torch.zeros_like(expr)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.fn(s_code, s_expr)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs = self.fn(s_code, s_expr)
            self.graphs[b] = (graph, s_code, s_expr, outs)
        graph, s_code, s_expr, outs = self.graphs[b]
        s_code.copy_(code)
        s_expr.copy_(expr)
        graph.replay()
        return Gaussians(*outs)


def _time(decode, codes, exprs, batch: int, warmup: int = 10, iters: int = 40) -> dict:
    n = exprs.shape[0]
    for i in range(warmup):
        decode(codes[:batch], exprs[(i * batch) % (n - batch):][:batch])
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        e = exprs[(i * 7 * batch) % (n - batch):][:batch]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        decode(codes[:batch], e)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    med = times[len(times) // 2]
    return {"median_ms": med, "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
            "per_frame_ms": med / batch, "n": iters}


def _render(g, width=512):
    from flexrt.kernels import rasterize, sh_dc_to_rgb
    from flexrt.model.camera import default_camera, pixel_intrinsics, viewmat_from_cam2world

    c2w, K = default_camera()
    b = g.positions.shape[0]
    view = viewmat_from_cam2world(c2w).cuda().expand(b, 1, 4, 4)
    Ks = pixel_intrinsics(K, width, width).cuda().expand(b, 1, 3, 3)
    rgb, _ = rasterize(g.positions, g.rotations, g.scales, g.opacities[..., 0], sh_dc_to_rgb(g.colors), view, Ks,
                       width, width, background=torch.ones(3, device="cuda"), backend="cupy")
    return rgb.clamp(0, 1)


def _accuracy(decode, ref_out, ref_rgb, code, exprs) -> dict:
    out = decode(code, exprs)
    out = out.map(lambda t: t.clone())
    rel = {k: float((out[k] - ref_out[k]).abs().max() / ref_out[k].abs().max()) for k in ref_out.keys()}
    mse = ((_render(out) - ref_rgb) ** 2).flatten(1).mean(1)
    psnr = [float(10 * math.log10(1.0 / max(m, 1e-20))) for m in mse.tolist()]
    rel["render_psnr_min_db"], rel["render_psnr_median_db"] = min(psnr), float(np.median(psnr))
    return rel


def _profile(decode, codes, exprs, batch: int, top: int = 45) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            decode(codes[:batch], exprs[:batch])
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            rows.append({"name": ev.key[:100], "count": ev.count // 5, "ms_per_call": t / 1000 / 5})
    rows.sort(key=lambda r: -r["ms_per_call"])
    return rows[:top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "variants_out"))
    ap.add_argument("--budget", type=float, default=300.0, help="seconds; later variants are skipped when spent")
    ap.add_argument("--batches", default="1,32", help="batch sizes to time (default 1,32)")
    ap.add_argument("--variants", default="previous,fp8-up16,bf16-up16,bf16,fp8")
    ap.add_argument("--profile", default="", help="variant to profile at the largest batch (torch.profiler)")
    args = ap.parse_args(argv)
    from flexrt.model import load_official
    from flexrt.runtime.engines import TorchEngine

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    shared = _shared()
    tmpl = shared / "reference/assets/gghead_template.obj" if shared else None
    model = load_official("flex1", template=tmpl if tmpl and tmpl.is_file() else None)
    g = torch.Generator().manual_seed(0)
    nmax = max(batches)
    codes = torch.randn(nmax, model.num_head_tokens, model.hidden_dim, generator=g).cuda()
    exprs = _expressions(256).cuda()
    acc_exprs = exprs[::16][:8]  # 8 frames spread over the sequence
    acc_code = codes[:1].expand(8, -1, -1).contiguous()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batches": batches,
              "template": str(tmpl) if tmpl else "default", "G": model.num_gaussians, "variants": []}
    with torch.no_grad():
        ref_model = copy.deepcopy(model).cuda().eval()
        ref_out = ref_model.decode_frames(acc_code, acc_exprs).map(lambda t: t.clone())
        ref_rgb = _render(ref_out)
        del ref_model
        # the most a per-avatar cache of layer 0's sample-stream q|k|v could save: that GEMM alone
        lin = nn.Linear(768, 3 * 768).cuda().to(torch.bfloat16)
        x = torch.randn(32 * 1024, 768, device="cuda", dtype=torch.bfloat16)
        result["layer0_sample_qkv_gemm_batch32"] = _time(lambda c, e: lin(x), codes, exprs, 32)
    print("layer-0 q|k|v GEMM at batch 32:", result["layer0_sample_qkv_gemm_batch32"], flush=True)
    for name in args.variants.split(","):
        row = {"variant": name}
        if time.perf_counter() - t0 > args.budget:
            row["status"] = "skipped: budget spent"
            result["variants"].append(row)
            continue
        try:
            ts = time.perf_counter()
            if name == "previous":
                eng = PreviousPath(model, 1)
                decode = eng.decode
            else:
                parts = set(name.split("-"))
                if "cudnnb" in parts:
                    torch.backends.cudnn.benchmark = True
                inductor = importlib.import_module("torch._inductor.config")
                torch._dynamo.reset()  # compiled code is shared by engines of one structure: compile each afresh
                if "cdt" in parts:  # inductor tunes its generated kernels' block sizes (from then on)
                    inductor.coordinate_descent_tuning = True
                if "mat" in parts:  # inductor benchmarks Triton templates against the library GEMMs / convs
                    inductor.max_autotune = True
                if "matg" in parts:  # the same for the GEMMs only (convolutions stay cuDNN's)
                    inductor.max_autotune_gemm = True
                fp8 = ("fused" if "fp8f" in parts else "static" if "fp8s" in parts else "row" if "fp8" in parts
                       else "off")
                eng = TorchEngine(model, device="cuda", precision="bf16", graphs="cuda", compile=True, fp8=fp8,
                                  upsampler="fp8" if "up8" in parts else "bf16" if "up16" in parts else "fp32",
                                  residual="bf16" if "res16" in parts else "fp32")
                if "bhsd" in parts:  # before compiling: TorchEngine compiles lazily, at the first call
                    import types

                    for block in eng.decoder.blocks:
                        block.attention = types.MethodType(previous_block_attention, block)
                decode = eng.decode
            with torch.no_grad():
                for b in sorted(set(batches) | {8}):
                    tb = time.perf_counter()
                    decode(codes[:b], exprs[:b])
                    torch.cuda.synchronize()
                    row[f"first_call_s_batch{b}"] = round(time.perf_counter() - tb, 1)
                row["setup_s"] = round(time.perf_counter() - ts, 1)
                for b in batches:
                    row[f"batch{b}"] = _time(decode, codes, exprs, b)
                row["accuracy_vs_fp32"] = _accuracy(decode, ref_out, ref_rgb, acc_code, acc_exprs)
                if name == args.profile:
                    row["profile"] = _profile(decode, codes, exprs, max(batches))
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - reported in the output
            import traceback

            traceback.print_exc()
            row["status"] = f"error: {type(e).__name__}: {e}"[:400]
        eng = decode = None
        torch.cuda.empty_cache()
        result["variants"].append(row)
        (out / "variants.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
    (out / "variants.json").write_text(json.dumps(result, indent=1))
    hdr = " | ".join(f"b{b} ms/frame" for b in batches)
    print(f"\n| variant | setup s | {hdr} | positions rel | colors rel | PSNR min dB |")
    for r in result["variants"]:
        if r.get("status") != "ok":
            print(f"| {r['variant']} | {r['status']} |")
            continue
        a = r["accuracy_vs_fp32"]
        cells = " | ".join(f"{r[f'batch{b}']['per_frame_ms']:.3f}" for b in batches)
        print(f"| {r['variant']} | {r['setup_s']} | {cells} | {a['positions']:.1e} | {a['colors']:.1e} | "
              f"{a['render_psnr_min_db']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
