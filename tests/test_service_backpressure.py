"""Latest-wins backpressure: a client that floods or stops reading never makes the server queue without bound;
a client that disconnects frees its session; the stream limit is enforced."""
from __future__ import annotations

import time

import grpc
import pytest
from service_helpers import expressions, make_config, random_avatar_code, tiny_engine, wait_until

from flexrt.proto import flexavatar_pb2 as pb
from flexrt.proto import flexavatar_pb2_grpc as pb_grpc
from flexrt.runtime.client import FlexAvatarClient
from flexrt.runtime.server import start_server


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def _requests(avatar_id, n, width, height, interval_s=0.0):
    yield pb.AnimateRequest(config=pb.SessionConfig(avatar_id=avatar_id, width=width, height=height,
                                                    encoding=pb.RAW_RGB8))
    for i, code in enumerate(expressions(n, seed=9)):
        if interval_s:
            time.sleep(interval_s)
        yield pb.AnimateRequest(frame=pb.Frame(sequence=i, client_timestamp_us=i, expression=code.tolist()))


def test_client_that_stops_reading_keeps_server_queues_bounded(engine):
    n = 300
    config = make_config()
    limit = config.max_in_flight_per_stream  # frames of one stream being rendered at once
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=1)).avatar_id
        # The client sends 300 frames and reads none. BDP probing off keeps its HTTP/2 receive window at the
        # initial 64 KiB (with probing, gRPC buffers megabytes first), so 64x64 RAW frames (12 KiB) fill it fast.
        channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
        call = pb_grpc.FlexAvatarStub(channel).Animate(_requests(avatar, n, 64, 64, interval_s=0.005), timeout=60)
        try:
            samples = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                stats = server.stats()
                assert stats["batcher_waiting"] <= limit
                for s in stats["sessions"]:
                    assert s["pending"] <= 1 and s["in_flight"] <= limit  # one waiting + `limit` rendering, at most
                    samples.append(s)
                if samples and samples[-1]["received"] == n:
                    break
                time.sleep(0.05)
            last = samples[-1]
            assert last["received"] == n, last
            time.sleep(1.0)  # the writer stays blocked: nothing more is rendered while nobody reads
            still = server.stats()["sessions"][0]
            assert still["rendered"] == last["rendered"] and still["rendered"] < n // 2, (last, still)
            assert still["dropped"] >= n - still["rendered"] - 1 - limit  # everything else was dropped, not queued
        finally:
            call.cancel()
            channel.close()
        wait_until(lambda: server.stats()["active_streams"] == 0, what="the cancelled session to close")
        stats = server.stats()
        assert stats["frames_received"] >= n and stats["frames_dropped"] >= n // 2


def test_flooding_client_gets_latest_frames(engine):
    n = 120
    with start_server(engine, make_config()) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=2)).avatar_id
        results = list(client.animate(avatar, expressions(n, seed=3), 32, 32, max_in_flight=None, timeout=60))
        assert results[-1].sequence == n - 1  # the newest frame is always rendered
        sequences = [r.sequence for r in results]
        assert sequences == sorted(set(sequences))
        assert len(results) < n and results[-1].dropped == n - len(results)  # stale frames dropped, counted
        assert results[-1].dropped == server.stats()["frames_dropped"]


def test_disconnect_mid_stream_frees_the_session(engine):
    with start_server(engine, make_config()) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=3)).avatar_id
        stream = client.animate(avatar, expressions(1000, seed=4), 32, 32, fps=60, timeout=60)
        for i, _ in enumerate(stream):
            if i == 2:
                break
        assert server.stats()["active_streams"] == 1
        stream.close()  # the generator's cleanup cancels the call, as when a client process goes away
        wait_until(lambda: server.stats()["active_streams"] == 0, what="session count back to 0")
        # and the server serves the next stream normally
        assert len(list(client.animate(avatar, expressions(2, seed=5), 32, 32, timeout=30))) == 2


def test_stream_limit(engine):
    with start_server(engine, make_config(max_streams=1)) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=4)).avatar_id
        first = client.animate(avatar, expressions(1000, seed=4), 16, 16, fps=30, timeout=60)
        next(first)
        with pytest.raises(grpc.RpcError) as err:
            list(client.animate(avatar, expressions(1, seed=5), 16, 16, timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 1 concurrent Animate streams" in err.value.details()
        first.close()
        wait_until(lambda: server.stats()["active_streams"] == 0, what="the first stream to close")
        assert len(list(client.animate(avatar, expressions(1, seed=5), 16, 16, timeout=30))) == 1


def test_per_stream_rate_limits(engine):
    config = make_config(max_stream_fps=10.0, max_stream_messages_per_s=1000.0)
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=6)).avatar_id
        # 30 frames sent at once: the render pacing (10 fps) keeps only the newest frames
        t0 = time.monotonic()
        results = list(client.animate(avatar, expressions(30, seed=6), 16, 16, max_in_flight=None, timeout=30))
        assert results[-1].sequence == 29 and len(results) <= 5
        assert time.monotonic() - t0 >= 0.1 * (len(results) - 1)
    with start_server(engine, make_config(max_stream_messages_per_s=20.0)) as server, \
            FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=7)).avatar_id
        with pytest.raises(grpc.RpcError) as err:
            list(client.animate(avatar, expressions(200, seed=7), 16, 16, max_in_flight=None, timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than 20 messages per second" in err.value.details()
        assert len(list(client.animate(avatar, expressions(3, seed=7), 16, 16, timeout=30))) == 3
