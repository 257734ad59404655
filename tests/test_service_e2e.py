"""End-to-end gRPC service tests on localhost: avatars, exact frames, batching, persistence, health, reflection."""
from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_helpers import (
    camera,
    expressions,
    random_avatar_code,
    reference_render,
    make_config,
    tiny_engine,
)

from flexrt.runtime import codec
from flexrt.runtime.client import FlexAvatarClient, FrameInput
from flexrt.runtime.server import SERVICE_NAME, start_server


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def _photo_png(size: int = 96) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], axis=-1).astype(np.uint8)
    return codec.encode_frame(rgb, "png")


def test_create_stream_frames_equal_direct_render(engine, tmp_path):
    """Avatar from a photo, 32 frames (PNG and RAW, per-frame and session cameras) == direct render, exactly."""
    width, height, n = 40, 32, 32
    exprs = expressions(n, seed=1)
    session_c2w, session_K = camera(yaw_deg=10.0)
    per_frame = {i: camera(yaw_deg=-20.0 + 2 * i, distance=1.1) for i in range(0, n, 3)}
    photo = _photo_png()
    with start_server(engine, make_config(tmp_path)) as server, FlexAvatarClient(server.address) as client:
        assert client.health() == "SERVING"
        c2w_in, K_in = camera(yaw_deg=5.0)
        avatar = client.create_avatar(image=photo, cam2world=c2w_in, intrinsics=K_in, name="gradient")
        assert len(avatar.avatar_id) == 32 and avatar.source == "image" and avatar.name == "gradient"
        assert (avatar.num_head_tokens, avatar.hidden_dim) == (engine.num_head_tokens, engine.hidden_dim)
        assert client.get_avatar(avatar.avatar_id) == avatar

        # the stored code is the engine's encoding of the photo, resized to 512 like the server does it
        code = np.load(Path(tmp_path) / "avatars" / f"{avatar.avatar_id}.npy")
        rgb512 = codec.resize_square(codec.decode_image(photo), engine.image_size)
        with torch.inference_mode():
            expected = engine.encode(torch.from_numpy(np.array(rgb512)).permute(2, 0, 1)[None].float() / 255.0,
                                     torch.from_numpy(c2w_in)[None], torch.from_numpy(K_in)[None])[0].numpy()
        np.testing.assert_allclose(code, expected, rtol=1e-5, atol=1e-6)

        frames = [FrameInput(exprs[i], *per_frame[i]) if i in per_frame else FrameInput(exprs[i]) for i in range(n)]
        for encoding in ("png", "raw_rgb8"):
            results = list(client.animate(avatar.avatar_id, frames, width, height, encoding=encoding,
                                          background=(0.2, 0.4, 0.6), cam2world=session_c2w, intrinsics=session_K,
                                          max_in_flight=2, timeout=60))
            assert [r.sequence for r in results] == list(range(n))  # two in flight: nothing dropped
            assert results[-1].dropped == 0 and results[-1].rendered == n
            for i, r in enumerate(results):
                assert r.image.shape == (height, width, 3) and r.encoding == encoding
                c2w, K = per_frame.get(i, (session_c2w, session_K))
                ref = reference_render(engine, code, exprs[i], c2w, K, width, height, (0.2, 0.4, 0.6))
                np.testing.assert_array_equal(r.image, ref, err_msg=f"{encoding} frame {i}")
                assert r.latency_us > 0 and r.render_us > 0 and r.decode_us > 0 and r.batch_size == 1
        assert len({r.image.tobytes() for r in results}) > n // 2  # the expressions actually drive the head

        # JPEG: decodes to the requested size and stays close to the exact frame
        jpeg = list(client.animate(avatar.avatar_id, [exprs[0]], width, height, encoding="jpeg", quality=95))
        ref = reference_render(engine, code, exprs[0], *camera(), width, height)
        assert jpeg[0].data[:2] == b"\xff\xd8" and jpeg[0].image.shape == (height, width, 3)
        assert np.abs(jpeg[0].image.astype(int) - ref.astype(int)).mean() < 6


