"""Serving probe (CPU, ~2 min): how often does Python run a full garbage collection inside a streaming server, and
for how long, with and without the start-up freeze of ``runtime/gc_pauses.py``?

A tiny-preset server on the CPU (``start_server``), ``--streams`` Animate streams at ``--fps`` for ``--seconds``,
32x32 RAW frames; every collection timed by ``GcPauseRecorder``. Arm "thawed" calls ``gc.unfreeze()`` right after
the server started (the server before 2026-12-02); arm "frozen" keeps the freeze. The frame rate here is ~1/25 of
an H200 replica's, so collections there are that much more frequent for the same heap.

    python dev/gc_probe.py --arm thawed --seconds 10     # ~80 s on a 2-core CPU (the tiny server renders slowly)
    python dev/gc_probe.py --arm frozen
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_helpers import expressions, make_config, random_avatar_code, tiny_engine  # noqa: E402

from flexrt.runtime.client import FlexAvatarClient  # noqa: E402
from flexrt.runtime.gc_pauses import GcPauseRecorder  # noqa: E402
from flexrt.runtime.server import start_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", choices=("thawed", "frozen"), required=True)
    ap.add_argument("--streams", type=int, default=6)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    engine = tiny_engine()
    frames = int(args.fps * args.seconds)
    with start_server(engine, make_config(max_batch_size=8)) as server:
        if args.arm == "thawed":
            gc.unfreeze()
        rec = GcPauseRecorder(buckets=(0.001, 0.01, 0.05, 0.1, 0.5)).install()
        with FlexAvatarClient(server.address) as client:
            avatar = client.create_avatar(npy=random_avatar_code(engine, seed=1)).avatar_id
            got = [0] * args.streams

            def stream(k):
                for _ in client.animate(avatar, expressions(frames, seed=k), 32, 32, fps=args.fps, timeout=600):
                    got[k] += 1

            t0 = time.perf_counter()
            threads = [threading.Thread(target=stream, args=(k,)) for k in range(args.streams)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        rec.remove()
    out = {"arm": args.arm, "streams": args.streams, "fps": args.fps, "seconds": round(wall, 1),
           "frames": sum(got), "objects_tracked_at_end": len(gc.get_objects())}
    for gen in range(3):
        buckets, total = rec.snapshot(gen)
        out[f"gen{gen}"] = {"count": buckets[-1][1], "total_ms": round(total * 1000, 1), "cumulative": buckets}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
