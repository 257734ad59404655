#!/usr/bin/env bash
# FlexAvatar Runtime: the device benchmark suite at FLEX-1 size, for one GPU command with a 10-minute limit.
#
#   bash benchmarks/run_device.sh [options] [PHASE|GROUP ...]
#
# Groups (the whole suite does not fit one 10-minute command: run part1, part2, part3 back to back, so that the
# machine stays warm and the gsplat build and the engines in $WORK are reused):
#   part1 = setup gsplat export render rasterizer encode report   (gsplat's first-use JIT build takes minutes)
#   part2 = setup gsplat export decoder e2e report
#   part3 = setup export grpc psnr report
#   all   = every phase (default; fits one command only with a warm gsplat build, or with --no-gsplat --quick)
# Phases:
#   setup    GPU / driver / package report, makes the project importable (no pip install needed)
#   tests    the project's GPU tests (pytest -m gpu); log in OUT/gpu_tests.log
#   gsplat   first gsplat call: JIT-compiles gsplat's CUDA extension when no prebuilt one is there (minutes;
#            cached in ~/.cache/torch_extensions while the machine stays warm). On failure or timeout gsplat is
#            reported "unavailable: <reason>" by every later phase (never silently left out).
#   export   FLEX-1 engines (ONNX fp32 + fp16 [+ TensorRT with --tensorrt]) into $WORK/engines (kept while warm)
#   decoder render rasterizer encode e2e grpc psnr
#            `flexavatar bench --phases X --append` into $WORK/bench.json (rasterizer = the kernel owner's
#            benchmarks/bench_rasterizer.py sweep on synthetic scenes; render = the rasterizers on decoded FLEX-1)
#   report   bench.md + PNGs, copied to OUT with bench.json, psnr.json/md and the log; prints the summary
#
# Options:
#   --out DIR       where results go (default: $OUT, else ./bench_device_out). At most 7 files are written there:
#                   bench.json bench.md bench_streams.png bench_stages.png psnr.json psnr.md run_device.log
#   --budget S      seconds for the whole command (default 540, under the 600 s device limit)
#   --work DIR      scratch (engines, partial results; default /tmp/flexrt-bench, survives while the machine is warm)
#   --engines DIR   use this engine directory instead of $WORK/engines
#   --shared DIR    reference data (default: $FLEXRT_SHARED, ../shared, ./shared, ./.device/shared); needs
#                   reference/assets/{gghead_template.obj, expressions/, images/}
#   --wheels DIR    pip-install every wheel in DIR (--no-index --no-deps) into $WORK/site first (e.g. .whl);
#                   wheels staged with ../shared/tools/device-wheels: start the command with
#                   `source .device/install.sh && bash benchmarks/run_device.sh ...` instead
#   --quick         fewer points (batch 1,8,32; 512² only; streams 1,8,16,32,48,64 for 3 s; 50 iterations)
#   --no-gsplat     do not build/run gsplat (reported as unavailable, with this reason)
#   --tensorrt      export TensorRT FP16 engines too (needs the tensorrt package)
#   --fresh         start a new $WORK/bench.json (default: keep adding to it while the machine is warm)
#   -- ARGS         extra arguments for every `flexavatar bench` call (e.g. -- --streams 1,16,32,64)
#
# Every phase runs under `timeout` with its share of the remaining budget and a failing phase does not stop the
# others. Results are copied to OUT after every phase, so a command killed at its limit still returns them.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$REPO/bench_device_out}
BUDGET=540
WORK=/tmp/flexrt-bench
ENGINES=""
SHARED=""
WHEELS=""
QUICK=0
NO_GSPLAT=0
TENSORRT=0
FRESH=0
EXTRA=()
PHASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --engines) ENGINES=$2; shift 2 ;;
    --shared) SHARED=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-gsplat) NO_GSPLAT=1; shift ;;
    --tensorrt) TENSORRT=1; shift ;;
    --fresh) FRESH=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,41p' "$0" | sed -E 's/^# ?//'; exit 0 ;;
    part1) PHASES+=(setup gsplat export render rasterizer encode report); shift ;;
    part2) PHASES+=(setup gsplat export decoder e2e report); shift ;;
    part3) PHASES+=(setup export grpc psnr report); shift ;;
    all) PHASES+=(setup gsplat export decoder render rasterizer encode e2e grpc psnr report); shift ;;
    setup|gsplat|tests|export|decoder|render|rasterizer|encode|e2e|grpc|psnr|report) PHASES+=("$1"); shift ;;
    *) echo "run_device.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#PHASES[@]} -gt 0 ] || PHASES=(setup gsplat export decoder render rasterizer encode e2e grpc psnr report)
