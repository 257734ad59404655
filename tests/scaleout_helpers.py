"""Real redis-server processes for the shared-store and scale-out tests (tests/test_store_redis.py,
tests/test_scaleout.py). Tests skip with a reason when redis-server is not installed (.ci/run installs it)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool: str) -> None:
    if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
        pytest.skip(f"{tool} is not installed (Debian: apt-get install {tool}; .ci/run installs it)")


@pytest.fixture()
def redis_server(tmp_path):
    """A redis-server of this test only (no persistence) -> its URL redis://127.0.0.1:PORT/0."""
    need("redis-server")
    port = free_port()
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
