"""The command line a newcomer meets (issue 13): `flexavatar avatars`, one clear line for every mistake (checked
in real subprocesses: exit code, a single stderr line, no traceback), `--sequence synthetic`, lossless frame
writing, and .mp4 writing that does not fork while gRPC runs."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from service_helpers import make_config, random_avatar_code, tiny_engine

from flexrt.cli import main
from flexrt.runtime import codec
from flexrt.runtime.cli import synthetic_photo
from flexrt.runtime.client import FlexAvatarClient
from flexrt.runtime.cli import synthetic_sequence
from flexrt.runtime.server import start_server


@pytest.fixture(scope="module")
def server():
    engine = tiny_engine()
    with start_server(engine, make_config()) as handle:
        yield handle


def flexavatar(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """`flexavatar ARGS` in its own process (as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "flexrt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# ---- flexavatar avatars ----------------------------------------------------------------------------------
def test_avatars_create_list_get_delete(server, tmp_path):
    code = tmp_path / "code.npy"
    code.write_bytes(_npy(random_avatar_code(tiny_engine(), seed=0)[:, None, :]))  # official [HT,1,D]
    photo = tmp_path / "photo.png"
    photo.write_bytes(codec.encode_frame(synthetic_photo(128), "png"))
    camera = tmp_path / "photo_input.npz"
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, :3] = np.diag([1.0, -1.0, -1.0])  # OpenCV camera on +z looking at the head
    c2w[2, 3] = 1.0
    np.savez(camera, input_cam2world=c2w, input_intrinsics_normalized=np.array(
        [[2.93, 0, 0.5], [0, 2.93, 0.5], [0, 0, 1]], np.float32))
    s = ("--server", server.address)

    made = flexavatar("avatars", "create", "--npy", str(code), "--name", "imported one", *s)
    assert made.returncode == 0, made.stderr
    npy_id = made.stdout.strip()
    made = flexavatar("avatars", "create", "--image", str(photo), "--camera-npz", str(camera), "--json", *s)
    assert made.returncode == 0, made.stderr
    photo_avatar = json.loads(made.stdout)
    assert photo_avatar["source"] == "image" and len(photo_avatar["avatar_id"]) == 32

    listed = flexavatar("avatars", "list", *s)
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].startswith(npy_id), listed
    assert photo_avatar["avatar_id"] in listed.stdout and "imported one" in listed.stdout
    got = json.loads(flexavatar("avatars", "get", npy_id, "--json", *s).stdout)
    assert got["name"] == "imported one" and got["source"] == "npy"
    assert flexavatar("avatars", "delete", npy_id, *s).stdout.strip() == f"deleted {npy_id}"
    with FlexAvatarClient(server.address) as client:
        assert [a.avatar_id for a in client.list_avatars()] == [photo_avatar["avatar_id"]]
    assert_one_line_error(flexavatar("avatars", "get", npy_id, *s), "NOT_FOUND", "not found")


def test_every_mistake_is_one_line(server, tmp_path):
    s = ("--server", server.address)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    wide = tmp_path / "wide.png"
    wide.write_bytes(codec.encode_frame(np.zeros((40, 60, 3), np.uint8), "png"))
    random_bytes = tmp_path / "random.npy"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    single = tmp_path / "codes.npy"
    np.save(single, synthetic_sequence(4).expressions)
    nan = tmp_path / "nan.npz"
    codes = synthetic_sequence(4).expressions
    codes[2, 7] = np.nan
    np.savez(nan, expression_codes=codes)
    np.savez(tmp_path / "plain.npz", expression_codes=synthetic_sequence(4).expressions)
    unknown = "0" * 32
    closed = f"127.0.0.1:{_free_port()}"
    cases = [
        (("avatars", "create", "--image", str(tmp_path / "missing.png"), *s), ("--image", "no such file")),
        (("avatars", "create", "--image", str(not_image), *s), ("not a PNG or JPEG",)),
        (("avatars", "create", "--image", str(wide), *s), ("square head crop, got 60x40",)),
        (("avatars", "create", "--npy", str(random_bytes), *s), ("not a valid .npy array",)),
        (("avatars", "create", "--npy", str(single), "--name", "a\nb", *s), ("control characters",)),
        (("avatars", "get", "not-an-id", *s), ("is not an avatar id",)),
        (("avatars", "delete", unknown, *s), ("NOT_FOUND", unknown)),
        (("avatars", "list", "--server", closed), ("cannot reach a flexavatar server at " + closed,)),
        (("stream", "--avatar", unknown, "--sequence", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o"),
          *s), ("no such file",)),
        (("stream", "--avatar", unknown, "--sequence", str(single), "--out", str(tmp_path / "o"), *s),
         ("single .npy array",)),
        (("stream", "--avatar", unknown, "--sequence", str(nan), "--out", str(tmp_path / "o"), *s),
         ("NaN or Inf", "frame 2")),
        (("stream", "--avatar", unknown, "--sequence", "synthetic", "--frames", "2", "--out", str(tmp_path / "o"),
          *s), ("NOT_FOUND", "not found")),
        (("stream", "--avatar", unknown, "--sequence", str(nan).replace("nan", "plain"), "--camera", "sequence",
          "--out", str(tmp_path / "o"), *s), ("has no cameras",)),
        (("stream", "--avatar", unknown, "--sequence", "synthetic", "--out", str(tmp_path / "o"), "--server", closed),
         ("cannot reach",)),
        (("demo", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "demo")), ("no such file",)),
        (("demo", "--image", str(wide), "--out", str(tmp_path / "demo")), ("square head crop",)),
        (("demo", "--turntable", "-1", "--out", str(tmp_path / "demo")), ("--turntable", "got -1")),
        (("demo", "--blink", "2", "--out", str(tmp_path / "demo")), ("--blink", "at least 3", "got 2")),
        (("serve", "--model", "tiny", "--max-streams", "0"), ("max_streams must be >= 1",)),
        (("serve", "--model", "tiny", "--port", server.address.rsplit(":", 1)[1]), ("already in use",)),
        (("serve", "--engines", str(tmp_path / "no-engines")), ("--engines", "no such file")),
    ]
    for args, words in cases:
        assert_one_line_error(flexavatar(*args), *words)
    assert not (tmp_path / "demo" / "engines").exists()  # demo checked its inputs before exporting
    debug = flexavatar("avatars", "get", "not-an-id", "--debug", *s)  # SystemExit: still one line
    assert debug.returncode != 0
    traced = flexavatar("avatars", "list", "--server", closed, "--debug")
    assert traced.returncode != 0 and "Traceback" in traced.stderr  # --debug shows where it failed