# keep the canonical order, drop duplicates
ORDER=(setup gsplat tests export decoder render rasterizer encode e2e grpc psnr report)
SEL=()
for p in "${ORDER[@]}"; do
  for q in "${PHASES[@]}"; do [ "$p" = "$q" ] && { SEL+=("$p"); break; }; done
done
# nominal seconds (timeout) and the minimum worth starting, per phase
declare -A NOMINAL=([setup]=45 [gsplat]=300 [tests]=150 [export]=150 [decoder]=170 [render]=70 [rasterizer]=90 [encode]=25
                    [e2e]=120 [grpc]=150 [psnr]=90 [report]=30)
declare -A MINIMUM=([setup]=10 [gsplat]=20 [tests]=30 [export]=60 [decoder]=40 [render]=25 [rasterizer]=30 [encode]=15
                    [e2e]=40 [grpc]=50 [psnr]=40 [report]=10)

mkdir -p "$WORK" "$OUT_DIR"
LOG="$OUT_DIR/run_device.log"
: > "$LOG"
T0=$(date +%s)
ENGINES=${ENGINES:-$WORK/engines}
declare -A STATUS=()
declare -A SECONDS_USED=()

say() { echo "[run_device $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
remaining() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# ---- environment for every phase --------------------------------------------------------------------------
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}  # parallel nvcc jobs of gsplat's JIT build
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then  # build gsplat for this GPU's architecture only (faster)
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
  [ -n "$cap" ] && export TORCH_CUDA_ARCH_LIST=$cap
fi
if [ -z "$SHARED" ]; then
  for c in "${FLEXRT_SHARED:-}" "$REPO/../shared" "$REPO/shared" "$REPO/.device/shared"; do
    if [ -n "$c" ] && [ -d "$c/reference/assets" ]; then SHARED=$(cd "$c" && pwd); break; fi
  done
fi
if [ -n "$SHARED" ]; then
  SHARED=$(cd "$SHARED" && pwd)
  export FLEXRT_SHARED=$SHARED
else
  say "WARNING: reference data not found (FLEXRT_SHARED, ../shared, ./shared, ./.device/shared): FLEX-1 uses the" \
      "project's default template and a synthetic driving sequence (both stated in the results)"
fi
if [ -n "$WHEELS" ]; then
  say "installing wheels from $WHEELS into $WORK/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" || say "WARNING: wheel install failed (see log)"
fi
# the project importable as flexrt.* without installing it: a namespace of links to the repo's folders
if ! $PY -c "import flexrt.benchmarks.cli" >/dev/null 2>&1; then
  site="$WORK/flexrt-site"
  rm -rf "$site" && mkdir -p "$site/flexrt"
  ln -s "$REPO/flexrt/__init__.py" "$REPO/flexrt/cli.py" "$site/flexrt/"
  for d in model export runtime kernels proto benchmarks; do ln -s "$REPO/$d" "$site/flexrt/$d"; done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# run every phase from the scratch folder: from the repo root, its own flexrt/ folder would shadow the namespace
mkdir -p "$WORK" && cd "$WORK"
GSPLAT_MARK="$WORK/gsplat_unavailable"
GSPLAT_READY="$WORK/gsplat_ready"

BENCH_ARGS=(--engines "$ENGINES" --out "$WORK" --append)
[ "$TENSORRT" = 1 ] && BENCH_ARGS+=(--export-tensorrt)
[ "$QUICK" = 1 ] && BENCH_ARGS+=(--batch-sizes 1,8,32 --resolutions 512 --streams 1,8,16,32,48,64 --duration 3 --iters 50)
BENCH_ARGS+=("${EXTRA[@]}")
if [ "$FRESH" = 1 ]; then rm -f "$WORK/bench.json" "$WORK/psnr.json" "$WORK/psnr.md" "$GSPLAT_MARK"; fi
rm -f "$GSPLAT_MARK"  # a gsplat failure is retried by each command's gsplat phase (the build may be cached now)
[ "$NO_GSPLAT" = 1 ] && echo "gsplat not run: run_device.sh --no-gsplat" > "$GSPLAT_MARK"

