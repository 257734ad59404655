"""Unit tests of the service's building blocks (no server): codec, store, session slot, limits, CLI helpers."""
from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
import torch

from flexrt.model.camera import default_camera, pixel_intrinsics, viewmat_from_cam2world
from flexrt.proto import flexavatar_pb2 as pb
from flexrt.runtime import codec
from flexrt.runtime.frames import rgb_to_uint8
from flexrt.runtime.cli import load_sequence, neutral_expression, synthetic_photo, synthetic_sequence
from flexrt.runtime.limits import ServerConfig, TokenBucket
from flexrt.runtime.session import FrameRequest, Session, StreamError, parse_frame, parse_session_config
from flexrt.runtime.store import AvatarNotFound, AvatarStore, parse_avatar_code_npy


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# ---- codec ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["raw_rgb8", "png", pb.RAW_RGB8, pb.PNG, pb.ENCODING_UNSPECIFIED])
def test_lossless_encodings_round_trip(encoding):
    rgb = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    data = codec.encode_frame(rgb, encoding)
    np.testing.assert_array_equal(codec.decode_frame(data, encoding, 23, 17), rgb)


def test_jpeg_and_codec_errors():
    rgb = np.full((16, 16, 3), 128, np.uint8)
    out = codec.decode_frame(codec.encode_frame(rgb, "jpeg", quality=90), "jpeg", 16, 16)
    assert np.abs(out.astype(int) - 128).max() <= 2
    with pytest.raises(ValueError, match="unknown encoding 'webp'"):
        codec.encoding_value("webp")
    with pytest.raises(ValueError, match="expected 4x4x3"):
        codec.decode_frame(b"\0" * 10, "raw_rgb8", 4, 4)
    with pytest.raises(ValueError, match="could not be decoded as PNG/JPEG"):
        codec.decode_image(b"not an image")
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="GIF is not supported"):
        codec.decode_image(gif.getvalue())


def test_decode_image_composites_alpha_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    rgb = codec.decode_image(buf.getvalue())
    assert rgb.shape == (8, 8, 3) and tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[7, 7]) == (255, 255, 255)
    assert codec.resize_square(rgb, 16).shape == (16, 16, 3)


def test_rgb_to_uint8_rounds_half_up_and_clamps():
    rgb = torch.tensor([-0.5, 0.0, 0.5 / 255, 0.49 / 255, 1.0, 2.0])
    assert rgb_to_uint8(rgb).tolist() == [0, 0, 1, 0, 255, 255]


