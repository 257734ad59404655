#!/usr/bin/env bash
# Issue 15 on one H200: stream capacity of 1 `flexavatar serve` replica vs 2 replicas sharing the GPU, with the
# stream-capacity sweep (30 fps per stream, 512² JPEG, bar: every stream >= 95 % of 30 fps, <= 1 % dropped,
# p99 <= 33 ms) run by `python -m flexrt.benchmarks.bench_grpc --targets ...` against the running servers.
#
#   bash dev/scaleout_h200.sh        # from the repo root (carry .whl and .devdata); results in $OUT (~4 min)
#
# No balancer here: the GPU machine has neither haproxy nor a package registry, so the client splits the streams
# round robin over the two replica ports itself (stream k -> replica k mod 2), which is what HAProxy's hash does on
# average with many avatars. Directory stores (no redis there either): the bench creates its avatar on each replica.
# Both replicas start at once (their torch.compile / CUDA-graph warm-ups overlap); the 1-replica sweep runs while
# the second replica sits idle (warm, holding its GPU memory, no work), then the 2-replica sweep uses both.
set -uo pipefail
[ -n "${FLEXRT_SHARED:-}" ] || source dev/device_env.sh  # flexrt importable, carried wheels, reference data
cd /tmp  # not the repo root: its flexrt/ folder would shadow the namespace of links
OUT=${OUT:-/tmp/scaleout_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
TEMPLATE=()
[ -f "${FLEXRT_SHARED:-}/reference/assets/gghead_template.obj" ] && \
  TEMPLATE=(--template "$FLEXRT_SHARED/reference/assets/gghead_template.obj")  # the official head, as the sweep
# overridable for a CPU dry run: MODEL=tiny DEVICE=cpu RES=32 STREAMS1=1,2 STREAMS2=2,4 bash dev/scaleout_h200.sh
MODEL=${MODEL:-flex1} DEVICE=${DEVICE:-cuda} RES=${RES:-512}
STREAMS1=${STREAMS1:-32,48,64,80,96} STREAMS2=${STREAMS2:-48,64,96,128,160}
SWEEP=(--fps 30 --duration 5 --warmup 1 --resolution "$RES" --encoding jpeg)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
for i in 1 2; do  # serve's GPU default: PyTorch bf16, torch.compile, CUDA graphs, CuPy rasterizer, JPEG on the GPU
  "$PY" -m flexrt.cli serve --model "$MODEL" --device "$DEVICE" "${TEMPLATE[@]}" --host 127.0.0.1 --port $((50060 + i)) \
    --store "/tmp/scaleout-avatars-r$i" --max-streams 200 --grace 1 > "$OUT/r$i.log" 2>&1 &
  PIDS+=($!)
done
t0=$(date +%s)
for i in 1 2; do
  until grep -q "listening on" "$OUT/r$i.log"; do
    if ! kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null || [ $(( $(date +%s) - t0 )) -gt 240 ]; then
      echo "replica r$i did not start:"; tail -20 "$OUT/r$i.log"; exit 1
    fi
    sleep 1
  done
done
echo "both replicas serving after $(( $(date +%s) - t0 )) s"
grep -h "warm-up for batches" "$OUT"/r?.log

echo "== 1 replica =="
timeout 150 "$PY" -m flexrt.benchmarks.bench_grpc --targets 127.0.0.1:50061 --streams "$STREAMS1" "${SWEEP[@]}" \
  --out "$OUT/one_replica.json"
echo "== 2 replicas, one GPU =="
timeout 150 "$PY" -m flexrt.benchmarks.bench_grpc --targets 127.0.0.1:50061,127.0.0.1:50062 \
  --streams "$STREAMS2" "${SWEEP[@]}" --out "$OUT/two_replicas.json"
nvidia-smi --query-gpu=memory.used --format=csv,noheader > "$OUT/gpu_memory_two_replicas.txt" 2>/dev/null

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
for name in ("one_replica", "two_replicas"):
    path = out / f"{name}.json"
    if not path.is_file():
        print(f"{name}: no result"); continue
    d = json.loads(path.read_text())
    print(f"{name}: largest S meeting the bar = {d['max_streams_meeting_target']}")
    print("   S   fps min  fps med  drop%   p50 ms   p99 ms  frames/s  bar")
    rows = []
    for r in d["concurrency"]:
        lat = r["latency"]
        rows.append({k: r.get(k) for k in ("streams", "achieved_fps_per_stream_min", "achieved_fps_per_stream_median",
                                           "drop_fraction", "achieved_fps_total", "meets_target", "failed_streams")}
                    | {"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]})
        print(f"{r['streams']:4d} {r['achieved_fps_per_stream_min'] or 0:8.1f} {r['achieved_fps_per_stream_median'] or 0:8.1f}"
              f" {100 * (r['drop_fraction'] or 0):6.2f} {lat['p50_ms'] or 0:8.1f} {lat['p99_ms'] or 0:8.1f}"
              f" {r['achieved_fps_total'] or 0:9.0f}  {'yes' if r['meets_target'] else 'no'}")
    summary[name] = {"max_streams_meeting_bar": d["max_streams_meeting_target"], "rows": rows, "targets": d["targets"]}
(out / "scaleout_summary.json").write_text(json.dumps(summary, indent=1))
EOF
