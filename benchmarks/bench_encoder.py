"""Encoder (avatar creation) latency: image + camera -> avatar code, DINOv2 included.

    python -m flexrt.benchmarks.bench_encoder --engines DIR [--out DIR] [--iters 30]

Backends: PyTorch eager fp32 (the official inference setting) and bf16 autocast, ONNX Runtime fp32 / fp16 (CUDA EP
with IO binding on a GPU, CPU EP otherwise). Batch 1, 512x512 input, warm-up then CUDA-event timing (perf_counter
on the CPU), median and p99, inputs rotating between 4 images. Unavailable backends are reported with the reason.
Writes encoder.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

BACKENDS = {"torch-eager-fp32": ("torch", "fp32"), "torch-eager-bf16": ("torch", "bf16"),
            "ort-fp32": ("onnxruntime", "fp32"), "ort-fp16": ("onnxruntime", "fp16")}


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1000
    return run


def bench(engines: Path, device: str, iters: int, warmup: int) -> list[dict]:
    from flexrt.export.onnx_export import example_encoder_inputs
    from flexrt.runtime.engines import load_engine

    dev = torch.device(device)
    imgs, c2w, K = example_encoder_inputs(4)
    imgs, c2w, K = imgs.to(dev), c2w.to(dev), K.to(dev)
    timer = _timer(dev)
    rows = []
    for name, (backend, precision) in BACKENDS.items():
        row = {"backend": name, "batch": 1, "device": str(dev)}
        try:
            kw = {"graphs": "none", "compile": False} if backend == "torch" else {}
            engine = load_engine(engines, backend=backend, device=device, precision=precision, **kw)
            row["engine"] = engine.info.describe()
            times = []
            for i in range(warmup + iters):
                j = i % 4
                t = timer(lambda: engine.encode(imgs[j:j + 1], c2w[j:j + 1], K[j:j + 1]))
                if i >= warmup:
                    times.append(t)
            times.sort()
            row.update(status="ok", median_ms=times[len(times) // 2],
                       p99_ms=times[min(len(times) - 1, int(0.99 * len(times)))], n=len(times))
            del engine
        except Exception as e:  # noqa: BLE001 - reported, never hidden
            row.update(status=f"unavailable: {type(e).__name__}: {e}"[:300])
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", required=True, help="engine directory from `flexavatar export-engines`")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=30, help="timed calls per backend (after --warmup)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=None, help="folder for encoder.json")
    args = ap.parse_args(argv)
    rows = bench(Path(args.engines), args.device, args.iters, args.warmup)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "encoder.json").write_text(json.dumps(rows, indent=1))
    print("| backend | median ms | p99 ms | n | engine / status |\n|---|---:|---:|---:|---|")
    for r in rows:
        if r["status"] == "ok":
            print(f"| {r['backend']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['n']} | {r['engine']} |")
        else:
            print(f"| {r['backend']} | – | – | – | {r['status']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
