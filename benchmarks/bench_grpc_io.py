"""Can one Python process move the gRPC traffic of 64+ live streams? (the I/O half of the stream-capacity question)

    python -m flexrt.benchmarks.bench_grpc_io --streams 64,96,128 --payload-kb 40 --out bench_io/

An *echo* server speaks the real flexavatar.v1 Animate protocol with the real proto messages and per-frame host
work of the real server (parse and validate the 135-float expression code, build the response with its timings and
counters), but answers every frame at once with a fixed payload of ``payload_kb`` kilobytes instead of rendering:
what is measured is the transport and the Python around it, nothing else. The server is one process (its own
interpreter lock, one grpc.aio event loop, like ``flexavatar serve``); the clients are ``client_procs`` processes of
the benchmark's stream workers (``bench_grpc.stream_worker``) sending at ``fps`` each.

Per point: delivered frames per second (total and per stream), latency p50 / p99 / p99.9 (client clock, send ->
response), and the server process's CPU time over the point's wall time (1.0 = one core busy all the time).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

ECHO_AVATAR = "0" * 32


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (Linux), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_echo(port_queue, payload_bytes: int, max_streams: int) -> None:
    """Child process: a grpc.aio server whose Animate answers every frame with ``payload_bytes`` bytes."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    from flexrt.proto import flexavatar_pb2 as pb
    from flexrt.proto import flexavatar_pb2_grpc as pb_grpc

    payload = np.random.default_rng(0).integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()

    class Echo(pb_grpc.FlexAvatarServicer):
        async def Animate(self, request_iterator, context):
            first = await anext(request_iterator)
            cfg = first.config
            received = 0
            async for request in request_iterator:
                t0 = time.perf_counter_ns()
                frame = request.frame
                expression = np.asarray(frame.expression, dtype=np.float32)  # the real server's host validation
                if expression.shape != (135,) or not np.isfinite(expression).all():
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad expression")
                received += 1
                await context.write(pb.AnimateResponse(
                    sequence=frame.sequence, client_timestamp_us=frame.client_timestamp_us, image=payload,
                    width=cfg.width, height=cfg.height, encoding=cfg.encoding or pb.JPEG,
                    timings=pb.StageTimings(server_us=(time.perf_counter_ns() - t0) // 1000, batch_size=1),
                    counters=pb.StreamCounters(received=received, rendered=received, dropped=0)))

    async def main():
        server = grpc.aio.server(options=[("grpc.max_concurrent_streams", max_streams + 16),
                                          ("grpc.max_send_message_length", 64 << 20)])
        pb_grpc.add_FlexAvatarServicer_to_server(Echo(), server)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        port_queue.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


def run(streams=(64, 96, 128), fps: float = 30.0, duration: float = 5.0, warmup_s: float = 1.0,
        payload_kb: float = 40.0, client_procs: int | None = None, encoding: str = "jpeg", on_row=None) -> dict:
    from .bench_grpc import _ping, stream_worker, summarize_streams

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    streams = sorted(int(s) for s in streams)
    server = ctx.Process(target=_serve_echo, args=(q, int(payload_kb * 1024), max(streams)), daemon=True)
    server.start()
    port = q.get(timeout=60)
    procs = int(client_procs or max(1, min(8, (os.cpu_count() or 2) // 2)))
    expressions = np.tile(np.zeros(135, np.float32), (64, 1))
    result = {"payload_kb": payload_kb, "fps": fps, "duration_s": duration, "client_procs": procs,
              "cpu_count": os.cpu_count(), "rows": []}
    warm_frames, measured_frames = int(round(warmup_s * fps)), max(1, int(round(duration * fps)))
    try:
        with ctx.Pool(procs) as pool:
            pool.map(_ping, range(procs), chunksize=1)
            for s in streams:
                n_tasks = min(s, procs)
                per = [s // n_tasks + (1 if i < s % n_tasks else 0) for i in range(n_tasks)]
                start_at = time.time() + 0.5
                tasks = [{"target": f"127.0.0.1:{port}", "avatar_id": ECHO_AVATAR, "expressions": expressions,
                          "offset": 0, "frames": warm_frames + measured_frames, "fps": fps, "width": 512,
                          "height": 512, "encoding": encoding, "start_at": start_at, "streams": n}
                         for n in per]
                cpu0, t0 = _cpu_seconds(server.pid), time.perf_counter()
                outs = [o for chunk in pool.map(stream_worker, tasks, chunksize=1) for o in chunk]
                cpu1, t1 = _cpu_seconds(server.pid), time.perf_counter()
                row = {"streams": s, **summarize_streams(outs, fps, warm_frames, measured_frames),
                       "server_cpu_cores": (cpu1 - cpu0) / max(t1 - t0 - 0.5, 1e-6),
                       "offered_fps_total": s * fps}
                result["rows"].append(row)
                if on_row:
                    on_row(row)
    finally:
        server.terminate()
        server.join(5)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="64,96,128", help="comma-separated stream counts (default 64,96,128)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second each stream sends (default 30)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    p.add_argument("--payload-kb", type=float, default=40.0, help="response size in KB (default 40, ~ a 512² JPEG)")
    p.add_argument("--client-procs", type=int, default=None, help="client processes (default min(8, cores/2))")
    p.add_argument("--out", default="bench_io", help="folder for grpc_io.json (default bench_io)")
    args = p.parse_args(argv)

    def show(row):
        lat = row["latency"]
        print(f"{row['streams']:4d} streams: {row['achieved_fps_total']:.0f} of {row['offered_fps_total']:.0f} frames/s,"
              f" min {row['achieved_fps_per_stream_min']:.1f} fps/stream, p50 {lat['p50_ms']:.2f} ms, p99 "
              f"{lat['p99_ms']:.2f} ms, p99.9 {lat['p999_ms']:.2f} ms, server CPU {row['server_cpu_cores']:.2f} cores",
              flush=True)

    res = run([int(s) for s in args.streams.split(",")], args.fps, args.duration, payload_kb=args.payload_kb,
              client_procs=args.client_procs, on_row=show)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grpc_io.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
