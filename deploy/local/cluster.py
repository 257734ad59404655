"""Run the scale-out setup on one machine: Redis (the shared avatar store), HAProxy (the balancer,
deploy/haproxy/haproxy.cfg) and N `flexavatar serve` replicas (docs/SCALEOUT.md).

    python deploy/local/cluster.py up --dir run/ [--replicas 3 | --gpus] [--lb-port 50051] [-- SERVE OPTIONS]
    python deploy/local/cluster.py status --dir run/      # HAProxy's view of every replica (UP / DOWN)
    python deploy/local/cluster.py start-replica --dir run/ --index 2   # (re)start replica r2 after it died
    python deploy/local/cluster.py down --dir run/

``up`` starts everything in the background (each in its own process group; logs and state.json in --dir), waits
until HAProxy sees every replica UP, prints the addresses and returns. ``down`` stops the replicas with SIGTERM
(they drain: health NOT_SERVING, then live streams end), then HAProxy and Redis. CPU by default (--device cpu,
OMP_NUM_THREADS=1 per replica); --gpus starts one replica per GPU (CUDA_VISIBLE_DEVICES=i, --device cuda).
Options after ``--`` go to every `flexavatar serve` (default: --model tiny).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_MARK = "==== cluster.py: replica started"  # written to a replica's log before each start
HAPROXY_CFG = Path(__file__).resolve().parents[1] / "haproxy" / "haproxy.cfg"


def tool(name: str) -> str | None:
    """Path of an installed program (also in /usr/sbin, where Debian puts haproxy, when PATH lacks it)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def _wait(what: str, predicate, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise SystemExit(f"error: {what}: the process exited with {proc.returncode}\n{tail}")
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"error: {what}: not ready after {timeout:g} s" + (f" (log: {log})" if log else ""))


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def render_haproxy_cfg(lb_address: str, socket_path: Path, replicas: list[tuple[str, int]],
                       web_address: str | None = None, web_replicas: list[tuple[str, int]] = ()) -> str:
    """deploy/haproxy/haproxy.cfg with this cluster's bind addresses, stats socket and server lines; without
    ``web_address`` the browser part (between "# BEGIN web" and "# END web") is left out."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"stats socket \S+", f"stats socket {socket_path}", text)
    text = re.sub(r"bind \S+ proto h2", f"bind {lb_address} proto h2", text)

    def servers(block: str, rows) -> None:
        nonlocal text
        lines = "".join(f"    server {name} 127.0.0.1:{port}\n" for name, port in rows)
        text = re.sub(rf"(    # BEGIN {block}[^\n]*\n).*?(    # END {block})", lambda m: m[1] + lines + m[2], text,
                      flags=re.S)

    servers("replicas", replicas)
    if web_address is None:
        return re.sub(r"# BEGIN web .*?# END web\n", "", text, flags=re.S)
    text = re.sub(r"bind \S+(  # rewritten \(web\))", lambda m: f"bind {web_address}{m[1]}", text)
    servers("web replicas", web_replicas)
    return text


def haproxy_servers(socket_path: str | Path, backend: str = "flexavatar") -> dict[str, str]:
    """{server name: status} of a backend ("UP", "DOWN", "UP 1/2", "NOLB", "MAINT", ...): flexavatar (gRPC) or
    flexavatar_web (the page, with --web)."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(socket_path))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return {}
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == backend and r["svname"] != "BACKEND"}


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def start_replica(state: dict, index: int) -> None:
    replica = state["replicas"][index - 1]
    with open(replica["log"], "a") as log:
        log.write(f"{START_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    proc = _spawn(replica["cmd"], Path(replica["log"]), replica["env"])
    replica["pid"] = proc.pid
    _save(state)


def _save(state: dict) -> None:
    path = Path(state["dir"]) / "state.json"
    path.write_text(json.dumps(state, indent=1))


def load_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "state.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (start the cluster with `cluster.py up --dir {run_dir}`)")
    return json.loads(path.read_text())


