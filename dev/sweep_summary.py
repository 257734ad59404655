"""One line per point of a `flexavatar bench --phases grpc` run (for device-call logs; not installed):
streams, encoding, status, fps a stream (min), p50 / p99 ms, dropped fraction; first the server's engine line.

    python3 dev/sweep_summary.py $OUT/bench/bench.json        (prints nothing when the file is missing)
"""
import json
import os
import sys

path = sys.argv[1]
if os.path.exists(path):
    g = json.load(open(path)).get("grpc", {})
    print("server", g.get("server", {}).get("engine"))
    for r in g.get("concurrency", []):
        print(r.get("streams"), r.get("encoding"), r.get("status"), r.get("achieved_fps_per_stream_min"),
              (r.get("latency") or {}).get("p50_ms"), (r.get("latency") or {}).get("p99_ms"), r.get("dropped_fraction"))
