"""Python garbage-collector pauses of a server process: a full collection before and after ``gc.freeze``.

    python -m flexrt.benchmarks.bench_gc [--preset tiny] [--device cpu] [--iters 5] [--out gc.json]

Builds what a warmed-up ``flexavatar serve`` holds (the runtime's modules: torch, grpc, protobuf; the model of the
preset on the device) in this process, then times ``gc.collect()`` (generation 2, what the collector runs on its
own now and then) ``--iters`` times, then ``runtime.gc_pauses.freeze_startup_objects()`` as the server does after
its warm-up, then the same collections again. Every thread of the process stops for the length of a collection
(it holds the GIL), so the "before" median is a pause every stream of a server may see; ``perf_counter`` timing
(the collector runs on the host). Prints one JSON object (``--out`` writes it too).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time


def _full_collections(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        gc.collect()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run(preset: str = "tiny", device: str = "cpu", iters: int = 5) -> dict:
    import torch

    import flexrt.runtime.server  # noqa: F401  (the server's modules: grpc, protobuf, the engines, the codecs)
    from flexrt.model.checkpoint import load_official
    from flexrt.runtime.gc_pauses import freeze_startup_objects, unfreeze

    model = load_official(preset, None, None).to(device).eval()  # noqa: F841  (held, as the server holds it)
    tracked = len(gc.get_objects())
    before = _full_collections(iters)
    frozen = freeze_startup_objects()
    after = _full_collections(iters)
    unfreeze()
    return {"benchmark": "bench_gc", "preset": preset, "device": device, "python": platform.python_version(),
            "torch": torch.__version__, "objects_tracked": tracked, "objects_frozen": frozen, "iters": iters,
            "full_collection_ms_before": {"median": round(statistics.median(before), 3), "max": round(max(before), 3)},
            "full_collection_ms_after_freeze": {"median": round(statistics.median(after), 3),
                                                "max": round(max(after), 3)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexrt.benchmarks.bench_gc", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model preset to hold, as the server would ('tiny', 'flex1')")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model lives")
    p.add_argument("--iters", type=int, default=5, help="full collections timed before and after the freeze")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error("--iters must be >= 1")
    result = run(args.preset, args.device, args.iters)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
