"""The browser bridge (runtime/web.py) without a browser: a Python WebSocket client against the real server.

What it must show: the page and its assets are served; auth, limits and error messages are the gRPC ones (same
status names, same text: the bridge awaits the same servicer methods); frames arrive in order and are the exact
frames gRPC sends; a web stream takes a stream slot and gives it back.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import websockets
from service_helpers import (camera, expressions, make_config, random_avatar_code, reference_render, self_signed_cert,
                             tiny_engine)

from flexrt.runtime import codec
from flexrt.runtime.client import FlexAvatarClient, FrameInput
from flexrt.runtime.sequences import synthetic_sequence
from flexrt.runtime.server import start_server
from flexrt.runtime.web import CONTENT_SECURITY_POLICY, FRAME_HEADER
from flexrt.runtime.web_client import WebClient, WebError

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def run(coro, timeout: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_url(server) -> str:
    return f"ws://127.0.0.1:{server.web_port}/ws"


def get(server, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.web_port}{path}", timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def npy_b64(code: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, code)
    return base64.b64encode(buf.getvalue()).decode()


def no_address(text: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def grpc_error(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code().name, info.value.details()


def test_page_assets_health_and_synthetic_sequence(engine):
    with start_server(engine, make_config(web_port=0, auth_token=TOKEN, warmup_sizes=())) as server:
        status, headers, body = get(server, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/static/app.js" in body
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY  # nothing from other origins
        for path, kind in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
            status, headers, body = get(server, path)
            assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 500
        assert b"http" not in get(server, "/")[2].replace(b"https:", b"").split(b"<body>")[0]  # no CDN links
        assert get(server, "/nope")[0] == 404
        assert get(server, "/healthz")[:3:2] == (200, b"SERVING\n")  # open without the token, like grpc health
        # the shipped driving sequence is runtime/sequences.py's synthetic sequence, value for value (float32)
        seq = json.loads(get(server, "/synthetic.json")[2])
        np.testing.assert_array_equal(np.asarray(seq["expression_codes"], np.float32),
                                      synthetic_sequence(121).expressions)


def test_auth_token_paths(engine):
    with start_server(engine, make_config(web_port=0, auth_token=TOKEN, config_timeout_s=1.0,
                                          warmup_sizes=())) as server:
        url = ws_url(server)

        async def refused(client_kwargs):
            with pytest.raises(WebError) as info:
                async with WebClient(url, **client_kwargs):
                    pass
            return info.value

        async def main():
            for kwargs in ({"token": "wrong-token-123", "auth": "message"}, {"token": "wrong-token-123", "auth": "query"},
                           {"token": "wrong-token-123", "auth": "header"}):
                err = await refused(kwargs)
                assert err.code == "UNAUTHENTICATED" and err.message.startswith("invalid bearer token"), err
            err = await refused({"token": "", "auth": "message"})
            assert err.code == "UNAUTHENTICATED" and err.message.startswith("missing bearer token"), err
            # nothing at all: the server waits config_timeout_s for an auth message, then refuses
            async with websockets.connect(url) as ws:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert (msg["type"], msg["code"]) == ("error", "UNAUTHENTICATED")
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd.code == 1008
            for auth in ("message", "query", "header"):
                async with WebClient(url, token=TOKEN, auth=auth) as client:
                    assert client.hello["auth_required"] is True
                    listed = await client.call("ListAvatars")
                    assert listed.get("avatars", []) == []

        run(main())


def test_frames_in_order_and_equal_to_grpc(engine, tmp_path):
    """PNG frames over the bridge == the direct render, exactly; JPEG frames == gRPC's JPEG bytes; in order."""
    width, height, n = 40, 32, 12
    exprs = expressions(n, seed=3)
    code = random_avatar_code(engine, seed=5)
    session_c2w, session_K = camera(yaw_deg=10.0)
    per_frame = {i: camera(yaw_deg=-15.0 + 3 * i, distance=1.1) for i in range(0, n, 4)}
    with start_server(engine, make_config(tmp_path, web_port=0, warmup_sizes=())) as server:
        async def main():
            async with WebClient(ws_url(server)) as client:
                avatar = await client.call("CreateAvatar", {"avatar_code_npy": npy_b64(code), "name": "web"})
                assert avatar["source"] == "npy" and avatar["name"] == "web"
                started = await client.start({
                    "avatar_id": avatar["avatar_id"], "width": width, "height": height, "encoding": "PNG",
                    "camera": {"cam2world": session_c2w.reshape(-1).tolist(),
                               "intrinsics": session_K.reshape(-1).tolist()}})
                assert started == {"type": "started", "width": width, "height": height, "encoding": "PNG"}
                frames = []
                for i in range(n):  # one at a time: nothing can be dropped
                    c2w, K = per_frame.get(i, (None, None))
                    await client.send_frame(i, exprs[i], c2w, K, timestamp_us=1000 + i)
                    frames.append(await client.next_frame())
                await client.end()
                assert await client.next_frame() is None  # "ended" after the half-close
                # JPEG (the page's default encoding) for the gRPC comparison
                await client.start({"avatar_id": avatar["avatar_id"], "width": width, "height": height})
                jpeg = []
                for i in range(3):
                    await client.send_frame(i, exprs[i])
                    jpeg.append(await client.next_frame())
                await client.end()
                assert await client.next_frame() is None
                return avatar["avatar_id"], frames, jpeg

        avatar_id, frames, jpeg = run(main())
        assert [f["sequence"] for f in frames] == list(range(n))
        assert [f["client_timestamp_us"] for f in frames] == [1000 + i for i in range(n)]
        for i, f in enumerate(frames):
            assert (f["width"], f["height"], f["encoding"], f["batch_size"]) == (width, height, 3, 1)
            assert (f["received"], f["rendered"], f["dropped"]) == (i + 1, i + 1, 0)
            assert 0 < f["render_us"] and f["decode_us"] > 0 and f["server_us"] >= f["render_us"]
            c2w, K = per_frame.get(i, (session_c2w, session_K))
            ref = reference_render(engine, code, exprs[i], c2w, K, width, height)
            np.testing.assert_array_equal(codec.decode_frame(f["image"], "png", width, height), ref,
                                          err_msg=f"frame {i}")
        with FlexAvatarClient(server.address) as grpc_client:
            via_grpc = list(grpc_client.animate(avatar_id, [FrameInput(e) for e in exprs[:3]], width, height,
                                                encoding="jpeg", max_in_flight=1))
        assert [f["encoding"] for f in jpeg] == [2, 2, 2]
        assert [f["image"] for f in jpeg] == [r.data for r in via_grpc]


