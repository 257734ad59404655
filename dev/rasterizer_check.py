"""One-call GPU check of the rasterizer (for a lent GPU machine): environment, gsplat JIT build (in the
background, while our own GPU tests run), GPU + CPU tests, gsplat comparison test, benchmark; logs and JSON
under --out; a compact summary printed last.

    export PYTHONUNBUFFERED=1; pip install -q --no-deps --no-build-isolation -e .
    source .device/install.sh; set +e          # gsplat wheel (../shared/tools/device-wheels prepare gsplat==1.5.3)
    python3 benchmarks/dev_rasterizer_check.py --out "$OUT"
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = Path("/tmp/flexrt_devcheck")  # neutral cwd: ROOT/flexrt would shadow the flexrt namespace
SHIM = RUN_DIR / "shim"


def make_shim() -> Path:
    """flexrt namespace without pip: SHIM/flexrt = flexrt/__init__.py + symlinks to the package folders."""
    pkg = SHIM / "flexrt"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text((ROOT / "flexrt" / "__init__.py").read_text())
    for sub in ("kernels", "benchmarks"):
        link = pkg / sub
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / sub, target_is_directory=True)
    return SHIM


def sh(cmd: list[str], log: Path, timeout: float, env=None) -> tuple[int, float]:
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=RUN_DIR, env=env).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.time() - t0


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--bench-args", default="", help="extra arguments for bench_rasterizer")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole script")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    summary = []
    shim = make_shim()
    pypath = os.pathsep.join([str(shim)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "12"), PYTHONPATH=pypath,
               TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))

    info = subprocess.run(
        [sys.executable, "-c", "import torch, cupy; print(torch.__version__, torch.version.cuda, "
         "torch.cuda.get_device_name(), 'cupy', cupy.__version__); import flexrt.kernels as k; print(k.__file__)"],
        capture_output=True, text=True, cwd=RUN_DIR, env=env)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                              "temperature.gpu,utilization.gpu", "--format=csv"], capture_output=True, text=True).stdout
    except OSError as exc:
        smi = f"nvidia-smi: {exc}"
    summary.append("ENV " + (info.stdout + info.stderr).strip().replace("\n", " | ") + " | " +
                   smi.strip().replace("\n", " | "))

    # gsplat JIT build in the background (CPU-bound nvcc), while our own GPU tests run
    glog = out / "gsplat_build.log"
    gproc = subprocess.Popen([sys.executable, "-c", "import time; t=time.time(); from gsplat.cuda._backend import _C; "
                              "print('gsplat build ok', _C is not None, round(time.time()-t, 1), 's')"],
                             stdout=open(glog, "w"), stderr=subprocess.STDOUT, cwd=RUN_DIR, env=env)
    if not a.skip_tests:
        rc, dt = sh([sys.executable, "-m", "pytest", "-q", "-s", "-rs", "-p", "no:cacheprovider",
                     str(ROOT / "tests/test_rasterizer_gpu.py"), str(ROOT / "tests/test_rasterizer_cpu.py"), "-k", "not gsplat",
                     "--durations=5"], out / "pytest_ours.log", timeout=300, env=env)
        summary.append(f"PYTEST ours rc={rc} ({dt:.0f}s): " + tail(out / "pytest_ours.log", 1))
    try:
        gproc.wait(timeout=max(30.0, a.budget - 200 - (time.time() - t_start)))
    except subprocess.TimeoutExpired:
        gproc.kill()
    g_ok = "gsplat build ok" in glog.read_text(errors="replace")
    summary.append(f"GSPLAT build: {tail(glog, 1)}")
    if g_ok and not a.skip_tests:
        rc, dt = sh([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                     str(ROOT / "tests/test_rasterizer_gpu.py"), "-k", "gsplat"], out / "pytest_gsplat.log", timeout=150, env=env)
        summary.append(f"PYTEST gsplat rc={rc} ({dt:.0f}s): " + tail(out / "pytest_gsplat.log", 1))

    # GPU-side floor: per-kernel CUPTI times and CUDA-graph replay of one frame
    for G, res, cams in ((58361, 512, 1), (58361, 512, 8)):
        tag = f"profile_{G}_{res}_{cams}"
        rc, dt = sh([sys.executable, "-m", "flexrt.benchmarks.profile_rasterizer", "--G", str(G), "--res", str(res),
                     "--cams", str(cams), "--out", str(out / f"{tag}.json")], out / f"{tag}.log", timeout=120, env=env)
        summary.append(f"PROFILE {G}/{res}/{cams} rc={rc}: " + tail(out / f"{tag}.log", 12).replace("\n", " | "))

    left = a.budget - (time.time() - t_start)
    bench = [sys.executable, "-m", "flexrt.benchmarks.bench_rasterizer", "--out", str(out / "bench.json")]
    if not g_ok:
        bench += ["--backends", "cupy"]
    bench += a.bench_args.split()
    rc, dt = sh(bench, out / "bench.log", timeout=max(60.0, left - 10), env=env)
    summary.append(f"BENCH rc={rc} ({dt:.0f}s)")

    print("=" * 30 + " logs " + "=" * 30)
    for name in ("pytest_ours.log", "pytest_gsplat.log"):
        text = (out / name).read_text(errors="replace") if (out / name).exists() else ""
        keep = [ln for ln in text.splitlines() if re.search(r"PSNR|FAILED|Error|error|assert|SKIPPED|passed|failed", ln)]
        print(f"--- {name} ---")
        print("\n".join(keep[-40:]))
    print("--- bench.log ---")
    print(tail(out / "bench.log", 40))
    try:
        rows = json.loads((out / "bench.json").read_text())["rows"]
        for r in rows:
            if "stage_ms" in r:
                print(f"stages G={r['G']} res={r['res']} cams={r['cams']} {r['backend']}: "
                      + " ".join(f"{k}={v:.3f}" for k, v in r["stage_ms"].items()))
    except Exception as exc:
        print(f"(no bench.json: {exc})")
    print("=" * 30 + " summary " + "=" * 30)
    print("\n".join(summary))
    print(f"total {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