@pytest.mark.parametrize("sizes", [((32, 32), (32, 32)), ((32, 32), (40, 24))], ids=["same-size", "mixed-size"])
def test_two_concurrent_streams_are_batched_and_independent(engine, sizes):
    """One engine.decode for both streams' frames; one rasterize per output size (mixed-size batches)."""
    n = 12
    config = make_config(max_batch_wait_ms=100.0)  # a wide window: the two streams always meet
    codes = [random_avatar_code(engine, seed) for seed in (11, 12)]
    exprs = [expressions(n, seed=21), expressions(n, seed=22, amplitude=30.0)]
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        ids = [client.create_avatar(npy=code[:, None, :]).avatar_id for code in codes]  # official [HT,1,D]
        results: list = [None, None]
        errors: list = []
        barrier = threading.Barrier(2)

        def run(k):
            try:
                barrier.wait(timeout=10)
                results[k] = list(client.animate(ids[k], exprs[k], *sizes[k], encoding="png",
                                                 max_in_flight=2, timeout=60))
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        assert not errors, errors
        stats = server.stats()
    shared = sum(size * count for size, count in stats["batch_sizes"].items() if size >= 2)
    assert shared >= n, stats["batch_sizes"]  # at least half of the 2n frames went in batches with company
    c2w, K = camera()
    for k in (0, 1):
        assert [r.sequence for r in results[k]] == list(range(n))
        assert sum(r.batch_size >= 2 for r in results[k]) >= n // 2
        for r in results[k]:
            assert r.image.shape == (sizes[k][1], sizes[k][0], 3)
            ref = reference_render(engine, codes[k], exprs[k][r.sequence], c2w, K, *sizes[k])
            # they match exactly here; a rare last-bit flip between batched and single decodes is tolerated
            diff = np.abs(r.image.astype(int) - ref.astype(int))
            assert diff.max() <= 1 and (diff > 0).sum() <= 3, (k, r.sequence, diff.max(), (diff > 0).sum())
    # independent: the other stream's avatar, or its expression, gives a clearly different frame
    mine = results[0][-1]
    for code, expression in ((codes[1], exprs[0][mine.sequence]), (codes[0], exprs[1][mine.sequence])):
        other = reference_render(engine, code, expression, c2w, K, *sizes[0])
        assert (mine.image != other).sum() > 30  # 10x the tolerance above


def test_store_persists_across_restart_and_delete(engine, tmp_path):
    code = random_avatar_code(engine, seed=5)
    config = make_config(tmp_path)
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=code, name="kept")
        assert avatar.source == "npy" and avatar.model == "imported"
        first = list(client.animate(avatar.avatar_id, expressions(2, seed=3), 24, 24))
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        listed = client.list_avatars()
        assert [a.avatar_id for a in listed] == [avatar.avatar_id] and listed[0] == avatar
        again = list(client.animate(avatar.avatar_id, expressions(2, seed=3), 24, 24))
        assert [r.data for r in again] == [r.data for r in first]
        client.delete_avatar(avatar.avatar_id)
        with pytest.raises(grpc.RpcError) as err:
            client.get_avatar(avatar.avatar_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.list_avatars() == []
    assert not list((tmp_path / "avatars").glob("*.npy")) and not list((tmp_path / "avatars").glob("*.json"))
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        assert client.list_avatars() == []


def test_health_reflection_server_info_and_graceful_shutdown(engine):
    server = start_server(engine, make_config(shutdown_drain_s=0.3))
    try:
        channel = grpc.insecure_channel(server.address)
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        response = next(iter(reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names

        with FlexAvatarClient(server.address) as client:
            info = client.server_info()
        assert info.engine_backend == "torch" and info.engine_device == "cpu" and info.rasterizer_backend == "cpu"
        assert info.num_head_tokens == engine.num_head_tokens and info.num_gaussians == engine.num_gaussians
        assert info.limits.max_width == 1024 and not info.limits.auth_required and info.model

        # a watcher sees SERVING, then NOT_SERVING as soon as the shutdown starts (before calls are refused)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=20)
        seen = [next(watch).status]
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 0.5})
        stopper.start()
        seen.append(next(watch).status)
        stopper.join(timeout=30)
        assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
        channel.close()
    finally:
        server.stop(grace=0)