def test_latest_wins_and_header_layout(engine):
    """A burst of frames: the server keeps the newest (same session code as gRPC), counters add up."""
    n = 30
    exprs = expressions(n, seed=4)
    with start_server(engine, make_config(web_port=0, warmup_sizes=())) as server:
        async def main():
            async with WebClient(ws_url(server)) as client:
                avatar = await client.call("CreateAvatar", {"avatar_code_npy": npy_b64(random_avatar_code(engine, 1))})
                await client.start({"avatar_id": avatar["avatar_id"], "width": 48, "height": 48})
                for i in range(n):
                    await client.send_frame(i, exprs[i])
                await client.end()
                frames = []
                while (f := await client.next_frame()) is not None:
                    frames.append(f)
                return frames

        frames = run(main())
    sequences = [f["sequence"] for f in frames]
    assert sequences == sorted(set(sequences)) and sequences[-1] == n - 1  # in order; the newest is never dropped
    last = frames[-1]
    assert last["received"] == n and last["rendered"] == len(frames) and last["rendered"] + last["dropped"] == n
    assert FRAME_HEADER.size == 72 and frames[0]["image"][:2] == b"\xff\xd8"  # JPEG after the 72-byte header


def test_errors_are_the_grpc_errors(engine, tmp_path):
    """Same status name and the same message as the gRPC call, for user mistakes on calls and streams."""
    bad_photo = b"this is not an image"
    unknown = "0" * 32
    with start_server(engine, make_config(tmp_path, web_port=0, warmup_sizes=(), stream_idle_timeout_s=0.5)) as server:
        with FlexAvatarClient(server.address) as grpc_client:
            grpc_photo = grpc_error(lambda: grpc_client.create_avatar(image=bad_photo))
            grpc_unknown = grpc_error(lambda: list(grpc_client.animate(unknown, [np.zeros(135, np.float32)], 32, 32)))
            grpc_size = grpc_error(lambda: list(grpc_client.animate(unknown, [np.zeros(135, np.float32)], 4096, 32)))

        async def main():
            async with WebClient(ws_url(server)) as client:
                with pytest.raises(WebError) as info:
                    await client.call("CreateAvatar", {"image": base64.b64encode(bad_photo).decode()})
                # (Pillow's message names the BytesIO object's address, which differs between the two calls)
                assert (info.value.code, no_address(info.value.message)) == (grpc_photo[0], no_address(grpc_photo[1]))
                with pytest.raises(WebError) as info:
                    await client.start({"avatar_id": unknown, "width": 32, "height": 32})
                assert (info.value.code, info.value.message) == grpc_unknown
                with pytest.raises(WebError) as info:
                    await client.start({"avatar_id": unknown, "width": 4096, "height": 32})
                assert (info.value.code, info.value.message) == grpc_size
                with pytest.raises(WebError) as info:
                    await client.call("GetAvatar", {"avatar_id": "not-an-id"})
                assert info.value.code == "INVALID_ARGUMENT" and "32 lowercase hex" in info.value.message
                with pytest.raises(WebError) as info:
                    await client.call("FitAvatar", {})
                assert info.value.code == "UNIMPLEMENTED"
                with pytest.raises(WebError) as info:
                    await client.call("CreateAvatar", {"image": 42})
                assert info.value.code == "INVALID_ARGUMENT" and "proto3 JSON" in info.value.message

                avatar = await client.call("CreateAvatar", {"avatar_code_npy": npy_b64(random_avatar_code(engine, 2))})
                config = {"avatar_id": avatar["avatar_id"], "width": 32, "height": 32}
                # a frame with 3 floats: session.parse_frame's message, stream ended
                await client.start(config)
                await client.send(({"type": "frame", "sequence": 7, "expression": [0.0, 1.0, 2.0]}))
                with pytest.raises(WebError) as info:
                    await client.next_frame()
                assert (info.value.code, info.value.message) == (
                    "INVALID_ARGUMENT", "frame 7: expression must have 135 floats, got 3")
                # a frame that is not numbers: INVALID_ARGUMENT too, saying what was expected
                await client.start(config)
                await client.send({"type": "frame", "sequence": 1, "expression": ["a"] * 135})
                with pytest.raises(WebError) as info:
                    await client.next_frame()
                assert info.value.code == "INVALID_ARGUMENT" and "135 numbers" in info.value.message
                # a second start while one runs
                await client.start(config)
                await client.send({"type": "start", "config": config})
                notice = await asyncio.wait_for(client.notices.get(), 10)
                assert notice.code == "FAILED_PRECONDITION" and "already runs a stream" in notice.message
                # the running stream sends nothing: idle timeout, the gRPC message
                with pytest.raises(WebError) as info:
                    await client.next_frame()
                assert info.value.code == "DEADLINE_EXCEEDED" and "stream_idle_timeout_s" in info.value.message
                # more than 4 calls at once on one connection: the 5th and later are refused, none waits in memory
                results = await asyncio.gather(*(client.call("CreateAvatar", {"image": base64.b64encode(
                    codec.encode_frame(np.full((64, 64, 3), k, np.uint8), "png")).decode()}) for k in range(6)),
                    return_exceptions=True)
                refused = [r for r in results if isinstance(r, WebError)]
                assert len(refused) >= 2 and all(r.code == "RESOURCE_EXHAUSTED" and "calls running" in r.message
                                                 for r in refused), results
                # protocol mistakes: one error each, the connection stays usable
                await client.ws.send(b"\x00\x01")
                await client.ws.send("{not json")
                await client.send({"type": "dance"})
                await client.send_frame(0, np.zeros(135, np.float32))  # no stream now
                notices = [await asyncio.wait_for(client.notices.get(), 10) for _ in range(4)]
                assert [n.code for n in notices] == ["INVALID_ARGUMENT"] * 3 + ["FAILED_PRECONDITION"]
                assert "binary messages" in notices[0].message and "not JSON" in notices[1].message
                assert "unknown message type 'dance'" in notices[2].message
                assert "send 'start'" in notices[3].message
                assert (await client.call("GetAvatar", {"avatar_id": avatar["avatar_id"]}))["source"] == "npy"

        run(main())