copy_results() {
  for f in bench.json bench.md bench_streams.png bench_stages.png psnr.json psnr.md gpu_tests.log; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT_DIR/$f"
  done
  return 0
}

# the budget this phase may use: its nominal share, less what the later phases need at least
phase_timeout() {
  local name=$1 later=0 seen=0 p
  for p in "${SEL[@]}"; do
    if [ "$seen" = 1 ]; then later=$(( later + ${MINIMUM[$p]} )); fi
    [ "$p" = "$name" ] && seen=1
  done
  local avail=$(( $(remaining) - later ))
  local t=${NOMINAL[$name]}
  [ "$avail" -lt "$t" ] && t=$avail
  echo "$t"
}

run_bench_phase() {  # $1 = bench phase name, $2 = timeout seconds
  local inner=$(( $2 - 20 ))  # the Python side wraps up before the hard kill (imports, model load, report)
  [ "$inner" -lt 10 ] && inner=10
  local env=()
  if [ -f "$GSPLAT_MARK" ]; then
    env=(FLEXRT_BENCH_GSPLAT_UNAVAILABLE="$(cat "$GSPLAT_MARK")")
  elif [ ! -f "$GSPLAT_READY" ]; then  # never let a measurement phase start gsplat's JIT build by surprise
    env=(FLEXRT_BENCH_GSPLAT_UNAVAILABLE="gsplat was not built on this machine (run the gsplat phase first)")
  fi
  env "${env[@]}" timeout --kill-after=10 "$2" $PY -m flexrt.cli bench --phases "$1" --budget "$inner" \
    "${BENCH_ARGS[@]}" >>"$LOG" 2>&1
}

for phase in "${SEL[@]}"; do
  t=$(phase_timeout "$phase")
  if [ "$phase" = setup ] || [ "$phase" = report ]; then  # cheap and always wanted
    t=${NOMINAL[$phase]}
  fi
  if [ "$t" -lt "${MINIMUM[$phase]}" ]; then
    STATUS[$phase]="skipped (budget: ${t}s left for it, needs ${MINIMUM[$phase]}s)"
    say "phase $phase: ${STATUS[$phase]}"
    continue
  fi
  say "phase $phase (timeout ${t}s, $(remaining)s of the budget left)"
  start=$(date +%s)
  rc=0
  case "$phase" in
    setup)
      {
        echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
        echo "== python: $($PY --version 2>&1) at $(command -v $PY)"
        timeout "$t" $PY - <<'EOF'
import importlib, importlib.metadata as md
for mod, dist in [("torch", "torch"), ("onnxruntime", None), ("onnx", "onnx"), ("cupy", None), ("gsplat", "gsplat"),
                  ("tensorrt", "tensorrt"), ("grpc", "grpcio"), ("grpc_health", "grpcio-health-checking"),
                  ("grpc_reflection", "grpcio-reflection"), ("google.protobuf", "protobuf"), ("safetensors", None),
                  ("PIL", "pillow"), ("tqdm", None), ("matplotlib", None), ("flexrt.runtime.server", None)]:
    try:
        m = importlib.import_module(mod)
        v = getattr(m, "__version__", None) or (md.version(dist) if dist else "?")
        extra = ""
        if mod == "torch":
            extra = f" cuda={m.version.cuda} gpu={m.cuda.get_device_name(0) if m.cuda.is_available() else None}"
        if mod == "onnxruntime":
            extra = f" providers={m.get_available_providers()}"
        print(f"  ok      {mod:22s} {v}{extra}")
    except Exception as e:
        print(f"  MISSING {mod:22s} {type(e).__name__}: {e}")
EOF
        echo "== reference data: ${FLEXRT_SHARED:-not found}"
      } 2>&1 | tee -a "$LOG"
      rc=${PIPESTATUS[0]}
      ;;
    gsplat)
      if [ -f "$GSPLAT_MARK" ]; then
        say "gsplat: $(cat "$GSPLAT_MARK")"
        STATUS[$phase]="unavailable: $(cat "$GSPLAT_MARK")"; SECONDS_USED[$phase]=0; continue
      fi
      timeout --kill-after=10 "$t" $PY -m flexrt.benchmarks.bench_e2e build-gsplat >>"$LOG" 2>&1
      rc=$?
      if [ "$rc" = 0 ]; then
        touch "$GSPLAT_READY"
      else
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
          reason="gsplat's CUDA extension did not build within ${t}s (JIT build; rerun the gsplat phase alone on a warm machine)"
          find "$HOME/.cache/torch_extensions" -name lock -delete 2>/dev/null  # a killed build leaves its lock behind
        else
          reason="gsplat failed: $(grep -v '^\s*$' "$LOG" | tail -n 1 | cut -c1-300)"
        fi
        echo "$reason" > "$GSPLAT_MARK"
        say "gsplat: $reason"
      fi
      ;;
    tests)  # the project's GPU tests (pytest -m gpu), log copied to OUT as gpu_tests.log
      env FLEXRT_SHARED="${FLEXRT_SHARED:-}" timeout --kill-after=10 "$t" $PY -m pytest -m gpu -q -rs -p no:cacheprovider \
        "$REPO/tests" >"$WORK/gpu_tests.log" 2>&1
      rc=$?
      tail -n 25 "$WORK/gpu_tests.log" | tee -a "$LOG"
      ;;
    export)
      if [ -f "$ENGINES/manifest.json" ]; then
        say "engines already in $ENGINES"
      else
        run_bench_phase export "$t"; rc=$?
      fi
      ;;
    report)
      if [ -f "$WORK/bench.json" ]; then
        timeout "$t" $PY -m flexrt.cli bench --merge "$WORK/bench.json" --out "$WORK" --quiet >>"$LOG" 2>&1; rc=$?
      else
        say "report: no $WORK/bench.json yet"; rc=1
      fi
      ;;
    *)
      run_bench_phase "$phase" "$t"; rc=$?
      ;;
  esac
  SECONDS_USED[$phase]=$(( $(date +%s) - start ))
  if [ "$phase" = gsplat ] && [ "$rc" != 0 ] && [ -f "$GSPLAT_MARK" ]; then
    STATUS[$phase]="unavailable: $(cut -c1-160 "$GSPLAT_MARK")"
    say "phase gsplat: ${STATUS[$phase]} in ${SECONDS_USED[$phase]}s"
    copy_results
    continue
  fi
  case "$rc" in
    0) STATUS[$phase]=ok ;;
    124|137) STATUS[$phase]="TIMED OUT after ${t}s (partial results kept)" ;;
    *) STATUS[$phase]="failed (exit $rc; see run_device.log)" ;;
  esac
  say "phase $phase: ${STATUS[$phase]} in ${SECONDS_USED[$phase]}s"
  copy_results
  cp "$LOG" "$LOG.tmp" 2>/dev/null && mv "$LOG.tmp" "$LOG"
