"""Development model (CPU, not installed; 2026-12-03): which batch-formation policy keeps p99 low at 40-64 streams,
given the served path's measured GPU costs (dev/stage_costs_probe.py on the H200, call 21:
docs/results/h200-stage-costs.json).

GPU model: two CUDA streams (decode, render) on one GPU that share it half and half while both have work (this
reproduces the measured pipelined stage times: at 64 frames decode 27.5 ms + render 11.2 ms alone -> 38.7 / 22.4 ms
predicted when overlapped, 38.1 / 22.4 measured). A batch's render starts when its decode is done and the render
stream is free. Its frames are delivered ``deliver_ms`` after the render ends (completion thread + event loop).

Streams send a frame every 1/30 s from random phases; a stream has at most 2 frames in the scheduler and one more
waiting (latest wins: a newer frame replaces it, counted as dropped), as the server does.

    python dev/batcher_sim.py [--costs docs/results/h200-stage-costs-up8.json] [--streams 32,40,48,56,64]
                              [--buckets coarse|by4|by2|exact]

What it said (2026-12-03, docs/SERVING.md "Stream capacity"): with call 22's costs it predicts the sweep
measured in call 23 within a few ms (40 streams p99 21.7 vs 20.4, 56: 83 vs 86, 64: 105 vs 103); other policies
(an oracle start when the decode stream is free, a third slot, other leads, batch caps by size or arrival rate)
do not lower p99 at 48-64 streams; ``speed`` (a uniformly faster GPU path) shows 56 streams need ~1.1x today's
throughput and 64 streams ~1.26x. ``submit_ms`` (host time to enqueue a batch) did not matter.

Padding (2026-12-03, session 16): a batch runs in the CUDA graph of its bucket, and with buckets 8 frames apart
(``--buckets coarse``) the GPU decodes and renders the padding rows too. With random phases batches come in every
size, and near saturation that padding is what pushes the queue over: with the v3 blend's costs
(docs/results/model-costs-blend-v3.json) 64 streams p99 78 ms with the coarse buckets, 62 every 4, 48 every 2, 41
with a graph per size (``exact``; 56 streams: 39 / 31 / 24 / 21). Hence one graph per batch size since then
(runtime/engines/torch_engine.py ``BATCH_BUCKETS``), measured in device call 36.
"""
from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

BUCKET_SETS = {"coarse": (1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64),  # the served set until 2026-12-03
               "by4": (1, 2, 4) + tuple(range(8, 65, 4)),
               "by2": (1, 2, 4, 6, 8, 10, 12, 14, 16) + tuple(range(18, 65, 2)),
               "exact": tuple(range(1, 65))}  # one graph per batch size: the served set since
BUCKETS = BUCKET_SETS["coarse"]
DT = 0.02  # ms per simulation step


def bucket(n):
    return next(b for b in BUCKETS if b >= n)


class Costs:
    def __init__(self, rows):
        self.n = [r["n"] for r in rows]
        self.dec = [r["alone_decode_ms"] for r in rows]
        self.ren = [r["alone_render_ms"] for r in rows]

    def _interp(self, ys, n):
        xs = self.n
        if n <= xs[0]:
            return ys[0]
        for i in range(1, len(xs)):
            if n <= xs[i]:
                t = (n - xs[i - 1]) / (xs[i] - xs[i - 1])
                return ys[i - 1] + t * (ys[i] - ys[i - 1])
        return ys[-1] * n / xs[-1]

    def decode(self, n):
        return self._interp(self.dec, bucket(n))

    def render(self, n):
        return self._interp(self.ren, bucket(n))


