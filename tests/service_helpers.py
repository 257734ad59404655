"""Shared pieces of the gRPC service tests (tests/test_service_*.py).

The tiny-preset engine is built once per test process (``tiny_engine``); every test starts its own server on
127.0.0.1 with an ephemeral port and stops it. ``reference_render`` is the direct in-process render the streamed
frames are compared with: engine.decode + flexrt.kernels.rasterize, written out here independently of the server.
"""
from __future__ import annotations

import functools
import time

import numpy as np
import torch

from flexrt.model.camera import default_camera, pixel_intrinsics, viewmat_from_cam2world

EXPRESSION_DIM = 135


@functools.lru_cache(maxsize=1)
def tiny_engine():
    """TorchEngine of the tiny preset (seeded random weights, the project's default template), on the CPU."""
    from flexrt.model.pipeline import build_pipeline
    from flexrt.runtime.engines import TorchEngine

    return TorchEngine(build_pipeline("tiny"), device="cpu", precision="fp32")


def make_config(tmp_path=None, **overrides):
    from flexrt.runtime.limits import ServerConfig

    fields = dict(host="127.0.0.1", port=0, store_dir=str(tmp_path / "avatars") if tmp_path else None,
                  shutdown_grace_s=1.0)
    fields.update(overrides)
    return ServerConfig(**fields)


def neutral_expression() -> np.ndarray:
    code = np.zeros(EXPRESSION_DIM, dtype=np.float32)
    for start in (100, 106, 114, 120, 126):
        code[start:start + 6] = (1, 0, 0, 0, 1, 0)
    return code


def expressions(n: int, seed: int, amplitude: float = 2.0) -> np.ndarray:
    """[n,135] smooth, distinct expression codes."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=EXPRESSION_DIM).astype(np.float32)
    t = np.arange(n, dtype=np.float32)[:, None]
    codes = neutral_expression()[None] + np.zeros((n, 1), np.float32)
    codes[:, :10] += amplitude * np.sin(0.4 * t + phase[None, :10])
    codes[:, 120:126] += 0.2 * np.sin(0.3 * t + phase[None, 120:126])
    return codes.astype(np.float32)


def camera(yaw_deg: float = 0.0, distance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    c2w, K = default_camera(distance=distance, yaw_deg=yaw_deg)
    return c2w.numpy(), K.numpy()


def random_avatar_code(engine, seed: int) -> np.ndarray:
    """[HT,D] float32 with the statistics of an encoded code (small values)."""
    rng = np.random.default_rng(seed)
    return (0.5 * rng.standard_normal((engine.num_head_tokens, engine.hidden_dim))).astype(np.float32)


@torch.inference_mode()
def reference_render(engine, code: np.ndarray, expression: np.ndarray, cam2world: np.ndarray,
                     intrinsics: np.ndarray, width: int, height: int, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Direct in-process render of one frame -> uint8 [H,W,3] (round half up of clamp(rgb, 0, 1) * 255)."""
    from flexrt.kernels import rasterize, sh_dc_to_rgb

    g = engine.decode(torch.from_numpy(np.array(code))[None], torch.from_numpy(np.array(expression))[None])
    viewmat = viewmat_from_cam2world(torch.from_numpy(np.array(cam2world, dtype=np.float32)))  # [4,4]
    K = pixel_intrinsics(torch.from_numpy(np.array(intrinsics, dtype=np.float32)), width, height)  # [3,3]
    bg = torch.tensor(background, dtype=torch.float32)[None, None]  # [1,1,3]
    rgb, _ = rasterize(g.positions, g.rotations, g.scales, g.opacities[..., 0], sh_dc_to_rgb(g.colors),
                       viewmat[None, None], K[None, None], width, height, background=bg, backend="cpu")
    return (rgb[0, 0].clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8).numpy()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def self_signed_cert(folder) -> tuple[str, str]:
    """(cert.pem, key.pem) of a one-day self-signed certificate for localhost / 127.0.0.1, made by openssl in
    ``folder``; skips the calling test (saying why) when openssl is not installed."""
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)
