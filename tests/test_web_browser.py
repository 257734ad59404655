"""The browser client in a real headless browser: Debian's chromium driven by Playwright, the tiny preset on CPU.

Shows: the page loads; creating an avatar from a photo works; at least 30 frames arrive and are drawn (the canvas
pixels change between frames); moving the jaw slider changes the rendered frame (and frames do not change while
nothing moves); orbiting with the mouse changes it; an invalid upload shows the server's error on the page; two
tabs stream independently; the page's expression-code and camera conventions are the Python ones. Screenshots go to
a temporary folder (printed; FLEXRT_WEB_SCREENSHOTS=DIR keeps them there instead).

Needs the `chromium` binary (apt-get install chromium; .ci/run installs it) and the playwright package (dev extra);
Playwright never downloads a browser here. Skipped with the reason when either is missing.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_helpers import make_config, tiny_engine

from flexrt.model.camera import default_camera, look_at_cam2world
from flexrt.runtime import codec
from flexrt.runtime.client import FlexAvatarClient
from flexrt.runtime.sequences import neutral_expression
from flexrt.runtime.server import start_server
from flexrt.runtime.web import FRAME_HEADER, FRAME_MAGIC

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = os.environ.get("FLEXRT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium, or set "
                                                         "FLEXRT_CHROMIUM=/path/to/chrome)")
SIZE = 64  # frame side: the CPU reference rasterizer renders a few such frames a second
FRAME_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("web_store"), web_port=0, warmup_sizes=())
    with start_server(tiny_engine(), config) as handle:
        yield handle


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = Path(os.environ.get("FLEXRT_WEB_SCREENSHOTS") or tmp_path_factory.mktemp("web_screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A square synthetic 'head photo': a skin-toned disc on white (the encoder takes any square RGB image)."""
    n = 160
    yy, xx = np.mgrid[0:n, 0:n]
    rgb = np.full((n, n, 3), 255, np.uint8)
    disc = (xx - n / 2) ** 2 / 0.8 + (yy - n / 2) ** 2 < (0.38 * n) ** 2
    rgb[disc] = (224, 172, 138)
    rgb[(np.abs(yy - 0.42 * n) < 6) & (np.abs(np.abs(xx - n / 2) - 0.15 * n) < 8)] = (40, 30, 30)  # eyes
    path = tmp_path_factory.mktemp("photo") / "face.png"
    path.write_bytes(codec.encode_frame(rgb, "png"))
    return path


def open_page(browser_or_context, server):
    if isinstance(browser_or_context, playwright_api.Browser):
        page = browser_or_context.new_page(viewport={"width": 1200, "height": 860})
    else:  # a tab of a browser context
        page = browser_or_context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.problems = problems
    page.goto(f"http://127.0.0.1:{server.web_port}/")
    wait_js(page, "window.flexavatar && window.flexavatar.state.connected", timeout_ms=20_000)
    return page