# ---- store ---------------------------------------------------------------------------------------------
def test_avatar_code_npy_layouts_and_errors():
    code = np.arange(12, dtype=np.float64).reshape(4, 1, 3)
    np.testing.assert_array_equal(parse_avatar_code_npy(_npy(code)), code[:, 0].astype(np.float32))
    assert parse_avatar_code_npy(_npy(code[:, 0])).dtype == np.float32
    with pytest.raises(ValueError, match=r"\[HT,1,D\] or \[HT,D\]"):
        parse_avatar_code_npy(_npy(np.zeros((2, 2, 2), np.float32)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        parse_avatar_code_npy(_npy(np.full((2, 3), np.nan, np.float32)))
    with pytest.raises(ValueError, match="float array"):
        parse_avatar_code_npy(_npy(np.zeros((2, 3), np.int32)))
    with pytest.raises(ValueError, match="not a valid .npy array"):
        parse_avatar_code_npy(b"garbage")
    with pytest.raises(ValueError, match="float array, got dtype object"):  # no pickles
        parse_avatar_code_npy(_npy(np.array([{"a": 1}], dtype=object)))


def test_store_persists_and_rejects_bad_ids(tmp_path):
    store = AvatarStore(tmp_path)
    code = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    record = store.add(code, source="npy", model="imported", name="a")
    assert len(record.avatar_id) == 32 and int(record.avatar_id, 16) >= 0
    assert json.loads((tmp_path / f"{record.avatar_id}.json").read_text())["num_head_tokens"] == 4
    reopened = AvatarStore(tmp_path)
    assert reopened.list() == [record]
    np.testing.assert_array_equal(reopened.load_code(record.avatar_id), code)
    (tmp_path / f"{'f' * 32}.json").write_text("{broken")  # unreadable metadata is skipped, not fatal
    assert len(AvatarStore(tmp_path)) == 1
    for bad in ("../../etc/passwd", "F" * 32, "", "0" * 31):
        with pytest.raises(AvatarNotFound):
            reopened.get(bad)
    reopened.delete(record.avatar_id)
    assert not list(tmp_path.glob(f"{record.avatar_id}.*")) and len(AvatarStore(tmp_path)) == 0
    memory = AvatarStore(None)
    r2 = memory.add(code, source="npy", model="m")
    np.testing.assert_array_equal(memory.load_code(r2.avatar_id), code)


# ---- session -------------------------------------------------------------------------------------------
def _session(width=32, height=24) -> Session:
    _, settings = parse_session_config(
        pb.AnimateRequest(config=pb.SessionConfig(avatar_id="a" * 32, width=width, height=height)), ServerConfig())
    return Session(avatar_id="a" * 32, avatar_code=torch.zeros(2, 2), **settings)


def test_session_config_defaults_match_model_camera():
    session = _session(32, 24)
    c2w, K = default_camera()
    np.testing.assert_array_equal(session.default_viewmat, viewmat_from_cam2world(c2w).numpy())
    np.testing.assert_array_equal(session.default_K, pixel_intrinsics(K, 32, 24).numpy())
    assert session.encoding == pb.RAW_RGB8 and session.quality == 90
    np.testing.assert_array_equal(session.background, np.ones(3, np.float32))
    with pytest.raises(StreamError, match="background must be 3 floats"):
        parse_session_config(pb.AnimateRequest(config=pb.SessionConfig(
            avatar_id="a" * 32, width=32, height=32, background=[0.5, 2.0, 0.0])), ServerConfig())


def test_parse_frame_validates_on_the_host():
    session = _session()
    ok = parse_frame(pb.AnimateRequest(frame=pb.Frame(sequence=3, expression=neutral_expression().tolist())),
                     session)
    assert ok.sequence == 3 and ok.expression.dtype == np.float32 and ok.viewmat is session.default_viewmat
    bad = neutral_expression()
    bad[5] = np.inf
    with pytest.raises(StreamError, match="NaN or Inf"):
        parse_frame(pb.AnimateRequest(frame=pb.Frame(expression=bad.tolist())), session)
    c2w = np.zeros((4, 4), np.float32)
    with pytest.raises(StreamError, match="singular"):
        parse_frame(pb.AnimateRequest(frame=pb.Frame(
            expression=neutral_expression().tolist(),
            camera=pb.Camera(cam2world=c2w.ravel().tolist(), intrinsics=np.eye(3).ravel().tolist()))), session)


def test_latest_wins_slot():
    async def run():
        session = _session()

        def frame(i):
            return FrameRequest(i, i, np.zeros(135, np.float32), session.default_viewmat, session.default_K, 0)

        for i in range(5):
            session.offer(frame(i))
        assert session.pending_count == 1 and session.counters.dropped == 4
        assert (await session.next_frame()).sequence == 4
        session.offer(frame(5))
        session.close_input()
        assert (await session.next_frame()).sequence == 5  # a half-closed stream still gets its last frame
        assert await session.next_frame() is None
        session.fail(StreamError(None, "boom"))
        with pytest.raises(StreamError, match="boom"):
            await session.next_frame()

    asyncio.run(run())


# ---- limits --------------------------------------------------------------------------------------------
def test_server_config_validation_and_token_bucket():
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        ServerConfig(tls_cert="c.pem").validate()
    with pytest.raises(ValueError, match="rasterizer"):
        ServerConfig(rasterizer="gpu").validate()
    assert ServerConfig(auth_token="long-enough").public_dict()["auth_token"] == "***"
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1  # one token back
    assert bucket.take() and not bucket.take()


# ---- CLI helpers ---------------------------------------------------------------------------------------
def test_synthetic_inputs_and_sequence_loading(tmp_path):
    seq = synthetic_sequence(20)
    assert seq.expressions.shape == (20, 135) and np.isfinite(seq.expressions).all()
    for start in (100, 106, 114, 126):
        np.testing.assert_array_equal(seq.expressions[:, start:start + 6], np.tile([1, 0, 0, 0, 1, 0], (20, 1)))
    assert np.ptp(seq.expressions[:, 0]) > 0.5 and np.ptp(seq.expressions[:, 125]) > 0.1  # exp and jaw move
    photo = synthetic_photo()
    assert photo.shape == (512, 512, 3) and photo.dtype == np.uint8
    K_pix = np.tile(np.array([[1500.0, 0, 256.5], [0, 1500.0, 256.5], [0, 0, 1]], np.float32), (3, 1, 1))
    np.savez(tmp_path / "seq.npz", expression_codes=seq.expressions[:3], cam2world_head_centric=np.tile(np.eye(4), (3, 1, 1)),
             intrinsics=K_pix, image_size=np.array([512, 512]))
    loaded = load_sequence(tmp_path / "seq.npz")
    np.testing.assert_allclose(loaded.intrinsics[0], [[1500 / 512, 0, 256.5 / 512], [0, 1500 / 512, 256.5 / 512],
                                                      [0, 0, 1]], rtol=1e-6)


def test_jaw_angle_and_turntable():
    from flexrt.runtime.sequences import Sequence, rotation_6d_angle, turntable_sequence, widest_jaw_frame

    # closed form: the 6D code of a rotation by a about x is rows (1,0,0), (0,cos a,-sin a); row lengths and a
    # component of row 2 along row 1 (as a tracker writes them) do not change the rotation
    a = np.array([0.0, 0.1, 0.45, 1.2])
    rows = np.stack([np.ones_like(a), 0 * a, 0 * a, 0 * a, np.cos(a), -np.sin(a)], axis=1)
    np.testing.assert_allclose(rotation_6d_angle(rows), a, atol=1e-7)
    skewed = rows * np.array([2.0, 2.0, 2.0, 0.5, 0.5, 0.5]) + np.array([0, 0, 0, 0.3, 0, 0])
    np.testing.assert_allclose(rotation_6d_angle(skewed), a, atol=1e-7)
    seq = synthetic_sequence(60)  # its jaw opens to 0.3 rad at t = 1 s (frame 30)
    assert widest_jaw_frame(seq) == 30
    assert widest_jaw_frame(Sequence(seq.expressions[:10], None, None, "first ten")) == 9

    spin = turntable_sequence(seq.expressions[30], frames=8)
    assert spin.expressions.shape == (8, 135) and (spin.expressions == seq.expressions[30]).all()
    centres = spin.cam2world[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-6)  # default_camera's distance
    np.testing.assert_allclose(centres[0], [0, 0, 1], atol=1e-6)  # frame 0: the front view
    np.testing.assert_allclose(centres[4], [0, 0, -1], atol=1e-6)  # half way: behind the head
    np.testing.assert_allclose(centres[2], [1, 0, 0], atol=1e-6)  # a quarter: yaw 90 degrees to +x
    forward = spin.cam2world[:, :3, 2]  # OpenCV: the camera looks along its +z, at the head's origin
    np.testing.assert_allclose(forward, -centres, atol=1e-6)
    np.testing.assert_allclose(spin.intrinsics, np.tile(default_camera()[1].numpy(), (8, 1, 1)))
    with pytest.raises(ValueError, match="at least 1 frame"):
        turntable_sequence(seq.expressions[0], frames=0)


def test_blink_sequence_closes_and_opens_the_eyelids_only():
    from flexrt.corpus.codes import BLINK_CLOSED
    from flexrt.runtime.sequences import blink_sequence

    base = synthetic_sequence(5).expressions[2]
    blink = blink_sequence(base, frames=7)
    lids = blink.expressions[:, 112:114]
    assert blink.expressions.shape == (7, 135) and blink.cam2world is None  # the default camera
    np.testing.assert_allclose(lids[3], BLINK_CLOSED, rtol=1e-6)  # shut in the middle frame
    np.testing.assert_allclose(lids[[0, 6]], 0.0, atol=1e-6)  # open at both ends, whatever the code had
    assert (np.diff(lids[:4, 0]) >= 0).all() and (np.diff(lids[3:, 0]) <= 0).all()  # closes, then opens
    others = np.ones(135, bool)
    others[112:114] = False
    assert (blink.expressions[:, others] == base[others]).all()  # nothing else moves
    with pytest.raises(ValueError, match="at least 3 frames"):
        blink_sequence(base, frames=2)
