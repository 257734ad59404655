"""Benchmark results: the JSON document, the environment record, targets and baseline ratios, the Markdown
report and the PNG plots.

    bench.json         every measurement row (status ok / unavailable / skipped / error, with reasons)
    bench.md           the same as tables: targets, official-path baseline vs the runtime's best path, stages
    bench_streams.png  gRPC latency p50 / p99 and achieved fps vs concurrent streams
    bench_stages.png   per-stage latency bars

Rows are keyed (e.g. decoder rows by backend and batch) so results of several runs can be merged: later rows
replace earlier ones with the same key (``merge``; ``flexavatar bench --merge a.json b.json --out DIR``).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path

SCHEMA = "flexavatar-bench/1"
JSON_NAME, MD_NAME = "bench.json", "bench.md"
STREAMS_PNG, STAGES_PNG = "bench_streams.png", "bench_stages.png"

# The official implementation on the H100 (shared/reference/README.md, measured 2026-11-23, a separate run).
REFERENCE_OFFICIAL_H100 = {
    "source": "shared/reference/README.md: official code, H100 80GB, torch 2.11+cu130, gsplat 1.5.3, 2026-11-23",
    "decoder_fp32_eager_ms": 19.84, "decoder_bf16_ms": 16.33, "decoder_compiled_ms": 13.34,
    "gsplat_render_512_ms": 1.13, "frame_fp32_eager_ms": 24.49, "frame_compiled_ms": 16.70,
}
TARGET_FRAME_MS = 1.8
TARGET_RASTER_SPEEDUP = 2.0
TARGET_STREAMS = 64
TARGET_PSNR_DB = 45.0

ROW_KEYS = {
    "decoder": ("backend", "batch"),
    "render": ("backend", "resolution", "batch"),
    "encode": ("format", "resolution"),
    "e2e": ("path", "decoder", "rasterizer", "resolution", "batch", "encoding"),
}
WHOLE_SECTIONS = ("grpc", "psnr", "e2e_summary", "rasterizer_synthetic")


# ------------------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def environment(device) -> dict:
    """GPU, driver and library versions of this run (nothing heavy is imported: versions come from metadata)."""
    import numpy as np
    import torch

    import flexrt

    env = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "numpy": np.__version__, "pillow": _version("pillow"), "grpcio": _version("grpcio"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnxruntime_gpu_dist": _version("onnxruntime-gpu"), "tensorrt": _version("tensorrt"),
        "cupy": _version("cupy-cuda12x") or _version("cupy-cuda13x") or _version("cupy"),
        "gsplat": _version("gsplat"), "matplotlib": _version("matplotlib"), "flexrt": flexrt.__version__,
        "git_commit": _git("rev-parse", "HEAD"), "device": str(device),
    }
    dirty = _git("status", "--porcelain")
    env["git_dirty"] = None if dirty is None else bool(dirty)
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_sms=props.multi_processor_count,
                   driver=nvidia_driver(), cudnn=torch.backends.cudnn.version())
    else:
        env.update(gpu=None, driver=None)
    return env


# ------------------------------------------------------------------------------------------------------------
# the results document
# ------------------------------------------------------------------------------------------------------------

def _clean(obj):
    """JSON-safe: NaN -> None, +inf -> "inf", numpy scalars -> Python, dict keys -> str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (AttributeError, ValueError):
            return str(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def new_results(mode: str, config: dict) -> dict:
    return {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": mode, "config": config, "environment": {}, "model": {}, "phases": {},
            "decoder": [], "render": [], "encode": [], "e2e": []}


def _key(section: str, row: dict) -> tuple:
    return tuple(row.get(k) for k in ROW_KEYS[section])


class Recorder:
    """The results document of one invocation, saved to ``out_dir/bench.json`` after every row (so a run that
    is killed by a time limit still leaves what it measured)."""

    def __init__(self, out_dir: str | Path, data: dict):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / JSON_NAME
        self.data = data

    def add_row(self, section: str, row: dict) -> None:
        rows = self.data.setdefault(section, [])
        key = _key(section, row)
        rows[:] = [r for r in rows if _key(section, r) != key] + [row]
        self.save()

    def set(self, section: str, value) -> None:
        self.data[section] = value
        self.save()

    def save(self) -> None:
        save_json(self.data, self.path)


def save_json(data: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def load_json(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} document (schema {data.get('schema')!r})")
    return data


def merge(docs: list[dict], sources: list[str] | None = None) -> dict:
    """Merge result documents in order: keyed rows of later documents replace earlier ones; whole sections
    (gRPC, PSNR) and the environment / model come from the last document that has them."""
    if not docs:
        raise ValueError("nothing to merge")
    out = json.loads(json.dumps(docs[0]))
    out["merged_from"] = []
    for i, doc in enumerate(docs):
        out["merged_from"].append({"source": (sources or [None] * len(docs))[i], "created": doc.get("created"),
                                   "mode": doc.get("mode"), "device": doc.get("environment", {}).get("device"),
                                   "gpu": doc.get("environment", {}).get("gpu")})
        if i == 0:
            continue
        for section in ROW_KEYS:
            for row in doc.get(section, []):
                rows = out.setdefault(section, [])
                rows[:] = [r for r in rows if _key(section, r) != _key(section, row)] + [row]
        for section in WHOLE_SECTIONS:
            if doc.get(section):
                out[section] = doc[section]
        for section in ("environment", "model", "config"):
            if doc.get(section):
                out[section] = doc[section]
        out.setdefault("phases", {}).update(doc.get("phases", {}))
        out["created"] = doc.get("created", out.get("created"))
        if doc.get("mode") != out.get("mode"):
            out["mode"] = "mixed"
    gpus = {m["gpu"] for m in out["merged_from"]}
    if len(gpus) > 1:
        out.setdefault("notes", []).append(f"MERGED FROM DIFFERENT MACHINES ({sorted(map(str, gpus))}): ratios "
                                           "between rows of different runs are not same-run comparisons")
    return out


# ------------------------------------------------------------------------------------------------------------
# targets and the official-path baseline
# ------------------------------------------------------------------------------------------------------------

def _ok(rows, **match) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def _first(rows, **match) -> dict | None:
    found = _ok(rows, **match)
    return found[-1] if found else None


def baseline(data: dict) -> dict:
    """Official path (eager fp32 decoder + gsplat) vs the runtime's best path, from the same run."""
    ref = (data.get("e2e_summary") or {}).get("reference_resolution", 512)
    e2e = data.get("e2e", [])
    out: dict = {"resolution": ref, "reference_readme": REFERENCE_OFFICIAL_H100}
    official = _first(e2e, path="official", resolution=ref, batch=1, encoding="raw")
    best = _first(e2e, path="best", resolution=ref, batch=1, encoding="raw")
    rows = {}
    if official and best:
        rows["frame (expression -> uint8 frame in host memory)"] = (official["median_ms"], best["median_ms"])
        for stage in ("decode", "render", "readback"):
            rows[f"  stage: {stage}"] = (official["stages_median_ms"][stage], best["stages_median_ms"][stage])
    dec = data.get("decoder", [])
    eager = _first(dec, backend="torch-eager-fp32", batch=1)
    fastest = min(_ok(dec, batch=1), key=lambda r: r["median_ms"], default=None)
    if eager and fastest:
        rows[f"decoder alone, batch 1 (best: {fastest['backend']})"] = (eager["median_ms"], fastest["median_ms"])
    ren = data.get("render", [])
    gs = _first(ren, backend="gsplat", resolution=ref, batch=1)
    cu = _first(ren, backend="cupy", resolution=ref, batch=1)
    if gs and cu:
        rows[f"rasterizer alone, {ref}², batch 1 (cupy)"] = (gs["median_ms"], cu["median_ms"])
    out["rows"] = [{"what": k, "official_ms": a, "runtime_ms": b, "speedup": a / b if b else None}
                   for k, (a, b) in rows.items()]
    if official is None:
        why = [r for r in e2e if r.get("path") == "official" and r.get("status") != "ok"]
        out["official_status"] = (f"{why[0]['status']}: {why[0].get('reason')}" if why else "not measured")
    if best is not None:
        out["best_path"] = f"{best['decoder']} + {best['rasterizer']}"
    return out


def targets(data: dict) -> list[dict]:
    out = []
    e2e, ren = data.get("e2e", []), data.get("render", [])
    # 1. expression -> frame
    best = _first(e2e, path="best", resolution=512, batch=1, encoding="raw")
    t = {"target": f"expression -> frame <= {TARGET_FRAME_MS} ms median, 512², batch 1"}
    if best:
        t.update(measured=f"{best['median_ms']:.3f} ms ({best['decoder']} + {best['rasterizer']}; p99 "
                          f"{best['p99_ms']:.3f} ms)", passed=best["median_ms"] <= TARGET_FRAME_MS)
    else:
        other = [r for r in _ok(e2e, path="best", batch=1, encoding="raw")]
        t.update(measured="not measured at 512²" + (f"; at {other[0]['resolution']}²: {other[0]['median_ms']:.3f} ms"
                                                     if other else ""), passed=None)
    out.append(t)
    # 2. rasterizer vs gsplat
    t = {"target": f"rasterizer >= {TARGET_RASTER_SPEEDUP:g}x gsplat (512², batch 1)"}
    gs = _first(ren, backend="gsplat", resolution=512, batch=1)
    cu = _first(ren, backend="cupy", resolution=512, batch=1)
    if gs and cu:
        ratio = gs["median_ms"] / cu["median_ms"]
        t.update(measured=f"{ratio:.2f}x (cupy {cu['median_ms']:.3f} ms, gsplat {gs['median_ms']:.3f} ms)",
                 passed=ratio >= TARGET_RASTER_SPEEDUP)
        others = []
        for res in sorted({r["resolution"] for r in _ok(ren, backend="cupy", batch=1)}):
            g2, c2 = _first(ren, backend="gsplat", resolution=res, batch=1), _first(ren, backend="cupy", resolution=res, batch=1)
            if g2 and c2 and res != 512:
                others.append(f"{res}²: {g2['median_ms'] / c2['median_ms']:.2f}x")
        if others:
            t["measured"] += "; " + ", ".join(others)
    else:
        missing = [r for r in ren if r.get("backend") in ("gsplat", "cupy") and r.get("status") != "ok"
                   and r.get("resolution") == 512 and r.get("batch") == 1]
        t.update(measured="not measured" + (": " + "; ".join(f"{r['backend']} {r['status']}: {r.get('reason')}"
                                                              for r in missing) if missing else ""), passed=None)
    out.append(t)
    # 3. concurrent streams
    grpc = data.get("grpc") or {}
    t = {"target": f">= {TARGET_STREAMS} concurrent 30-fps streams at p99 <= 33 ms"}
    server = grpc.get("server") or {}
    conc = [r for r in grpc.get("concurrency", []) if r.get("status") == "ok" and "avatar_creation" not in r
            and r.get("encoding", server.get("encoding")) == server.get("encoding")]
    if conc:
        from .bench_grpc import max_streams_meeting_target

        best_s = max_streams_meeting_target(conc)
        tested = max(r["streams"] for r in conc)
        failing = [r for r in conc if not r["meets_target"]]
        detail = (f"{best_s or 0} streams met it (tested up to {tested}; {server.get('resolution')}² "
                  f"{server.get('encoding')}, {server.get('backend')} + {server.get('rasterizer')}, fps "
                  f"{server.get('fps')})")
        passed = (best_s or 0) >= TARGET_STREAMS if (failing or tested >= TARGET_STREAMS) else None
        if server.get("fps") != 30:
            passed = None
            detail += "; not at 30 fps"
        t.update(measured=detail, passed=passed)
    else:
        t.update(measured="not measured" + (f": {server.get('status')}: {server.get('reason')}"
                                            if server.get("status") not in (None, "ok") else ""), passed=None)
    out.append(t)
    # 4. fp16 render PSNR (when measured)
    psnr = data.get("psnr")
    if psnr:
        for pair in psnr.get("pairs", []):
            t = {"target": f"fp16 render PSNR >= {TARGET_PSNR_DB:g} dB ({pair['name']}, "
                           f"{psnr.get('resolution')}², {psnr.get('frames')} frames)"}
            if pair.get("status") == "ok":
                t.update(measured=f"min {_db(pair['psnr_min'])}, median {_db(pair['psnr_median'])}",
                         passed=pair["pass_min"])
            else:
                t.update(measured=f"{pair.get('status')}: {pair.get('reason')}", passed=None)
            out.append(t)
    return out


def _db(v) -> str:
    return "inf dB" if v == "inf" or (isinstance(v, float) and math.isinf(v)) else f"{v:.2f} dB"


def unavailable(data: dict) -> list[dict]:
    """Every row that did not run, with its reason (one entry per distinct (what, status, reason))."""
    seen, out = set(), []

    def add(what, row):
        item = (what, row.get("status"), row.get("reason"))
        if item not in seen:
            seen.add(item)
            out.append({"what": what, "status": row.get("status"), "reason": row.get("reason")})

    for r in data.get("decoder", []):
        if r.get("status") != "ok":
            add(f"decoder {r['backend']}" + (f" batch {r['batch']}" if r.get("status") != "unavailable" else ""), r)
    for r in data.get("render", []):
        if r.get("status") != "ok":
            add(f"rasterizer {r['backend']}" + (f" {r['resolution']}² batch {r['batch']}"
                                                if r.get("status") != "unavailable" else ""), r)
    for r in data.get("encode", []):
        if r.get("status") != "ok":
            add(f"encode {r['format']} {r['resolution']}²", r)
    for r in data.get("e2e", []):
        if r.get("status") != "ok":
            add(f"e2e {r['path']} ({r['decoder']} + {r['rasterizer']})" +
                (f" {r['resolution']}² b{r['batch']} {r['encoding']}" if r.get("status") != "unavailable" else ""), r)
    grpc = data.get("grpc") or {}
    if grpc.get("server", {}).get("status") not in (None, "ok"):
        add("gRPC server", grpc["server"])
    for r in grpc.get("round_trip", []) + grpc.get("concurrency", []):
        if r.get("status") != "ok":
            add(f"gRPC {r.get('encoding') or str(r.get('streams')) + ' streams'}", r)
    syn = data.get("rasterizer_synthetic") or {}
    if syn.get("status") not in (None, "ok"):
        add("rasterizer benchmark on synthetic scenes", syn)
    for r in syn.get("rows", []):
        if r.get("error"):
            add(f"rasterizer benchmark on synthetic scenes: {r.get('backend')}",
                {"status": "error" if not str(r["error"]).startswith("unavailable") else "unavailable",
                 "reason": r["error"]})
    for p in (data.get("psnr") or {}).get("pairs", []):
        if p.get("status") != "ok":
            add(f"PSNR {p['name']}", p)
    for name, ph in data.get("phases", {}).items():
        if ph.get("status") not in ("ok", None):
            add(f"phase {name}", {"status": ph.get("status"), "reason": ph.get("error")})
    return out


# ------------------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------------------

def _f(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _status_cell(r: dict) -> str:
    return f"{r['status']}: {r.get('reason')}"


def _engine(text: str | None) -> str | None:
    """EngineInfo.describe() without the long weight hashes (they are in bench.json)."""
    if not text:
        return text
    return re.sub(r", (weights|preset)=[^,)]*", "", text)


def markdown(data: dict) -> str:
    env, model, cfg = data.get("environment", {}), data.get("model", {}), data.get("config", {})
    L = [f"# FlexAvatar Runtime benchmark ({data.get('mode')}, {data.get('created')})", ""]
    for note in data.get("notes", []):
        L += [f"**{note}**", ""]
    if data.get("mode") == "smoke":
        L += ["**SMOKE RUN**: tiny preset, tiny sizes, a handful of iterations. It checks that the tool works; "
              "its numbers say nothing about FLEX-1 speed.", ""]
    gpu = env.get("gpu") or "none"
    L += ["## Environment", "",
          f"- device: {env.get('device')}; GPU: {gpu}; driver: {env.get('driver') or '–'}; "
          f"CUDA (torch): {env.get('torch_cuda') or '–'}; CPU: {env.get('cpu')} ({env.get('cpu_count')} cores)",
          f"- python {env.get('python')}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime') or '–'} "
          f"(providers: {', '.join(env.get('onnxruntime_providers') or []) or '–'}), tensorrt "
          f"{env.get('tensorrt') or '–'}, cupy {env.get('cupy') or '–'}, gsplat {env.get('gsplat') or '–'}, "
          f"grpcio {env.get('grpcio')}, pillow {env.get('pillow')}",
          f"- flexrt {env.get('flexrt')}, commit {env.get('git_commit') or '–'}"
          f"{' (uncommitted changes)' if env.get('git_dirty') else ''}",
          f"- model: preset {model.get('preset')}, G = {model.get('num_gaussians')}, head tokens "
          f"{model.get('num_head_tokens')} x {model.get('hidden_dim')}; weights: {model.get('weights')}; "
          f"template: {model.get('template')}",
          f"- inputs: {model.get('expressions')}; every iteration gets different expression codes, every batch "
          "row a different avatar code",
          f"- timing: warm-up {cfg.get('warmup')}, up to {cfg.get('iters')} timed iterations per measurement "
          f"(fewer where the time budget says so: see n); GPU stages by CUDA events (device synchronised before "
          f"each iteration), CPU and end-to-end by perf_counter", ""]

    L += ["## Targets", ""]
    L += _table(["target", "measured", "result"],
                [[t["target"], t["measured"], {True: "PASS", False: "FAIL", None: "not measured"}[t["passed"]]]
                 for t in targets(data)])

    b = baseline(data)
    L += [f"## Official-path baseline vs the runtime's best path (same run, {b['resolution']}², batch 1)", "",
          "Official path = eager fp32 decoder (the official inference setting) + gsplat 1.5.3 with the official "
          f"settings. Runtime's best path = {b.get('best_path', '–')}.", ""]
    if b.get("official_status"):
        L += [f"Official path end to end: {b['official_status']}", ""]
    if b["rows"]:
        L += _table(["", "official ms", "runtime ms", "speedup"],
                    [[r["what"], r["official_ms"], r["runtime_ms"],
                      f"{r['speedup']:.2f}x" if r["speedup"] else "–"] for r in b["rows"]])
    ref = REFERENCE_OFFICIAL_H100
    L += [f"For context, the official code's own numbers ({ref['source']}): decoder fp32 eager "
          f"{ref['decoder_fp32_eager_ms']} ms, bf16 {ref['decoder_bf16_ms']} ms, compiled {ref['decoder_compiled_ms']} "
          f"ms; gsplat 512² {ref['gsplat_render_512_ms']} ms; frame {ref['frame_fp32_eager_ms']} ms eager / "
          f"{ref['frame_compiled_ms']} ms compiled (medians).", ""]

    dec = data.get("decoder", [])
    if dec:
        L += ["## Decoder (avatar code + expression -> Gaussians)", ""]
        L += _table(["backend", "batch", "median ms", "p99 ms", "per frame ms", "frames/s", "n", "engine / status"],
                    [[r["backend"], r["batch"], r["median_ms"], r["p99_ms"], r["per_frame_ms"], r["frames_per_s"],
                      r["n"], _engine(r.get("engine"))] if r["status"] == "ok" else
                     [r["backend"], r["batch"], None, None, None, None, None, _status_cell(r)] for r in dec])
    ren = data.get("render", [])
    if ren:
        L += ["## Rasterizer (SH-DC -> RGB + rasterize, white background, default camera)", ""]
        L += _table(["backend", "resolution", "batch", "median ms", "p99 ms", "per frame ms", "coverage", "n / status"],
                    [[r["backend"], f"{r['resolution']}²", r["batch"], r["median_ms"], r["p99_ms"], r["per_frame_ms"],
                      r["coverage"], r["n"]] if r["status"] == "ok" else
                     [r["backend"], f"{r['resolution']}²", r["batch"], None, None, None, None, _status_cell(r)]
                     for r in ren])
    syn = data.get("rasterizer_synthetic")
    if syn:
        L += ["## Rasterizer on synthetic scenes (the kernel owner's benchmark)", "", f"Source: {syn.get('source')}.", ""]
        if syn.get("status") != "ok":
            L += [_status_cell(syn), ""]
        else:
            L += [syn.get("markdown", ""), ""]
            L += [f"- {r.get('backend')} {r.get('G', '')} {r.get('res', '')} {r.get('cams', '')}: {r['error']}"
                  for r in syn.get("rows", []) if r.get("error")] + [""]
    enc = data.get("encode", [])
    if enc:
        L += ["## Frame encoding (per frame, host CPU)", ""]
        L += _table(["format", "resolution", "median ms", "p99 ms", "bytes", "encoder / status"],
                    [[r["format"], f"{r['resolution']}²", r["median_ms"], r["p99_ms"], r["bytes_median"], r["encoder"]]
                     if r["status"] == "ok" else [r["format"], f"{r['resolution']}²", None, None, None,
                                                  _status_cell(r)] for r in enc])
    e2e = data.get("e2e", [])
    if e2e:
        L += ["## End to end in process: expression -> frame", "",
              "Host expression codes -> device -> decode -> render -> uint8 -> host (-> encode). `raw` ends with the "
              "uint8 frame in host memory. Stage medians: decode includes the host->device copy of the expression "
              "codes; readback is the uint8 device->host copy.", ""]
        L += _table(["path", "decoder", "rasterizer", "res", "batch", "enc", "median ms", "p99 ms", "per frame",
                     "decode", "render", "readback", "encode", "n / status"],
                    [[r["path"], r["decoder"], r["rasterizer"], f"{r['resolution']}²", r["batch"], r["encoding"],
                      r["median_ms"], r["p99_ms"], r["per_frame_ms"], *[r["stages_median_ms"][k] for k in
                                                                        ("decode", "render", "readback", "encode")],
                      r["n"]] if r["status"] == "ok" else
                     [r["path"], r["decoder"], r["rasterizer"], f"{r['resolution']}²", r["batch"], r["encoding"],
                      *[None] * 7, _status_cell(r)] for r in e2e])
    grpc = data.get("grpc") or {}
    if grpc:
        s = grpc.get("server", {})
        L += ["## gRPC (flexrt.runtime server + client on 127.0.0.1)", ""]
        if s.get("status") != "ok":
            L += [f"server: {s.get('status')}: {s.get('reason')}", ""]
        else:
            c = s.get("config", {})
            L += [f"Server in process: {_engine(s.get('engine'))}; rasterizer {s.get('rasterizer')}; max batch "
                  f"{c.get('max_batch_size')}, batch wait {c.get('max_batch_wait_ms')} ms, encode workers "
                  f"{c.get('encode_workers')}; clients in {s.get('client_procs')} processes, sending at "
                  f"{s.get('stream_phases', 'aligned')} phases.", ""]
        rt = grpc.get("round_trip", [])
        if rt:
            L += ["Round trip (one stream, one frame in flight):", ""]
            L += _table(["encoding", "res", "p50 ms", "p99 ms", "server ms", "decode", "render", "encode", "queue",
                         "transport ms", "n / status"],
                        [[r["encoding"], f"{r['resolution']}²", r["latency"]["p50_ms"], r["latency"]["p99_ms"],
                          r["server_stage_median_ms"]["server"], r["server_stage_median_ms"]["decode"],
                          r["server_stage_median_ms"]["render"], r["server_stage_median_ms"]["encode"],
                          r["server_stage_median_ms"]["queue"], r["transport_median_ms"], r["n"]]
                         if r["status"] == "ok" else [r["encoding"], r["resolution"], *[None] * 8, _status_cell(r)]
                         for r in rt])
        conc = grpc.get("concurrency", [])
        if conc:
            L += [f"Concurrency sweep ({s.get('resolution')}² {s.get('encoding')}, {s.get('fps')} fps per stream, "
                  f"{s.get('duration_s')} s measured after {s.get('warmup_s')} s warm-up; in flight: "
                  f"{s.get('in_flight')}; meets = every stream got >= 95% of its frames, <= 1% dropped, p99 <= 33 ms):",
                  ""]
            L += _table(["streams", "fps/stream (median)", "min", "total fps", "dropped", "p50 ms", "p99 ms",
                         "mean batch", "server decode", "render", "encode", "queue", "meets"],
                        [[r["streams"], r["achieved_fps_per_stream_median"], r["achieved_fps_per_stream_min"],
                          r["achieved_fps_total"], f"{r['dropped']} ({100 * (r['drop_fraction'] or 0):.1f}%)",
                          r["latency"]["p50_ms"], r["latency"]["p99_ms"], r["batch_size_mean"],
                          r["server_stage_median_ms"]["decode"], r["server_stage_median_ms"]["render"],
                          r["server_stage_median_ms"]["encode"], r["server_stage_median_ms"]["queue"],
                          "yes" if r["meets_target"] else "no" + (f" ({r['failed_streams']} streams failed: "
                                                                   f"{r['stream_errors'][0]})" if r["failed_streams"] else "")]
                         if r["status"] == "ok" else [r["streams"], *[None] * 11, _status_cell(r)] for r in conc])
    psnr = data.get("psnr")
    if psnr:
        L += [psnr_markdown(psnr, heading="##"), ""]
    un = unavailable(data)
    L += ["## Not measured (unavailable, skipped, errors)", ""]
    L += (_table(["what", "status", "reason"], [[u["what"], u["status"], u["reason"]] for u in un]) if un
          else ["Everything ran.", ""])
    ph = data.get("phases", {})
    if ph:
        L += ["## Phases", ""]
        L += _table(["phase", "status", "seconds", "error"],
                    [[k, v.get("status"), f"{v.get('seconds')}", v.get("error")] for k, v in ph.items()])
    plots = data.get("plots")
    if plots:
        L += ["## Plots", ""] + ([f"![{p}]({p})" for p in plots.get("files", [])] or [f"plots: {plots.get('status')}"]) + [""]
    return "\n".join(L)


def psnr_markdown(psnr: dict, heading: str = "#") -> str:
    L = [f"{heading} fp16 / bf16 decoder vs fp32: render PSNR ({psnr.get('resolution')}², {psnr.get('frames')} frames "
         f"of {psnr.get('sequence')}, rasterizer {psnr.get('rasterizer')}, white background, default camera)", "",
         f"Bar: >= {psnr.get('bar_db')} dB per frame (PASS when the minimum over all frames clears it). PSNR on "
         "rgb clamped to [0,1]. Avatar code: " + str(psnr.get("avatar_code")) + "; weights: "
         + str(psnr.get("weights")) + ".", ""]
    rows = []
    for p in psnr.get("pairs", []):
        if p.get("status") == "ok":
            rows.append([p["name"], p["reference"], p["test"], _db(p["psnr_min"]), _db(p["psnr_median"]),
                         _db(p["psnr_mean"]), p.get("worst_frame"), f"{p.get('coverage', 0):.2f}",
                         "PASS" if p["pass_min"] else "FAIL"])
        else:
            rows.append([p["name"], p.get("reference"), p.get("test"), None, None, None, None, None,
                         f"{p.get('status')}: {p.get('reason')}"])
    L += _table(["pair", "reference", "test", "min", "median", "mean", "worst frame", "coverage", "result"], rows)
    return "\n".join(L)


# ------------------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------------------

def plots(data: dict, out_dir: str | Path) -> dict:
    """Write the PNG plots; -> {"status": "ok" | "unavailable: ...", "files": [...]}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"status": "unavailable: matplotlib is not installed (pip install matplotlib; the bench extra)",
                "files": []}
    out_dir = Path(out_dir)
    files = []
    title = f"{data.get('environment', {}).get('gpu') or 'CPU'} - {data.get('model', {}).get('preset')}"
    if data.get("mode") == "smoke":
        title += " (SMOKE: tiny preset, numbers meaningless)"
    # latency vs streams
    conc = [r for r in (data.get("grpc") or {}).get("concurrency", []) if r.get("status") == "ok"]
    if conc:
        s = data["grpc"]["server"]
        x = [r["streams"] for r in conc]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(x, [r["latency"]["p50_ms"] for r in conc], "o-", label="latency p50")
        ax.plot(x, [r["latency"]["p99_ms"] for r in conc], "s-", label="latency p99")
        ax.axhline(33.0, color="red", ls="--", lw=1, label="p99 target 33 ms")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("latency (ms)")
        ax2 = ax.twinx()
        ax2.plot(x, [r["achieved_fps_per_stream_median"] for r in conc], "^:", color="green",
                 label="achieved fps / stream (median)")
        ax2.axhline(s.get("fps") or 30, color="green", ls=":", lw=0.8)
        ax2.set_ylabel("fps per stream")
        ax2.set_ylim(bottom=0)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
        ax.set_title(f"gRPC streams at {s.get('fps')} fps, {s.get('resolution')}² {s.get('encoding')}\n{title}",
                     fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / STREAMS_PNG, dpi=110)
        plt.close(fig)
        files.append(STREAMS_PNG)
    # per-stage bars
    ref = (data.get("e2e_summary") or {}).get("reference_resolution", 512)
    e2e = [r for r in data.get("e2e", []) if r.get("status") == "ok" and r["batch"] == 1 and r["encoding"] == "raw"
           and r["resolution"] == ref and r["path"] in ("official", "candidate")]
    dec = _ok(data.get("decoder", []), batch=1)
    ren = [r for r in _ok(data.get("render", []), batch=1)]
    enc = [r for r in data.get("encode", []) if r.get("status") == "ok"]
    if e2e or dec or ren:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.2, 1]})
        ax = axes[0]
        if e2e:
            labels = [("OFFICIAL: " if r["path"] == "official" else "") + f"{r['decoder']}\n+ {r['rasterizer']}"
                      for r in e2e]
            bottom = [0.0] * len(e2e)
            for stage, color in (("decode", "#4878d0"), ("render", "#ee854a"), ("readback", "#6acc64")):
                vals = [r["stages_median_ms"][stage] for r in e2e]
                ax.bar(labels, vals, bottom=bottom, label=stage, color=color)
                bottom = [b + v for b, v in zip(bottom, vals)]
            ax.plot(labels, [r["median_ms"] for r in e2e], "k_", markersize=20, label="frame median (host clock)")
            ax.axhline(TARGET_FRAME_MS, color="red", ls="--", lw=1, label=f"target {TARGET_FRAME_MS} ms")
            ax.set_yscale("log")
            ax.set_ylabel("ms (log)")
            ax.set_title(f"expression -> frame, {ref}², batch 1: stage medians", fontsize=9)
            ax.tick_params(axis="x", labelsize=7, rotation=30)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no end-to-end rows", ha="center")
        ax = axes[1]
        items = ([(f"decode {r['backend']}", r["median_ms"], "#4878d0") for r in dec]
                 + [(f"render {r['backend']} {r['resolution']}²", r["median_ms"], "#ee854a") for r in ren
                    if r["resolution"] == ref]
                 + [(f"encode {r['format']} {r['resolution']}²", r["median_ms"], "#6acc64") for r in enc
                    if r["resolution"] == ref])
        if items:
            ax.barh([i[0] for i in items], [i[1] for i in items], color=[i[2] for i in items])
            ax.set_xscale("log")
            ax.set_xlabel("median ms (log), batch 1")
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=7)
            ax.set_title("stages measured alone", fontsize=9)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / STAGES_PNG, dpi=110)
        plt.close(fig)
        files.append(STAGES_PNG)
    return {"status": "ok", "files": files}


def write_report(data: dict, out_dir: str | Path, make_plots: bool = True) -> dict:
    """bench.json + bench.md (+ PNGs) into out_dir; -> data (with "targets", "baseline", "unavailable", "plots")."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data["plots"] = plots(data, out_dir) if make_plots else {"status": "disabled (--no-plots)", "files": []}
    data["targets"] = targets(data)
    data["baseline"] = baseline(data)
    data["unavailable"] = unavailable(data)
    save_json(data, out_dir / JSON_NAME)
    (out_dir / MD_NAME).write_text(markdown(data) + "\n")
    return data


def summary_lines(data: dict) -> list[str]:
    """A compact text summary (targets, baseline ratios, what did not run) for the end of a console run."""
    L = ["== FlexAvatar bench summary " + f"({data.get('mode')}, {data.get('environment', {}).get('gpu') or 'CPU'}) =="]
    for t in targets(data):
        L.append(f"  [{ {True: 'PASS', False: 'FAIL', None: ' -- '}[t['passed']] }] {t['target']}: {t['measured']}")
    b = baseline(data)
    for r in b["rows"]:
        L.append(f"  official vs runtime: {r['what'].strip()}: {r['official_ms']:.3f} -> {r['runtime_ms']:.3f} ms "
                 f"({r['speedup']:.2f}x)" if r["speedup"] else f"  {r['what']}: –")
    if b.get("official_status"):
        L.append(f"  official path: {b['official_status']}")
    un = unavailable(data)
    if un:
        L.append(f"  not measured ({len(un)}):")
        L += [f"    - {u['what']}: {u['status']}: {u['reason']}" for u in un[:25]]
        if len(un) > 25:
            L.append(f"    ... {len(un) - 25} more in bench.md")
    return L