def simulate(costs, streams, policy, seconds=5.0, warmup=1.0, seed=0, deliver_ms=0.4, speed=1.0, submit_ms=0.0):
    rng = random.Random(seed)
    period = 1000.0 / 30
    phase = [rng.uniform(0, period) for _ in range(streams)]
    next_send = list(phase)
    in_sched = [0] * streams  # frames of the stream in the scheduler (waiting or in a batch)
    pending = [None] * streams  # the one frame waiting in the session (latest wins)
    waiting = []  # (arrival, stream) in the scheduler, not yet batched
    batches = []  # dicts: frames, dec_left, ren_left, state
    latencies, dropped, sent = [], 0, 0
    sizes = []
    t = 0.0
    st = {"busy_until": 0.0, "per_frame": 1.0, "overhead": 0.5, "in_flight": 0, "dec_left": 0.0}
    end = (seconds + warmup) * 1000
    while t < end:
        # 1. arrivals
        for s in range(streams):
            while next_send[s] <= t:
                sent += next_send[s] >= warmup * 1000
                if pending[s] is not None:
                    dropped += pending[s] >= warmup * 1000
                pending[s] = next_send[s]
                next_send[s] += period
        for s in range(streams):
            if pending[s] is not None and in_sched[s] < 2:
                waiting.append((pending[s], s))
                in_sched[s] += 1
                pending[s] = None
        # 2. batch formation
        while True:
            n = policy(t, waiting, st, streams, costs)
            if not n:
                break
            take, waiting[:] = waiting[:n], waiting[n:]
            st["busy_until"] = max(t, st["busy_until"]) + st["overhead"] + st["per_frame"] * len(take)
            st["in_flight"] += 1
            batches.append({"frames": take, "dec": costs.decode(len(take)) / speed, "ren": costs.render(len(take)) / speed,
                            "start": t, "ready": t + submit_ms, "dec_done": None, "ren_done": None})
            sizes.append(len(take))
        # 3. GPU: the first batch with decode work on the decode stream, the first with render work on the render stream
        d = next((b for b in batches if b["dec"] > 0), None)
        if d is not None and t < d["ready"]:  # the GPU thread is still enqueueing it
            d = None
        st["dec_left"] = sum(b["dec"] for b in batches if b["dec"] > 0)
        r = next((b for b in batches if b["dec"] <= 0 and b["ren"] > 0), None)
        share = 0.5 if (d is not None and r is not None) else 1.0
        if d is not None:
            d["dec"] -= DT * share
            if d["dec"] <= 0:
                d["dec_done"] = t
                gpu = t - d["start"]
                nn = len(d["frames"])  # learn as runtime/batcher.py does (decode-stage time)
                a = 0.2
                if nn >= 4:
                    st["per_frame"] = (1 - a) * st["per_frame"] + a * max(1e-3, (gpu - st["overhead"]) / nn)
                else:
                    st["overhead"] = (1 - a) * st["overhead"] + a * max(1e-3, gpu - st["per_frame"] * nn)
        if r is not None:
            r["ren"] -= DT * share
            if r["ren"] <= 0:
                r["ren_done"] = t
        # 4. delivery
        for b in list(batches):
            if b["ren_done"] is not None and t >= b["ren_done"] + deliver_ms:
                batches.remove(b)
                st["in_flight"] -= 1
                if st["in_flight"] == 0:
                    st["busy_until"] = t
                for arr, s in b["frames"]:
                    in_sched[s] -= 1
                    if arr >= warmup * 1000:
                        latencies.append(t - arr)
        t += DT
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else math.nan
    return {"streams": streams, "fps": len(latencies) / seconds, "p50": q(0.5), "p99": q(0.99),
            "dropped": dropped / max(1, sent), "batch_mean": sum(sizes) / max(1, len(sizes))}


def policy_current(slots=2, lead=1.5, max_wait=1.0, max_batch=64):
    """runtime/batcher.py as of 2026-12-03."""
    def f(t, waiting, st, streams, costs):
        n = len(waiting)
        if n == 0 or st["in_flight"] >= slots:
            return 0
        if n >= max_batch:
            return max_batch
        if st["in_flight"] == 0:
            if len({s for _, s in waiting}) >= streams or t - waiting[0][0] >= max_wait:
                return n
            return 0
        return n if t >= st["busy_until"] - lead else 0
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--costs", default="docs/results/h200-stage-costs-up8.json")
    ap.add_argument("--streams", default="32,40,48,56,64")
    ap.add_argument("--buckets", choices=sorted(BUCKET_SETS), default="coarse",
                    help="the batch sizes with a CUDA graph (a batch runs, padded, in the smallest >= its size)")
    args = ap.parse_args()
    global BUCKETS
    BUCKETS = BUCKET_SETS[args.buckets]
    costs = Costs(json.loads(Path(args.costs).read_text())["rows"])
    for name, pol in [("current", policy_current())]:
        for s in [int(x) for x in args.streams.split(",")]:
            r = simulate(costs, s, pol)
            print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)


if __name__ == "__main__":
    main()
