"""`flexavatar demo` and `flexavatar stream`, run in-process on small inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from service_helpers import expressions, make_config, random_avatar_code, tiny_engine

from flexrt.cli import main
from flexrt.runtime import cli as runtime_cli
from flexrt.runtime.client import FlexAvatarClient
from flexrt.runtime.server import start_server


def test_demo_with_synthetic_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runtime_cli, "find_shared_dir", lambda: None)  # no reference data: drawn photo, sinusoids
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--frames", "6", "--width", "32", "--height", "24", "--fps", "0",
               "--random-weights", "--turntable", "4", "--blink", "3", "--no-progress"])
    assert rc == 0
    frames = sorted((out / "frames").glob("*.png"))
    assert len(frames) == 6 and Image.open(frames[0]).size == (32, 24)
    spin = sorted((out / "turntable").glob("*.png"))
    assert len(spin) == 4 and Image.open(spin[0]).size == (32, 24)
    # the turntable's frame 2 looks at the back of the head: not the front view of frame 0
    assert np.abs(np.asarray(Image.open(spin[2]), np.int16) - np.asarray(Image.open(spin[0]), np.int16)).max() > 0
    assert len(sorted((out / "blink").glob("*.png"))) == 3
    # 6 tiles a row: 6 of the frames, all 4 of the turntable, all 3 of the blink
    assert Image.open(out / "contact_sheet.png").size == (6 * 32, 3 * 24)
    gif = Image.open(out / "demo.gif")
    durations = []
    for i in range(gif.n_frames):  # Pillow merges identical consecutive frames and adds up their durations
        gif.seek(i)
        durations.append(gif.info["duration"])
    # 6 + 4 + 3 frames at 30 fps (--fps 0: 30), 33 ms each, which a GIF stores in whole centiseconds: 30 ms
    assert gif.size == (32, 24) and sum(durations) == (6 + 4 + 3) * 30
    report = json.loads((out / "latency.json").read_text())
    assert report["summary"]["frames"] == 6 and report["sequence"]["name"] == "synthetic"
    assert report["avatar"]["source"] == "synthetic head drawing"
    assert report["summary"]["end_to_end"]["p50_ms"] > 0 and report["server"]["engine"]  # backend: auto
    assert (out / "engines" / "manifest.json").is_file() and len(list((out / "avatars").glob("*.npy"))) == 1
    assert "end_to_end" in capsys.readouterr().out


def test_stream_command_writes_frames_and_latency(tmp_path, capsys):
    engine = tiny_engine()
    seq = tmp_path / "seq.npz"
    n = 5
    K = np.tile(np.array([[1500.0, 0, 256], [0, 1500.0, 256], [0, 0, 1]], np.float32), (n, 1, 1))
    c2w = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    c2w[:, :3, :3] = np.diag([1.0, -1.0, -1.0])  # OpenCV camera at +z looking toward the head at the origin
    c2w[:, 2, 3] = 1.0
    np.savez(seq, expression_codes=expressions(n, seed=0), cam2world_head_centric=c2w, intrinsics=K)
    with start_server(engine, make_config()) as server:
        with FlexAvatarClient(server.address) as client:
            avatar = client.create_avatar(npy=random_avatar_code(engine, seed=0)).avatar_id
        out = tmp_path / "frames"
        rc = main(["stream", "--server", server.address, "--avatar", avatar, "--sequence", str(seq), "--out", str(out),
                   "--fps", "0", "--width", "24", "--height", "24", "--camera", "sequence", "--no-progress",
                   "--latency-json", str(tmp_path / "lat.json")])
    assert rc == 0
    assert len(list(out.glob("frame_*.png"))) == n
    assert json.loads((tmp_path / "lat.json").read_text())["frames"] == n
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and f"wrote {n} frames" in printed
    if runtime_cli._ffmpeg_exe() is None:  # .mp4 without an encoder: a clear error before streaming, no PNG fallback
        with pytest.raises(SystemExit, match="needs ffmpeg"):
            runtime_cli.FrameWriter(tmp_path / "x.mp4", 30, 24, 24)
