"""Scale-out end to end with real processes on the CPU (docs/SCALEOUT.md): redis-server + HAProxy
(deploy/haproxy/haproxy.cfg) + 3 `flexavatar serve --model tiny --device cpu` replicas, started by
deploy/local/cluster.py (what deploy/local/up.sh runs).

Rates: 6 streams x 2 frames/s (32x32 RAW_RGB8, max_in_flight 2): 12 frames/s over 3 replicas. A tiny-preset frame
costs ~170 ms on one core (decode of 64,516 Gaussians + the CPU rasterizer), so this is what 2 shared cores sustain
(measured: every stream kept 2 frames/s, frame latency median 0.2-0.4 s; at 10 frames/s per stream the replicas
saturate, frames queue ~0.9 s, and the streams only run at the rate the in-flight bound lets through). "Lose no
frames" means: every frame a client sends gets its own rendered frame back (the received sequence
numbers are exactly 0..N-1, in order) and the server dropped none of them (latest wins drops = 0).

Asserted:
1. avatars created through the balancer are in the shared store: every replica, asked directly, has all 6;
2. after SIGKILL of the replica that serves the most streams, each of its streams gets its next frame within 2 s of
   the kill (through another replica: the stream is reopened once, resumes == 1) and still receives every frame;
3. the streams on the other replicas are not disturbed: never reopened, every frame answered, 0 drops;
4. HAProxy marks the killed replica DOWN; restarted, it is UP again and takes the new streams of its avatars
   (consistent hashing gives them back to it);
5. SIGTERM drains: its health turns NOT_SERVING and HAProxy marks it DOWN while the process still runs; a stream on
   it ends with UNAVAILABLE after the drain and resumes on another replica without losing a frame;
6. no avatar is lost, and `cluster.py down` stops every process.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scaleout_helpers import need
from service_helpers import expressions, wait_until

pytest.importorskip("redis", reason="the redis package (the `dev` / `redis` extra) is needed for the Redis store")

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "deploy" / "local" / "cluster.py"
FPS, SIZE, N_STREAMS = 2.0, 32, 6
sys.path.insert(0, str(CLUSTER.parent))
import cluster  # noqa: E402  (deploy/local/cluster.py: state, HAProxy's view of the replicas)


def _cluster(*args: str, timeout: float = 240.0) -> str:
    result = subprocess.run([sys.executable, str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _streams_on(replica: dict) -> set[str]:
    """Avatar ids of the streams this replica opened since its last start (from its log)."""
    text = Path(replica["log"]).read_text(errors="replace").rsplit(cluster.START_MARK, 1)[-1]
    return set(re.findall(r"stream \d+: avatar ([0-9a-f]{32})", text))


class Stream(threading.Thread):
    """One client stream through the balancer: (receive time, sequence, resumes, dropped) of every frame."""

    def __init__(self, client, avatar_id: str, frames: int, seed: int):
        super().__init__(daemon=True)
        self.client, self.avatar_id, self.frames, self.seed = client, avatar_id, frames, seed
        self.received: list[tuple[float, int, int, int]] = []
        self.error = None

    def run(self):
        try:
            for r in self.client.animate(self.avatar_id, expressions(self.frames, seed=self.seed), SIZE, SIZE,
                                         fps=FPS, max_in_flight=2, decode=False, resume_s=10.0):
                self.received.append((time.monotonic(), r.sequence, r.resumes, r.dropped))
        except Exception as exc:  # reported by the assertions
            self.error = exc

    @property
    def sequences(self) -> list[int]:
        return [s for _, s, _, _ in self.received]

    @property
    def resumes(self) -> int:
        return self.received[-1][2] if self.received else -1

    def first_frame_after(self, t: float) -> float:
        return min(at for at, *_ in self.received if at > t)


@pytest.mark.slow
def test_failover_behind_haproxy(tmp_path):
    need("haproxy")
    need("redis-server")
    from flexrt.runtime.client import FlexAvatarClient

    run = tmp_path / "run"
    _cluster("up", "--dir", str(run), "--replicas", "3", "--lb-port", "0", "--first-port", "0", "--redis-port", "0",
             "--", "--model", "tiny", "--grace", "1", "--drain", "3")
    state = json.loads((run / "state.json").read_text())
    replicas = state["replicas"]
    try:
        with FlexAvatarClient(state["lb"]) as client:
            # 1. avatars through the balancer -> in the shared store, visible on every replica
            info = client.server_info()
            rng = np.random.default_rng(0)
            ids = [client.create_avatar(npy=(0.5 * rng.standard_normal((info.num_head_tokens, info.hidden_dim))
                                             ).astype(np.float32), name=f"a{i}").avatar_id for i in range(N_STREAMS)]
            for r in replicas:
                with FlexAvatarClient(f"127.0.0.1:{r['port']}") as direct:
                    assert sorted(a.avatar_id for a in direct.list_avatars()) == sorted(ids), r["name"]

            # 2. six streams of 15 s; kill the replica that serves the most of them after ~3 s
            frames = int(15 * FPS)
            streams = [Stream(client, ids[i], frames, seed=i) for i in range(N_STREAMS)]
            for s in streams:
                s.start()
            wait_until(lambda: all(len(s.received) >= 3 * FPS for s in streams), timeout=60, what="6 streams running")
            placement = {r["name"]: _streams_on(r) for r in replicas}
            assert sum(len(v) for v in placement.values()) == N_STREAMS, placement
            victim = max(replicas, key=lambda r: len(placement[r["name"]]))
            moved = [s for s in streams if s.avatar_id in placement[victim["name"]]]
            stayed = [s for s in streams if s not in moved]
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: cluster.haproxy_servers(state["haproxy_socket"]).get(victim["name"]) == "DOWN",
                       timeout=5, what=f"HAProxy to mark {victim['name']} DOWN")

            # 4. restart it while the streams go on; it comes back UP
            _cluster("start-replica", "--dir", str(run), "--index", victim["name"][1:])
            victim = json.loads((run / "state.json").read_text())["replicas"][int(victim["name"][1:]) - 1]
            wait_until(lambda: cluster.replica_serving(victim), timeout=90, what="the restarted replica to serve")
            wait_until(lambda: cluster.haproxy_servers(state["haproxy_socket"]).get(victim["name"]) == "UP",
                       timeout=10, what=f"HAProxy to mark {victim['name']} UP")
            for s in streams:
                s.join(timeout=120)
            for s in streams:
                assert s.error is None, (s.avatar_id, s.error)
                assert s.sequences == list(range(frames)), (s.avatar_id, len(s.sequences))  # every frame answered
            for s in moved:  # 2. resumed through another replica within 2 s of the kill
                assert s.resumes == 1
                assert s.first_frame_after(killed_at) - killed_at < 2.0, s.first_frame_after(killed_at) - killed_at
            print(f"killed {victim['name']} with {len(moved)} of {N_STREAMS} streams; they resumed after "
                  + ", ".join(f"{s.first_frame_after(killed_at) - killed_at:.2f} s" for s in moved)
                  + f"; the {frames} frames of each stream took "
                  + ", ".join(f"{s.received[-1][0] - s.received[0][0]:.1f} s" for s in streams))
            for s in stayed:  # 3. undisturbed
                assert s.resumes == 0 and max(d for *_, d in s.received) == 0

            # 4. new streams of its avatars land on the restarted replica
            again = [Stream(client, s.avatar_id, 5, seed=9) for s in moved]
            for s in again:
                s.start()
            for s in again:
                s.join(timeout=60)
                assert s.error is None and s.sequences == list(range(5))
            assert {s.avatar_id for s in moved} <= _streams_on(victim)

            # 5. draining: SIGTERM -> NOT_SERVING -> DOWN in HAProxy while the process lives; its stream moves
            draining = Stream(client, moved[0].avatar_id, int(8 * FPS), seed=7)
            draining.start()
            wait_until(lambda: len(draining.received) >= 5, timeout=30, what="a stream on the restarted replica")
            os.kill(victim["pid"], signal.SIGTERM)
            wait_until(lambda: cluster.haproxy_servers(state["haproxy_socket"]).get(victim["name"]) == "DOWN",
                       timeout=2.5, what="HAProxy to see the draining replica's NOT_SERVING")
            assert _alive(victim["pid"]), "the replica should still be draining (--drain 3)"
            draining.join(timeout=60)
            assert draining.error is None and draining.sequences == list(range(int(8 * FPS)))
            assert draining.resumes == 1

            # 6. no avatar lost
            assert sorted(a.avatar_id for a in client.list_avatars()) == sorted(ids)
    finally:
        state = json.loads((run / "state.json").read_text())
        _cluster("down", "--dir", str(run), timeout=120)
    for pid in [r["pid"] for r in state["replicas"]] + [state["haproxy_pid"], state["redis_pid"]]:
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


# ---- the configuration files (no processes) ----

HPACK_STATIC = {1: ":authority", 3: (":method", "POST"), 4: ":path", 6: (":scheme", "http"), 31: "content-type"}


def _h2_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """HTTP/2 frames -> [(type, flags, stream id, payload)] (RFC 9113 §4.1)."""
    frames = []
    while data:
        length, kind, flags, stream = int.from_bytes(data[:3], "big"), data[3], data[4], int.from_bytes(data[5:9], "big")
        frames.append((kind, flags, stream, data[9:9 + length]))
        data = data[9 + length:]
    return frames


def _hpack_literals(block: bytes) -> dict:
    """The header block of the health check: indexed fields and literals without indexing, no Huffman (RFC 7541)."""
    headers, i = {}, 0
    while i < len(block):
        b = block[i]
        if b & 0x80:  # indexed field
            headers.update([HPACK_STATIC[b & 0x7F]])
            i += 1
            continue
        assert b & 0xF0 == 0, "only literals without indexing"
        index, i = b & 0x0F, i + 1
        if index == 15:
            index, i = 15 + block[i], i + 1
        if index == 0:
            name, i = block[i + 1:i + 1 + block[i]].decode(), i + 1 + block[i]
        else:
            name = HPACK_STATIC[index]
        assert block[i] & 0x80 == 0, "no Huffman coding"
        headers[name], i = block[i + 1:i + 1 + block[i]].decode(), i + 1 + block[i]
    return headers


def _check_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("tcp-check")]


def test_health_check_bytes_are_a_grpc_health_request():
    """The bytes HAProxy sends are the HTTP/2 preface, SETTINGS, and one POST /grpc.health.v1.Health/Check with an
    empty HealthCheckRequest; the expected answer is HealthCheckResponse{status: SERVING}."""
    from grpc_health.v1 import health_pb2

    lines = _check_lines((REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text())
    sent = b"".join(bytes.fromhex(line.split()[-1]) for line in lines if line.startswith("tcp-check send-binary"))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert sent.startswith(preface)
    frames = _h2_frames(sent[len(preface):])
    assert [(k, f, s) for k, f, s, _ in frames] == [(4, 0, 0), (1, 0x4, 1), (0, 0x1, 1)]  # SETTINGS, HEADERS, DATA
    assert _hpack_literals(frames[1][3]) == {":method": "POST", ":scheme": "http", ":path": "/grpc.health.v1.Health/Check",
                                             ":authority": "localhost", "content-type": "application/grpc",
                                             "te": "trailers"}
    request = frames[2][3]
    assert request[0] == 0 and int.from_bytes(request[1:5], "big") == len(request) - 5
    assert health_pb2.HealthCheckRequest.FromString(request[5:]) == health_pb2.HealthCheckRequest(service="")
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
    answer = bytes([0]) + len(serving).to_bytes(4, "big") + serving  # the gRPC message prefix, then the message
    assert lines[-1] == f"tcp-check expect min-recv 0 binary {answer.hex()}"


def test_deploy_configs_parse_and_agree(tmp_path):
    """haproxy -c on the local and the Kubernetes HAProxy configuration (same health check), nginx -t, and the
    Envoy / Kubernetes YAML parses (Envoy and Kubernetes themselves are not exercised here)."""
    yaml = pytest.importorskip("yaml")
    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in (REPO / "deploy" / "k8s").glob("*.yaml")}
    assert {d["kind"] for ds in docs.values() for d in ds} >= {"Deployment", "Service", "StatefulSet", "ConfigMap"}
    headless = next(d for d in docs["flexavatar.yaml"] if d["kind"] == "Service")
    assert headless["spec"]["clusterIP"] == "None"
    k8s_cfg = next(d for d in docs["haproxy.yaml"] if d["kind"] == "ConfigMap")["data"]["haproxy.cfg"]
    local_cfg = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert _check_lines(k8s_cfg) == _check_lines(local_cfg) and "balance hdr(x-avatar-id)" in k8s_cfg
    envoy = yaml.safe_load((REPO / "deploy" / "envoy" / "envoy.yaml").read_text())
    assert envoy["static_resources"]["clusters"][0]["lb_policy"] == "RING_HASH"
    haproxy = cluster.tool("haproxy")
    if haproxy:
        (tmp_path / "k8s.cfg").write_text(k8s_cfg)
        for cfg in (REPO / "deploy" / "haproxy" / "haproxy.cfg", tmp_path / "k8s.cfg"):
            result = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stdout + result.stderr
    nginx = cluster.tool("nginx")
    if nginx:
        (tmp_path / "logs").mkdir()
        result = subprocess.run([nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c",
                                 str(REPO / "deploy" / "nginx" / "nginx.conf")], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
