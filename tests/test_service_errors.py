"""Bad input gets a specific gRPC status and message; the server keeps serving and a concurrent healthy stream
loses no frames. Auth: calls without the bearer token are refused, health checks stay open."""
from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from service_helpers import expressions, make_config, random_avatar_code, self_signed_cert, tiny_engine

from flexrt.proto import flexavatar_pb2 as pb
from flexrt.runtime import codec
from flexrt.runtime.client import FlexAvatarClient, FrameInput
from flexrt.runtime.server import start_server

KiB = 1024


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def _status(fn):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def _animate(client, avatar_id, frames, width=24, height=24):
    return lambda: list(client.animate(avatar_id, frames, width, height, timeout=30))


def _raw_animate(client, requests):
    return lambda: list(client.stub.Animate(iter(requests), timeout=30))


def test_bad_input_statuses_while_a_healthy_stream_runs(engine):
    config = make_config(max_message_bytes=64 * KiB, max_width=256, max_height=256)
    n_healthy = 40
    with start_server(engine, config) as server, \
            FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=1)).avatar_id
        healthy: list = []
        failures: list = []
        started = threading.Event()

        def healthy_stream():
            try:
                for r in client.animate(avatar, expressions(n_healthy, seed=2), 24, 24, fps=20, max_in_flight=1,
                                        timeout=60):
                    healthy.append(r)
                    started.set()
            except Exception as exc:  # reported below
                failures.append(exc)
                started.set()

        thread = threading.Thread(target=healthy_stream)
        thread.start()
        assert started.wait(30)

        good = expressions(1, seed=3)[0]
        unknown = "0" * 32
        cases = {
            "short expression": (_animate(client, avatar, [good[:134]]),
                                 grpc.StatusCode.INVALID_ARGUMENT, "expression must have 135 floats, got 134"),
            "NaN expression": (_animate(client, avatar, [np.where(np.arange(135) == 7, np.nan, good)]),
                               grpc.StatusCode.INVALID_ARGUMENT, "expression contains NaN or Inf"),
            "unknown avatar (Animate)": (_animate(client, unknown, [good]),
                                         grpc.StatusCode.NOT_FOUND, f"avatar '{unknown}' not found"),
            "unknown avatar (GetAvatar)": (lambda: client.get_avatar(unknown),
                                           grpc.StatusCode.NOT_FOUND, "not found"),
            "unknown avatar (DeleteAvatar)": (lambda: client.delete_avatar(unknown),
                                              grpc.StatusCode.NOT_FOUND, "not found"),
            "malformed avatar id": (lambda: client.get_avatar("../etc/passwd"),
                                    grpc.StatusCode.INVALID_ARGUMENT, "32 lowercase hex"),
            "resolution over the limit": (_animate(client, avatar, [good], width=512, height=64),
                                          grpc.StatusCode.INVALID_ARGUMENT, "outside the server limits"),
            "resolution missing": (_animate(client, avatar, [good], width=0, height=0),
                                   grpc.StatusCode.INVALID_ARGUMENT, "width and height are required"),
            "bad frame camera": (_animate(client, avatar, [FrameInput(good, np.eye(3), np.eye(3))]),
                                 grpc.StatusCode.INVALID_ARGUMENT, "cam2world needs 16 floats"),
            "malformed image bytes": (lambda: client.create_avatar(image=b"\x89PNG\r\n\x1a\n garbage"),
                                      grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded as PNG/JPEG"),
            "non-square image": (lambda: client.create_avatar(image=np.zeros((40, 60, 3), np.uint8)),
                                 grpc.StatusCode.INVALID_ARGUMENT, "square head crop, got 60x40"),
            "wrong avatar code shape": (lambda: client.create_avatar(npy=np.zeros((3, 1, 5), np.float32)),
                                        grpc.StatusCode.INVALID_ARGUMENT, "this server's model expects"),
            "no avatar source": (lambda: client.stub.CreateAvatar(pb.CreateAvatarRequest(), timeout=10),
                                 grpc.StatusCode.INVALID_ARGUMENT, "needs 'image'"),
            "first message without config": (
                _raw_animate(client, [pb.AnimateRequest(frame=pb.Frame(expression=good.tolist()))]),
                grpc.StatusCode.INVALID_ARGUMENT, "first Animate message must carry 'config'"),
            "config twice": (
                _raw_animate(client, [pb.AnimateRequest(config=pb.SessionConfig(avatar_id=avatar, width=24,
                                                                                 height=24))] * 2),
                grpc.StatusCode.INVALID_ARGUMENT, "only the first Animate message may carry 'config'"),
            "oversized message": (
                lambda: client.create_avatar(image=codec.encode_frame(
                    np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8), "png")),
                grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        }
        for name, (call, code, message) in cases.items():
            got_code, got_details = _status(call)
            assert got_code == code, f"{name}: {got_code} {got_details!r}"
            assert message in got_details, f"{name}: {got_details!r}"

        thread.join(timeout=60)
        assert not failures, failures
        assert [r.sequence for r in healthy] == list(range(n_healthy))
        assert healthy[-1].dropped == 0 and healthy[-1].received == n_healthy
        # still serving: a new stream works
        assert len(list(client.animate(avatar, expressions(3, seed=4), 24, 24, timeout=30))) == 3
        assert client.health() == "SERVING"
        assert server.stats()["active_streams"] == 0


def test_bearer_token_auth(engine):
    token = "s3cret-token-for-tests"
    with start_server(engine, make_config(auth_token=token)) as server:
        with FlexAvatarClient(server.address) as anonymous:
            assert anonymous.health() == "SERVING"  # health checks stay open for load balancers
            code, details = _status(anonymous.list_avatars)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in details
            code, details = _status(_animate(anonymous, "0" * 32, expressions(1, seed=0)))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in details
        with FlexAvatarClient(server.address, token="wrong-token-xyz") as wrong:
            code, details = _status(wrong.server_info)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "invalid bearer token" in details
        with FlexAvatarClient(server.address, token=token) as client:
            assert client.server_info().limits.auth_required
            avatar = client.create_avatar(npy=random_avatar_code(engine, seed=0)).avatar_id
            assert len(list(client.animate(avatar, expressions(2, seed=0), 16, 16, timeout=30))) == 2


def test_tls(engine, tmp_path):
    """TLS from cert/key files: a client trusting the certificate streams; a plaintext client cannot connect."""
    cert, key = self_signed_cert(tmp_path)
    with start_server(engine, make_config(tls_cert=str(cert), tls_key=str(key))) as server:
        with FlexAvatarClient(server.address, tls_root_cert=str(cert), tls_server_name="localhost") as client:
            assert client.server_info().limits.tls
            avatar = client.create_avatar(npy=random_avatar_code(engine, seed=0)).avatar_id
            assert len(list(client.animate(avatar, expressions(2, seed=0), 16, 16, timeout=30))) == 2
        with FlexAvatarClient(server.address, timeout=3) as plaintext:
            code, _ = _status(plaintext.list_avatars)
            assert code == grpc.StatusCode.UNAVAILABLE
