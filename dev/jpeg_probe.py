"""Development probe (not installed): JPEG encoding of 512² frames on the GPU vs the CPU, per batch size.

    python dev/jpeg_probe.py --out DIR [--batches 1,8,32,64] [--quality 90]

Frames: the example photos of the reference data (or a drawn head), 512², shifted per frame so no two are equal.
Encoders: ``kernels.jpeg.JpegEncoder`` eager and replayed from a CUDA graph (bytes to the host included in
"to host"), torchvision.io.encode_jpeg on CUDA (nvJPEG), nvidia-nvimgcodec when importable, and Pillow (libjpeg-turbo)
on one CPU thread and on a pool of 8. Quality: PSNR of the decoded frame against the input and the size, each
against Pillow's. Writes jpeg.json and prints a table last.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _frames(n: int, size: int = 512) -> np.ndarray:
    from flexrt.runtime.cli import find_shared_dir, synthetic_photo

    shared = find_shared_dir()
    photos = []
    if shared:
        for p in sorted((shared / "reference/assets/images").glob("*.png")):
            photos.append(np.asarray(Image.open(p).convert("RGB").resize((size, size))))
    if not photos:
        photos = [synthetic_photo(size)]
    return np.stack([np.roll(photos[i % len(photos)], 3 * i, axis=1) for i in range(n)])  # [n,H,W,3]


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * math.log10(255.0 ** 2 / max(mse, 1e-12)))


def _quality(blobs, frames) -> dict:
    ps, sizes = [], []
    for blob, f in zip(blobs, frames):
        dec = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        ps.append(_psnr(dec, f))
        sizes.append(len(blob))
    return {"psnr_mean_db": float(np.mean(ps)), "bytes_mean": float(np.mean(sizes))}


def _timeit(fn, iters=20, warmup=3) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return {"median_ms": ts[len(ts) // 2], "p90_ms": ts[int(0.9 * (len(ts) - 1))]}


def _cuda_time(fn, iters=20, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "jpeg_out"))
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    from flexrt.kernels.jpeg import JpegEncoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    q = args.quality
    frames = _frames(max(batches))
    gpu = torch.from_numpy(frames).cuda()
    res = {"device": torch.cuda.get_device_name(0), "quality": q, "rows": []}
    pil = []
    for f in frames[:8]:
        b = io.BytesIO()
        Image.fromarray(f).save(b, format="JPEG", quality=q)
        pil.append(b.getvalue())
    res["pillow_quality"] = _quality(pil, frames[:8])
    enc = JpegEncoder(512, 512, q, "cuda")
    res["ours_quality"] = _quality(enc.to_bytes(*enc.encode(gpu[:8])), frames[:8])
    print("quality:", res["pillow_quality"], res["ours_quality"], flush=True)
    try:
        import torchvision
        from torchvision.io import encode_jpeg

        tv = [bytes(t.cpu().numpy()) for t in encode_jpeg(list(gpu[:8].permute(0, 3, 1, 2)), quality=q)]
        res["torchvision_quality"] = _quality(tv, frames[:8])
        res["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        res["torchvision_error"] = f"{type(e).__name__}: {e}"[:300]
        encode_jpeg = None
    try:
        from nvidia import nvimgcodec

        nv_enc = nvimgcodec.Encoder()
        params = nvimgcodec.EncodeParams(quality_type=nvimgcodec.QualityType.QUALITY, quality_value=q)

        def nv_encode(x):
            return nv_enc.encode([nvimgcodec.as_image(t) for t in x], "jpeg", params=params)

        nv = [bytes(b) for b in nv_encode(gpu[:8])]
        res["nvimgcodec_quality"] = _quality(nv, frames[:8])
    except Exception as e:  # noqa: BLE001
        res["nvimgcodec_error"] = f"{type(e).__name__}: {e}"[:300]
        nv_encode = None
    print({k: v for k, v in res.items() if "error" in k or "quality" in k}, flush=True)
    pool = ThreadPoolExecutor(8)

    def pil_one(f):
        b = io.BytesIO()
        Image.fromarray(f).save(b, format="JPEG", quality=q)
        return b.getvalue()

    for bsz in batches:
        x = gpu[:bsz].contiguous()
        row = {"batch": bsz}
        row["ours_gpu_ms"] = _cuda_time(lambda: enc.encode(x))
        row["ours_to_host_ms"] = _timeit(lambda: enc.to_bytes(*enc.encode(x)))["median_ms"]
        try:
            from flexrt.kernels import capture_graph

            static_in = x.clone()
            graph, (s_data, s_len) = capture_graph(lambda: enc.encode(static_in))
            row["ours_graph_gpu_ms"] = _cuda_time(graph.replay)
            row["ours_graph_to_host_ms"] = _timeit(lambda: (graph.replay(), enc.to_bytes(s_data, s_len)))["median_ms"]
            del graph
        except Exception as e:  # noqa: BLE001
            row["ours_graph_error"] = f"{type(e).__name__}: {e}"[:300]
        if encode_jpeg is not None:
            chw = list(x.permute(0, 3, 1, 2))
            row["torchvision_to_host_ms"] = _timeit(lambda: [t.cpu() for t in encode_jpeg(chw, quality=q)])["median_ms"]
        if nv_encode is not None:
            try:
                row["nvimgcodec_to_host_ms"] = _timeit(lambda: [bytes(b) for b in nv_encode(x)])["median_ms"]
            except Exception as e:  # noqa: BLE001
                row["nvimgcodec_error"] = f"{type(e).__name__}: {e}"[:300]
        fr = frames[:bsz]
        row["pillow_1thread_ms"] = _timeit(lambda: [pil_one(f) for f in fr], iters=5, warmup=1)["median_ms"]
        row["pillow_8threads_ms"] = _timeit(lambda: list(pool.map(pil_one, fr)), iters=5, warmup=1)["median_ms"]
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        (out / "jpeg.json").write_text(json.dumps(res, indent=1))
    print("\n| batch | ours GPU | ours graph GPU | ours graph -> host | torchvision -> host | nvimgcodec -> host | "
          "Pillow 1 thread | Pillow 8 threads |  (ms per batch)")
    for r in res["rows"]:
        f = lambda k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
        print(f"| {r['batch']} | {f('ours_gpu_ms')} | {f('ours_graph_gpu_ms')} | {f('ours_graph_to_host_ms')} | "
              f"{f('torchvision_to_host_ms')} | {f('nvimgcodec_to_host_ms')} | {f('pillow_1thread_ms')} | "
              f"{f('pillow_8threads_ms')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