def test_web_stream_takes_a_stream_slot(engine):
    """max_streams=1: a web stream and a gRPC stream compete for the same slot; closing the page frees it."""
    with start_server(engine, make_config(web_port=0, max_streams=1, warmup_sizes=())) as server:
        code = random_avatar_code(engine, 3)

        async def main():
            async with WebClient(ws_url(server)) as first, WebClient(ws_url(server)) as second:
                avatar = await first.call("CreateAvatar", {"avatar_code_npy": npy_b64(code)})
                config = {"avatar_id": avatar["avatar_id"], "width": 32, "height": 32}
                await first.start(config)
                await first.send_frame(0, np.zeros(135, np.float32))
                assert (await first.next_frame())["sequence"] == 0
                assert server.stats()["active_streams"] == 1
                with pytest.raises(WebError) as info:
                    await second.start(config)
                assert (info.value.code, info.value.message) == (
                    "RESOURCE_EXHAUSTED", "server is at its limit of 1 concurrent Animate streams")
                # a gRPC stream is refused the same way while the web stream holds the slot
                loop = asyncio.get_running_loop()

                def grpc_stream():
                    with FlexAvatarClient(server.address) as c:
                        return grpc_error(lambda: list(c.animate(avatar["avatar_id"], [np.zeros(135, np.float32)],
                                                                 32, 32)))

                assert await loop.run_in_executor(None, grpc_stream) == (
                    "RESOURCE_EXHAUSTED", "server is at its limit of 1 concurrent Animate streams")
                await first.ws.close()  # the page goes away mid-stream: its slot is freed
                for _ in range(200):
                    if server.stats()["active_streams"] == 0:
                        break
                    await asyncio.sleep(0.02)
                assert server.stats()["active_streams"] == 0
                await second.start(config)
                await second.send_frame(5, np.zeros(135, np.float32))
                assert (await second.next_frame())["sequence"] == 5
                assert server.stats()["streams_total"] == 2

        run(main())