def wait_js(page, expression: str, timeout_ms: float = FRAME_TIMEOUT_MS):
    """Polls a JavaScript expression until it is truthy. (Not page.wait_for_function: its predicate is evaluated
    with eval, which the page's Content-Security-Policy forbids, and the tests run the page under its real CSP.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_ms / 1000:g} s waiting for {expression}")
        page.wait_for_timeout(40)


def state(page, expr: str):
    return page.evaluate(f"window.flexavatar.state.{expr}")


def canvas_rgba(page) -> np.ndarray:
    """The canvas as drawn: uint8 [H,W,4] read back with getImageData."""
    data = page.evaluate("""() => { const c = document.getElementById('canvas');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
    size = int(round((len(data) / 4) ** 0.5))
    return np.asarray(data, np.uint8).reshape(size, size, 4)


def wait_frames(page, count: int) -> None:
    wait_js(page, f"window.flexavatar.state.framesDrawn >= {count}")


def frame_after(page, sequence: int) -> np.ndarray:
    """The canvas once a frame with a sequence number above ``sequence`` is drawn."""
    wait_js(page, f"(window.flexavatar.state.lastHeader || {{sequence: -1}}).sequence > {sequence}",
                           timeout_ms=FRAME_TIMEOUT_MS)
    return canvas_rgba(page)


def sent_so_far(page) -> int:
    return state(page, "nextSequence")


def ensure_avatar(page, photo: Path, name: str) -> str:
    page.set_input_files("#photo", str(photo))
    page.fill("#avatar-name", name)
    page.click("#create")
    wait_js(page, "document.getElementById('create-status').textContent.startsWith('created')",
                           timeout_ms=60_000)
    return page.eval_on_selector("#avatars", "s => s.value")


def start(page, mode: str) -> None:
    page.select_option("#size", str(SIZE))
    page.check(f"#mode-{mode}")
    page.click("#start")
    wait_js(page, "window.flexavatar.state.started", timeout_ms=20_000)


def test_page_creates_avatar_and_draws_30_changing_frames(browser, server, photo, screenshots):
    page = open_page(browser, server)
    try:
        assert page.title() == "FlexAvatar"
        assert page.text_content("#status") == "connected" and "flexrt" in page.text_content("#server-info")
        avatar_id = ensure_avatar(page, photo, "browser photo")
        with FlexAvatarClient(server.address) as client:  # the avatar is in the server's store, made from the photo
            avatar = client.get_avatar(avatar_id)
        assert (avatar.source, avatar.name) == ("image", "browser photo")
        assert "browser photo" in page.text_content("#avatars")

        start(page, "sequence")  # the shipped synthetic sequence
        seen: dict[str, int] = {}
        while state(page, "framesDrawn") < 30:
            wait_frames(page, state(page, "framesDrawn") + 1)
            seen.setdefault(hashlib.sha1(canvas_rgba(page).tobytes()).hexdigest(), state(page, "lastHeader.sequence"))
        assert state(page, "framesDrawn") >= 30
        assert len(seen) >= 10, f"the canvas changed only {len(seen)} times over 30 frames"
        assert canvas_rgba(page).shape == (SIZE, SIZE, 4)
        page.wait_for_timeout(300)  # one stats refresh
        assert page.text_content("#stat-fps") != "-" and page.text_content("#stat-latency").endswith(" ms")
        assert int(page.text_content("#stat-frames")) >= 30
        page.screenshot(path=str(screenshots / "stream.png"))
        page.click("#stop")
        wait_js(page, "!window.flexavatar.state.streaming", timeout_ms=30_000)
        assert page.problems == []
    finally:
        page.close()


def test_jaw_slider_and_orbit_change_the_frame(browser, server, photo, screenshots):
    page = open_page(browser, server)
    try:
        if not page.eval_on_selector("#avatars", "s => s.value"):
            ensure_avatar(page, photo, "jaw")
        start(page, "sliders")
        # nothing moves: frames are the same image (the render is deterministic)
        still = frame_after(page, sent_so_far(page))
        assert np.array_equal(frame_after(page, sent_so_far(page)), still)
        page.fill("#slider-jaw", "30")  # jaw open 30 degrees
        assert state(page, "nextSequence") > 0 and page.text_content("#sliders").count("30°") == 1
        opened = frame_after(page, sent_so_far(page))
        assert np.abs(opened.astype(int) - still.astype(int)).max() > 0, "the jaw slider did not change the frame"
        assert np.array_equal(frame_after(page, sent_so_far(page)), opened)  # and it stays there
        # orbit: drag the frame to the left by 100 px -> yaw +40 degrees
        box = page.locator("#canvas").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x - 100, y, steps=5)
        page.mouse.up()
        assert state(page, "camera.yaw") == pytest.approx(40.0)
        turned = frame_after(page, sent_so_far(page))
        assert np.abs(turned.astype(int) - opened.astype(int)).max() > 0, "orbiting did not change the frame"
        page.screenshot(path=str(screenshots / "sliders.png"))
        page.click("#stop")
        assert page.problems == []
    finally:
        page.close()


def test_invalid_upload_shows_the_server_error(browser, server):
    bad = b"GIF89a this is not a PNG or a JPEG"
    with FlexAvatarClient(server.address) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.create_avatar(image=bad)
    expected = re.sub(r" at 0x[0-9a-f]+", "", info.value.details())  # Pillow names an object address
    page = open_page(browser, server)
    try:
        page.set_input_files("#photo", files=[{"name": "broken.png", "mimeType": "image/png", "buffer": bad}])
        page.click("#create")
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert page.text_content("#error-code") == "INVALID_ARGUMENT"
        shown = page.text_content("#error-message")
        assert re.sub(r" at 0x[0-9a-f]+", "", shown) == expected and "could not be decoded" in shown
        assert page.text_content("#create-status") == "failed"
    finally:
        page.close()