def test_help_explains_every_serve_option():
    import argparse

    from flexrt.runtime.cli import add_parser

    parser = argparse.ArgumentParser(prog="flexavatar")
    add_parser(parser.add_subparsers())
    serve = parser._subparsers._group_actions[0].choices["serve"]
    undocumented = [a.option_strings for a in serve._actions if a.option_strings and not a.help]
    assert undocumented == [], undocumented
    text = serve.format_help()
    for option in ("--max-message-mib", "--max-stream-messages-per-s", "--max-avatars", "--max-photo-megapixels",
                   "--idle-timeout", "--max-pending-streams", "--drain", "--grace"):
        assert option in text


# ---- sequences and lossless writing -------------------------------------------------------------------
def test_sequence_file_format_round_trip(tmp_path):
    from flexrt.runtime.sequences import load_sequence, save_sequence

    seq = synthetic_sequence(9, cameras=True)
    assert seq.cam2world.shape == (9, 4, 4) and seq.intrinsics.shape == (9, 3, 3)
    save_sequence(seq, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert sorted(z.files) == ["cam2world_head_centric", "expression_codes", "image_size", "intrinsics"]
        np.testing.assert_allclose(z["intrinsics"][0, 0, 0], seq.intrinsics[0, 0, 0] * 512, rtol=1e-6)
    loaded = load_sequence(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.expressions, seq.expressions)
    np.testing.assert_allclose(loaded.intrinsics, seq.intrinsics, rtol=1e-6)
    np.testing.assert_array_equal(loaded.cam2world, seq.cam2world)
    assert len(load_sequence("synthetic").expressions) == 121 and len(load_sequence("synthetic", 7).expressions) == 7


def test_stream_writes_every_frame(server, tmp_path, capsys):
    with FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(tiny_engine(), seed=1)).avatar_id
    out = tmp_path / "frames"
    rc = main(["stream", "--server", server.address, "--avatar", avatar, "--sequence", "synthetic", "--out", str(out),
               "--fps", "0", "--width", "16", "--height", "16", "--no-progress",
               "--latency-json", str(tmp_path / "lat.json")])
    assert rc == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"frame_{i:05d}.png" for i in range(121)]  # 121 frames in, 121 out, numbered without gaps
    summary = json.loads((tmp_path / "lat.json").read_text())
    assert summary["frames"] == 121 and summary["dropped"] == 0 and summary["dropped_sequences"] == []
    assert "wrote 121 frames" in capsys.readouterr().out


def _mp4_frames(path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def test_mp4_writing_does_not_race_grpc(server, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="mp4 writing needs imageio-ffmpeg (the `video` or `dev` extra)")
    with FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(tiny_engine(), seed=2)).avatar_id
    for run in range(10):
        out = tmp_path / f"run{run}.mp4"
        result = flexavatar("stream", "--server", server.address, "--avatar", avatar, "--sequence", "synthetic",
                            "--frames", "6", "--out", str(out), "--fps", "0", "--width", "33", "--height", "17",
                            "--no-progress")
        assert result.returncode == 0, result.stderr
        # gRPC's fork handlers never ran: ffmpeg was not started with fork() while gRPC's threads were alive
        assert "fork" not in result.stderr, result.stderr
        assert _mp4_frames(out) == 6, run
