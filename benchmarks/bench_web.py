"""What the browser bridge adds: one gRPC Animate stream vs one WebSocket stream (runtime/web.py) on the same server.

    python -m flexrt.benchmarks.bench_web --model flex1 --device cuda --resolution 512 --out bench_web.json
    python -m flexrt.benchmarks.bench_web --model tiny --device cpu --resolution 64 --frames 20 --rounds 1   # smoke

Both streams drive the same avatar with the same expression codes at the same size and encoding (JPEG, the page's
format), one frame in flight (the next frame is sent when the previous one arrived), so each sample is a full round
trip: client send -> frame received, on the client's clock. The server runs in this process (as `flexavatar serve`
does: one asyncio loop for gRPC and the bridge, the GPU on the batcher's threads); every round runs its client in a
fresh process so client work never shares the server's interpreter lock. Rounds alternate gRPC, web, gRPC, web, ...
so slow drifts (clocks, thermals) hit both alike. Reported: p50 / p99 / mean of the round trip and of the server's
own time (frame received -> response handed to the transport) per transport, and the bridge's cost =
web p50 - gRPC p50 (also per round pair). The first ``--warmup`` frames of every round are not counted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import platform
import sys
import time

import numpy as np

log = logging.getLogger("flexrt.bench_web")


# ------------------------------------------------------------------------------------------------------------
# clients (each round in its own process)
# ------------------------------------------------------------------------------------------------------------

def _grpc_round(task: dict) -> dict:
    from flexrt.runtime.client import FlexAvatarClient

    with FlexAvatarClient(task["grpc"], timeout=120.0) as client:
        client.wait_ready(30.0)
        rows = [(r.latency_us, r.server_us) for r in client.animate(
            task["avatar_id"], list(task["expressions"]), task["size"], task["size"], encoding="jpeg",
            quality=task["quality"], max_in_flight=1, decode=False, timeout=600.0)]
    return {"round_trip_us": [r[0] for r in rows], "server_us": [r[1] for r in rows]}


def _web_round(task: dict) -> dict:
    from flexrt.runtime.web_client import WebClient

    async def main():
        round_trip, server = [], []
        async with WebClient(task["web"]) as client:
            await client.start({"avatar_id": task["avatar_id"], "width": task["size"], "height": task["size"],
                                "encoding": "JPEG", "quality": task["quality"]})
            for i, expression in enumerate(task["expressions"]):
                sent = time.perf_counter_ns()
                await client.send_frame(i, expression, timestamp_us=sent // 1000)
                frame = await client.next_frame(timeout=120.0)
                round_trip.append((frame["received_ns"] - sent) // 1000)
                server.append(frame["server_us"])
            await client.end()
            assert await client.next_frame() is None
        return {"round_trip_us": round_trip, "server_us": server}

    return asyncio.run(main())


def _stats(values_us) -> dict:
    a = np.asarray(values_us, dtype=np.float64) / 1000.0
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min())}


# ------------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------------

def run(engine, resolution: int = 512, frames: int = 300, rounds: int = 6, warmup: int = 20, quality: int = 90,
        seed: int = 0) -> dict:
    """Starts a server with the bridge on ``engine`` and measures ``rounds`` gRPC and ``rounds`` web rounds of
    ``frames`` counted frames each (plus ``warmup``)."""
    import io

    from flexrt.runtime.client import FlexAvatarClient
    from flexrt.runtime.limits import ServerConfig
    from flexrt.runtime.sequences import synthetic_sequence
    from flexrt.runtime.server import start_server

    rng = np.random.default_rng(seed)
    code = (0.5 * rng.standard_normal((engine.num_head_tokens, engine.hidden_dim))).astype(np.float32)  # [HT,D]
    expressions = synthetic_sequence(warmup + frames).expressions  # [T,135]
    config = ServerConfig(host="127.0.0.1", port=0, web_port=0, max_width=max(1024, resolution),
                          max_height=max(1024, resolution), warmup_sizes=((resolution, resolution),),
                          shutdown_grace_s=1.0)
    result = {"resolution": resolution, "encoding": "jpeg", "quality": quality, "frames_per_round": frames,
              "warmup_frames": warmup, "rounds_per_transport": rounds, "engine": engine.info.describe(),
              "host": platform.node(), "python": sys.version.split()[0]}
    ctx = mp.get_context("spawn")  # no fork of a process that holds a CUDA context
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        buf = io.BytesIO()
        np.save(buf, code)
        avatar_id = client.create_avatar(npy=buf.getvalue(), name="bench_web").avatar_id
        task = {"grpc": server.address, "web": f"ws://127.0.0.1:{server.web_port}/ws", "avatar_id": avatar_id,
                "size": resolution, "quality": quality, "expressions": expressions}
        per = {"grpc": [], "web": []}
        with ctx.Pool(1) as pool:
            for k in range(rounds):
                for name, fn in (("grpc", _grpc_round), ("web", _web_round)):
                    out = pool.apply(fn, (task,))
                    per[name].append({key: v[warmup:] for key, v in out.items()})
                    log.info("round %d %s: round trip p50 %.3f ms", k, name,
                             np.median(per[name][-1]["round_trip_us"]) / 1000)
    for name, rows in per.items():
        result[name] = {
            "round_trip": _stats(np.concatenate([r["round_trip_us"] for r in rows])),
            "server": _stats(np.concatenate([r["server_us"] for r in rows])),
            "round_p50_ms": [float(np.median(r["round_trip_us"])) / 1000 for r in rows],
        }
    result["bridge_p50_ms"] = result["web"]["round_trip"]["p50_ms"] - result["grpc"]["round_trip"]["p50_ms"]
    result["bridge_p99_ms"] = result["web"]["round_trip"]["p99_ms"] - result["grpc"]["round_trip"]["p99_ms"]
    result["bridge_p50_ms_per_round"] = [w - g for w, g in zip(result["web"]["round_p50_ms"],
                                                              result["grpc"]["round_p50_ms"])]
    return result


def format_table(result: dict) -> str:
    rows = [f"one stream, {result['resolution']}² JPEG q{result['quality']}, one frame in flight, "
            f"{result['rounds_per_transport']} x {result['frames_per_round']} frames per transport",
            "transport   round trip p50 / p99 / mean ms     server p50 ms"]
    for name in ("grpc", "web"):
        rt, sv = result[name]["round_trip"], result[name]["server"]
        rows.append(f"{name:<10} {rt['p50_ms']:8.3f} {rt['p99_ms']:8.3f} {rt['mean_ms']:8.3f}        "
                    f"{sv['p50_ms']:8.3f}")
    per_round = ", ".join(f"{d:+.3f}" for d in result["bridge_p50_ms_per_round"])
    rows.append(f"bridge (web - gRPC): p50 {result['bridge_p50_ms']:+.3f} ms, p99 {result['bridge_p99_ms']:+.3f} ms; "
                f"per round pair p50: {per_round}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexrt.benchmarks.bench_web", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--engines", help="engine directory from `flexavatar export-engines`")
    src.add_argument("--model", default="flex1", help="PyTorch engine of this preset ('flex1', 'tiny'; random "
                                                      "weights unless --checkpoint)")
    p.add_argument("--checkpoint", help="with --model: FLEX-1 weights")
    p.add_argument("--backend", default="auto", help="engine backend (as `flexavatar serve`)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--resolution", type=int, default=512, help="frame width and height")
    p.add_argument("--frames", type=int, default=300, help="counted frames per round")
    p.add_argument("--warmup", type=int, default=20, help="frames at the start of every round that are not counted")
    p.add_argument("--rounds", type=int, default=6, help="rounds per transport (alternating gRPC, web)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from flexrt.runtime.cli import build_engine

    engine = build_engine(argparse.Namespace(engines=args.engines, model=args.model, checkpoint=args.checkpoint,
                                             dinov2=None, template=None, backend=args.backend, device=args.device,
                                             precision=args.precision))
    result = run(engine, resolution=args.resolution, frames=args.frames, rounds=args.rounds, warmup=args.warmup,
                 quality=args.quality)
    print(format_table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
