"""The browser page behind HAProxy reconnects when its replica dies (runtime/web_static/app.js, docs/SCALEOUT.md):
redis + HAProxy (gRPC and web frontends) + 2 `flexavatar serve --model tiny --device cpu --web-port` replicas, the
page in headless chromium (Playwright, as tests/test_web_browser.py). After SIGKILL of the replica that holds the
page's WebSocket, the page opens a new connection through HAProxy (another replica), starts the same stream again
(same avatar; its frame counters go on) and draws new frames within 3 s of the kill. Skips with the reason when
haproxy, redis-server, chromium or playwright are missing.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from scaleout_helpers import need
from test_web_browser import CHROMIUM, open_page, state, wait_js  # noqa: F401  (skips without playwright)

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "deploy" / "local" / "cluster.py"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
pytest.importorskip("redis", reason="the redis package (the `dev` / `redis` extra) is needed for the Redis store")


def _cluster(*args: str) -> None:
    result = subprocess.run([sys.executable, str(CLUSTER), *args], capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_page_reconnects_through_the_balancer(tmp_path):
    need("haproxy")
    need("redis-server")
    from playwright.sync_api import sync_playwright

    from flexrt.runtime.client import FlexAvatarClient

    run = tmp_path / "run"
    _cluster("up", "--dir", str(run), "--replicas", "2", "--web", "--lb-port", "0", "--first-port", "0",
             "--redis-port", "0", "--web-lb-port", "0", "--first-web-port", "0", "--", "--model", "tiny",
             "--grace", "1")
    cluster_state = json.loads((run / "state.json").read_text())
    try:
        with FlexAvatarClient(cluster_state["lb"]) as client:
            info = client.server_info()
            code = 0.5 * np.random.default_rng(0).standard_normal((info.num_head_tokens, info.hidden_dim))
            avatar_id = client.create_avatar(npy=code.astype(np.float32), name="web").avatar_id
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = open_page(browser, types.SimpleNamespace(web_port=int(cluster_state["web"].rsplit(":", 1)[1])))
                wait_js(page, f"[...document.getElementById('avatars').options].some(o => o.value === '{avatar_id}')",
                        timeout_ms=20_000)
                page.select_option("#avatars", avatar_id)
                page.select_option("#size", "64")
                page.select_option("#fps", "15")
                page.check("#mode-sliders")
                page.click("#start")
                wait_js(page, "window.flexavatar.state.framesDrawn >= 5", timeout_ms=60_000)
                holder = next(r for r in cluster_state["replicas"]
                              if avatar_id in re.findall(r"stream \d+: avatar ([0-9a-f]{32})", Path(r["log"]).read_text()))
                drawn = state(page, "framesDrawn")
                os.kill(holder["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
                wait_js(page, f"window.flexavatar.state.reconnects >= 1 && window.flexavatar.state.framesDrawn > {drawn}",
                        timeout_ms=20_000)
                resumed_s = time.monotonic() - killed_at
                print(f"the page drew a new frame {resumed_s:.2f} s after its replica was killed")
                assert resumed_s < 3.0
                assert state(page, "streaming") and state(page, "reconnects") == 1
                assert page.eval_on_selector("#avatars", "s => s.value") == avatar_id
                other = next(r for r in cluster_state["replicas"] if r is not holder)
                assert avatar_id in re.findall(r"stream \d+: avatar ([0-9a-f]{32})", Path(other["log"]).read_text())
                wait_js(page, f"window.flexavatar.state.framesDrawn >= {drawn + 10}", timeout_ms=30_000)
                page.click("#stop")  # a stream the user ends stays ended
                wait_js(page, "!window.flexavatar.state.streaming", timeout_ms=10_000)
            finally:
                browser.close()
    finally:
        _cluster("down", "--dir", str(run))