done

# ---- compact summary, last -----------------------------------------------------------------------------------
{
  echo
  echo "================ run_device.sh summary ($(( $(date +%s) - T0 ))s of ${BUDGET}s) ================"
  for p in "${SEL[@]}"; do printf '  %-8s %-60s %ss\n' "$p" "${STATUS[$p]:-not run}" "${SECONDS_USED[$p]:--}"; done
  if [ -f "$WORK/bench.json" ]; then
    $PY - "$WORK/bench.json" <<'EOF'
import json, sys
from flexrt.benchmarks.report import summary_lines
d = json.load(open(sys.argv[1]))
print("\n".join(summary_lines(d)))
dec = [r for r in d.get("decoder", []) if r.get("status") == "ok" and r["batch"] == 1]
if dec:
    print("  decoder batch 1 (median / p99 ms): " + ", ".join(f"{r['backend']} {r['median_ms']:.2f}/{r['p99_ms']:.2f}" for r in dec))
ren = [r for r in d.get("render", []) if r.get("status") == "ok" and r["batch"] == 1]
if ren:
    print("  render batch 1 (median ms): " + ", ".join(f"{r['backend']} {r['resolution']}² {r['median_ms']:.3f}" for r in ren))
for r in (d.get("grpc") or {}).get("concurrency", []):
    if r.get("status") == "ok":
        lat = r["latency"]
        print(f"  grpc {r['streams']:2d} streams: {r['achieved_fps_per_stream_median']:.1f} fps/stream, dropped "
              f"{r['dropped']}, p50 {lat['p50_ms'] or float('nan'):.1f} ms, p99 {lat['p99_ms'] or float('nan'):.1f} ms")
EOF
  fi
  echo "results: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
} 2>&1 | tee -a "$LOG"
copy_results
exit 0