def up(args, serve_args: list[str]) -> dict:
    for program in ("haproxy",) + (("redis-server",) if args.store is None else ()):
        if tool(program) is None:
            raise SystemExit(f"error: {program} is not installed (Debian: apt-get install {program})")
    run_dir = Path(args.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "state.json").exists():
        raise SystemExit(f"error: {run_dir} holds a running cluster (state.json); `cluster.py down --dir {run_dir}`")
    n = _gpu_count() if args.gpus else args.replicas
    if n < 1:
        raise SystemExit("error: --gpus: nvidia-smi lists no GPU" if args.gpus else "error: --replicas must be >= 1")
    pick = lambda port: port or free_port()  # noqa: E731  (0 = any free port)
    state: dict = {"dir": str(run_dir), "replicas": []}
    # 1. Redis: the avatar store every replica shares (append-only file in --dir: avatars survive a restart)
    if args.store is None:
        redis_port = pick(args.redis_port)
        log = run_dir / "redis.log"
        proc = _spawn([tool("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(run_dir),
                       "--appendonly", "yes", "--save", ""], log)
        state["redis_pid"] = proc.pid
        _wait("redis-server", lambda: redis_ping(redis_port), 20, proc, log)
        state["store"] = f"redis://127.0.0.1:{redis_port}/0"
    else:
        state["store"] = args.store
    # 2. the replicas: one `flexavatar serve` each, on its own port (and GPU)
    serve_args = serve_args or ["--model", "tiny"]
    for i in range(1, n + 1):
        port = free_port() if args.first_port == 0 else args.first_port + i - 1
        env = {"CUDA_VISIBLE_DEVICES": str(i - 1)} if args.gpus else {"OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "flexrt.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--store", state["store"], "--device", "cuda" if args.gpus else "cpu", *serve_args]
        replica = {"name": f"r{i}", "port": port, "cmd": cmd, "env": env, "log": str(run_dir / f"r{i}.log")}
        if args.web:  # the browser page of this replica, behind HAProxy's web frontend
            replica["web_port"] = free_port() if args.first_web_port == 0 else args.first_web_port + i - 1
            cmd += ["--web-port", str(replica["web_port"])]
        state["replicas"].append(replica)
        start_replica(state, i)
    # 3. HAProxy in front of them
    lb_port = pick(args.lb_port)
    state["lb"] = f"127.0.0.1:{lb_port}"
    state["haproxy_socket"] = str(run_dir / "haproxy.sock")
    cfg = run_dir / "haproxy.cfg"
    if args.web:
        state["web"] = f"127.0.0.1:{pick(args.web_lb_port)}"
    cfg.write_text(render_haproxy_cfg(state["lb"], Path(state["haproxy_socket"]),
                                      [(r["name"], r["port"]) for r in state["replicas"]], state.get("web"),
                                      [(r["name"], r["web_port"]) for r in state["replicas"] if "web_port" in r]))
    log = run_dir / "haproxy.log"
    proc = _spawn([tool("haproxy"), "-f", str(cfg)], log)
    state["haproxy_pid"] = proc.pid
    _save(state)
    _wait("haproxy and every replica UP", lambda: _all_up(state), args.timeout, proc, log)
    state.pop("serving_since")
    print(f"balancer:  {state['lb']}  (clients connect here)")
    print(f"store:     {state['store']}")
    if args.web:
        print(f"web page:  http://{state['web']}/  (each replica's page behind HAProxy)")
    for r in state["replicas"]:
        print(f"replica {r['name']}: 127.0.0.1:{r['port']}  pid {r['pid']}  log {r['log']}")
    print(f"stop with: python deploy/local/cluster.py down --dir {run_dir}")
    return state


def replica_serving(replica: dict) -> bool:
    """Has this run of the replica logged that it serves (after its warm-up)? Its log is appended to, so only the
    lines after the last start count."""
    text = Path(replica["log"]).read_text(errors="replace") if Path(replica["log"]).exists() else ""
    return "flexavatar server listening on" in text.rsplit(START_MARK, 1)[-1]


def _all_up(state: dict) -> bool:
    """Every replica serves and HAProxy has seen it pass its checks (HAProxy starts servers as UP before their
    first check, so its status alone says nothing until the replicas listen)."""
    if not all(replica_serving(r) for r in state["replicas"]):
        return False
    if "serving_since" not in state:
        state["serving_since"] = time.monotonic()
    if time.monotonic() - state["serving_since"] <= 1.5:  # > rise (2) x inter (500 ms) after the last one listens
        return False
    for backend in ("flexavatar", "flexavatar_web") if state.get("web") else ("flexavatar",):
        servers = haproxy_servers(state["haproxy_socket"], backend)
        if len(servers) != len(state["replicas"]) or any(s != "UP" for s in servers.values()):
            return False
    return True


def _stop(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    if not pid:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child (same process as `up`): reap it
                return
        except ChildProcessError:  # not our child: poll for its end
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def down(run_dir: str | Path) -> None:
    state = load_state(run_dir)
    for r in state["replicas"]:  # SIGTERM: health NOT_SERVING, drain, live streams end with UNAVAILABLE
        try:
            os.kill(r["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    for r in state["replicas"]:
        _stop(r["pid"], 0)
    _stop(state.get("haproxy_pid"), signal.SIGUSR1)  # soft stop: finishes open connections, then exits
    _stop(state.get("redis_pid"))  # SIGTERM: redis flushes its append-only file and exits
    (Path(run_dir) / "state.json").unlink()
    print(f"stopped {len(state['replicas'])} replicas, haproxy and redis of {run_dir}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    serve_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start redis, the replicas and haproxy; wait until every replica is UP")
    u.add_argument("--dir", required=True, help="run directory: logs, haproxy.cfg, redis data, state.json")
    u.add_argument("--replicas", type=int, default=3, help="replicas on the CPU (ignored with --gpus)")
    u.add_argument("--gpus", action="store_true", help="one replica per GPU that nvidia-smi lists")
    u.add_argument("--lb-port", type=int, default=50051, help="balancer port clients connect to (0 = any free)")
    u.add_argument("--first-port", type=int, default=50061, help="replica i listens on FIRST_PORT+i-1 (0 = any free)")
    u.add_argument("--redis-port", type=int, default=6379, help="port of the redis-server started here (0 = any free)")
    u.add_argument("--web", action="store_true",
                   help="also serve the browser page: each replica gets --web-port, HAProxy a web frontend")
    u.add_argument("--web-lb-port", type=int, default=8080, help="with --web: the page's port (0 = any free)")
    u.add_argument("--first-web-port", type=int, default=8081,
                   help="with --web: replica i's page on FIRST_WEB_PORT+i-1 (0 = any free)")
    u.add_argument("--store", default=None, help="use this existing store (redis://...) instead of starting redis")
    u.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every replica to be UP")
    for name, help_text in (("down", "stop the replicas (drain), haproxy and redis"),
                            ("status", "print HAProxy's status of every replica")):
        sub.add_parser(name, help=help_text).add_argument("--dir", required=True)
    r = sub.add_parser("start-replica", help="start replica rINDEX again (same port, store and options)")
    r.add_argument("--dir", required=True)
    r.add_argument("--index", type=int, required=True, help="1..N")
    args = p.parse_args(argv)
    if args.cmd == "up":
        up(args, serve_args)
    elif args.cmd == "down":
        down(args.dir)
    elif args.cmd == "status":
        state = load_state(args.dir)
        for name, status in haproxy_servers(state["haproxy_socket"]).items():
            print(f"{name}: {status}")
    else:
        state = load_state(args.dir)
        if not 1 <= args.index <= len(state["replicas"]):
            raise SystemExit(f"error: --index must be 1..{len(state['replicas'])}, got {args.index}")
        start_replica(state, args.index)
        print(f"started r{args.index} (pid {state['replicas'][args.index - 1]['pid']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