def test_two_tabs_stream_independently(browser, server, photo, screenshots):
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    try:
        a, b = (open_page(context, server) for _ in range(2))
        if not a.eval_on_selector("#avatars", "s => s.value"):
            ensure_avatar(a, photo, "tabs")
            b.click("#refresh")
            wait_js(b, "document.getElementById('avatars').value !== ''")
        start(a, "sequence")
        b.fill("#slider-jaw", "20")
        start(b, "sliders")
        wait_frames(a, 4)
        wait_frames(b, 4)
        stats = server.stats()
        assert stats["active_streams"] == 2 and len({s["session_id"] for s in stats["sessions"]}) == 2
        a.click("#stop")  # one tab stops: the other goes on
        wait_js(a, "!window.flexavatar.state.streaming", timeout_ms=30_000)
        a.wait_for_timeout(500)  # frames of A still on their way
        drawn_a = state(a, "framesDrawn")
        drawn_b = state(b, "framesDrawn")
        wait_frames(b, drawn_b + 4)
        assert state(a, "framesDrawn") == drawn_a
        assert server.stats()["active_streams"] == 1
        b.screenshot(path=str(screenshots / "second_tab.png"))
        b.click("#stop")
        wait_js(b, "!window.flexavatar.state.streaming", timeout_ms=30_000)
        assert a.problems == [] and b.problems == []
    finally:
        context.close()


def test_page_conventions_match_python(browser, server):
    """The page's expression codes, cameras and frame header are the Python ones."""
    page = open_page(browser, server)
    try:
        js = "window.flexavatar"
        np.testing.assert_array_equal(np.asarray(page.evaluate(f"{js}.neutralExpression()"), np.float32),
                                      neutral_expression())
        for yaw in (0.0, 25.0, -60.0):
            for distance in (1.0, 1.7):
                cam = page.evaluate(f"{js}.orbitCamera({yaw}, 0, {distance})")
                c2w, K = default_camera(distance=distance, yaw_deg=yaw)
                np.testing.assert_allclose(np.reshape(cam["cam2world"], (4, 4)), c2w.numpy(), atol=1e-6)
                np.testing.assert_allclose(np.reshape(cam["intrinsics"], (3, 3)), K.numpy(), atol=1e-7)
        cam = page.evaluate(f"{js}.orbitCamera(30, 20, 1.2)")
        yaw, pitch = np.radians(30.0), np.radians(20.0)
        eye = (1.2 * np.sin(yaw) * np.cos(pitch), 1.2 * np.sin(pitch), 1.2 * np.cos(yaw) * np.cos(pitch))
        np.testing.assert_allclose(np.reshape(cam["cam2world"], (4, 4)), look_at_cam2world(eye).numpy(), atol=1e-6)

        def rx(a):
            c, s = np.cos(a), np.sin(a)
            return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

        def ry(a):
            c, s = np.cos(a), np.sin(a)
            return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

        controls = {"jaw": 12.0, "gazeX": 10.0, "gazeY": -5.0, "blink": 0.4, "headYaw": 20.0, "headPitch": 7.0,
                    "exp": [0.5, -1.0, 2.0]}
        got = np.asarray(page.evaluate(f"{js}.expressionFromControls({controls})".replace("'", '"')), np.float64)
        expected = neutral_expression().astype(np.float64)
        d = np.radians
        expected[0:3] = controls["exp"]
        eye = (ry(d(10.0)) @ rx(-d(-5.0)))[:2].reshape(6)  # 6D = the first two rows of the rotation matrix
        expected[100:106] = expected[106:112] = eye
        expected[112:114] = 0.4
        expected[120:126] = rx(d(12.0))[:2].reshape(6)
        expected[126:132] = (ry(d(20.0)) @ rx(-d(7.0)))[:2].reshape(6)
        np.testing.assert_allclose(got, expected, atol=1e-12)
        # the jaw slot is runtime/sequences.py's jaw opening: [1, 0, 0, 0, cos a, -sin a]
        a = d(12.0)
        np.testing.assert_allclose(got[120:126], [1, 0, 0, 0, np.cos(a), -np.sin(a)], atol=1e-12)

        # the frame header the page parses is the one runtime/web.py packs
        header = FRAME_HEADER.pack(FRAME_MAGIC, FRAME_HEADER.size, 2, 7, 2**40 + 3, -5, 320, 240, 1, 2, 3, 4, 5,
                                   2**33, 11, 12)
        parsed = page.evaluate(f"{js}.parseFrameHeader(new Uint8Array({list(header)}).buffer)")
        assert parsed == {"headerSize": 72, "encoding": 2, "batchSize": 7, "sequence": 2**40 + 3,
                          "clientTimestampUs": -5, "width": 320, "height": 240, "queueUs": 1, "decodeUs": 2,
                          "renderUs": 3, "encodeUs": 4, "serverUs": 5, "received": 2**33, "rendered": 11,
                          "dropped": 12}
    finally:
        page.close()