def test_connection_limit_and_sequence_upload(engine, tmp_path):
    with start_server(engine, make_config(web_port=0, max_streams=1, max_pending_streams=1,
                                          max_stream_messages_per_s=20, warmup_sizes=())) as server:
        async def main():
            async with WebClient(ws_url(server)) as a, WebClient(ws_url(server)):
                with pytest.raises(websockets.InvalidStatus) as info:  # max_streams + max_pending_streams = 2
                    async with websockets.connect(ws_url(server)):
                        pass
                assert info.value.response.status_code == 503
                # a driving sequence .npz, checked by runtime/sequences.py
                codes = expressions(5, seed=9)
                buf = io.BytesIO()
                np.savez(buf, expression_codes=codes)
                seq = await a.parse_sequence(base64.b64encode(buf.getvalue()).decode(), name="mine.npz")
                assert seq["name"] == "mine"
                np.testing.assert_array_equal(np.asarray(seq["expression_codes"], np.float32), codes)
                buf = io.BytesIO()
                np.savez(buf, something_else=codes)
                with pytest.raises(WebError) as info:
                    await a.parse_sequence(base64.b64encode(buf.getvalue()).decode(), name="bad.npz")
                assert info.value.code == "INVALID_ARGUMENT" and "has no 'expression_codes' array" in info.value.message
                # the stream's message rate limit (the gRPC reader's token bucket): 60 frames at once
                avatar = await a.call("CreateAvatar", {"avatar_code_npy": npy_b64(random_avatar_code(engine, 6))})
                await a.start({"avatar_id": avatar["avatar_id"], "width": 32, "height": 32})
                for i in range(60):
                    await a.send_frame(i, codes[0])
                with pytest.raises(WebError) as info:
                    while True:
                        await a.next_frame()
                assert (info.value.code, info.value.message) == (
                    "RESOURCE_EXHAUSTED", "stream sends more than 20 messages per second")

        run(main())


def test_shutdown_ends_web_streams(engine):
    server = start_server(engine, make_config(web_port=0, warmup_sizes=()))
    try:
        async def main():
            async with WebClient(ws_url(server)) as client:
                avatar = await client.call("CreateAvatar", {"avatar_code_npy": npy_b64(random_avatar_code(engine, 4))})
                await client.start({"avatar_id": avatar["avatar_id"], "width": 32, "height": 32})
                await client.send_frame(0, np.zeros(135, np.float32))
                await client.next_frame()
                loop = asyncio.get_running_loop()
                stopping = loop.run_in_executor(None, server.stop, 2.0)
                with pytest.raises(WebError) as info:
                    while True:
                        await client.next_frame()
                assert info.value.code == "UNAVAILABLE" and "shutting down" in info.value.message
                await stopping

        run(main())
    finally:
        server.stop(0.5)


def test_bench_web_smoke(engine):
    """benchmarks/bench_web.py end to end on the tiny preset (numbers are meaningless on a CPU)."""
    from flexrt.benchmarks.bench_web import format_table, run as bench

    result = bench(engine, resolution=32, frames=3, rounds=1, warmup=1)
    for name in ("grpc", "web"):
        assert result[name]["round_trip"]["n"] == 3 and result[name]["server"]["n"] == 3
        assert result[name]["round_trip"]["p50_ms"] >= result[name]["server"]["p50_ms"] > 0
    assert len(result["bridge_p50_ms_per_round"]) == 1 and "bridge (web - gRPC)" in format_table(result)


def test_tls_serves_https_and_wss_with_the_grpc_certificate(engine, tmp_path):
    import ssl

    cert, key = self_signed_cert(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    with start_server(engine, make_config(web_port=0, tls_cert=str(cert), tls_key=str(key), warmup_sizes=())) as server:
        with urllib.request.urlopen(f"https://127.0.0.1:{server.web_port}/healthz", context=trust, timeout=10) as r:
            assert r.read() == b"SERVING\n"

        async def main():
            async with WebClient(f"wss://127.0.0.1:{server.web_port}/ws", ssl_context=trust) as client:
                assert client.hello["server"]["limits"]["tls"] is True
            with pytest.raises(Exception):  # plaintext WebSocket to the TLS port
                async with WebClient(ws_url(server), open_timeout=3):
                    pass

        run(main())


def test_serve_web_port_flag(tmp_path):
    """`flexavatar serve --web-port 0` serves the page (the log line names the port); a taken --web-port is one line."""
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "flexrt.cli", "serve", "--model", "tiny", "--device", "cpu", "--port", "0",
           "--web-port", "0", "--store", str(tmp_path / "store"), "--grace", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        port = None
        for line in proc.stderr:
            found = re.search(r"web page on http://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "serve never logged its web page"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.read() == b"SERVING\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert b"FlexAvatar" in r.read()
        again = [str(port) if i > 0 and cmd[i - 1] == "--web-port" else arg for i, arg in enumerate(cmd)]
        taken = subprocess.run(again, capture_output=True, text=True, timeout=120)
        assert taken.returncode != 0 and taken.stderr.strip().count("\n") == 0
        assert f"port {port} on 127.0.0.1 is already in use" in taken.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
