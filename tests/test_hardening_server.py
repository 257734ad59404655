"""Hostile input and resource limits over real gRPC (issue 13): decompression bombs refused from the image header,
photo decoding on its own bounded pool, avatar quota, ListAvatars pagination, slots held by silent streams,
undecodable messages, auth before parsing, log-safe names, INTERNAL errors without server details, cancelled
CreateAvatar, .npy errors, and a shutdown that ends live streams cleanly after a drain that still serves."""
from __future__ import annotations

import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from service_helpers import expressions, make_config, random_avatar_code, tiny_engine, wait_until

from flexrt.proto import flexavatar_pb2 as pb
from flexrt.runtime import codec
from flexrt.runtime.cli import synthetic_photo
from flexrt.runtime.client import FlexAvatarClient
from flexrt.runtime.server import start_server
from flexrt.runtime.store import AvatarStore

GARBAGE = b"\xff\xff\xff\xff\xff"  # an invalid protobuf tag: no message type parses it


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def _status(fn):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height, all black: ~20 KB for 13000x13000, which decodes to 169
    megapixels (507 MB once converted to RGB)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = zlib.compress(row * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _collect(call, out: dict) -> threading.Thread:
    """Drain a streaming call on a thread; out gets the responses, the final status and when it ended."""

    def run():
        out["responses"] = []
        try:
            for response in call:
                out["responses"].append(response)
            out["code"], out["details"] = call.code(), call.details()
        except grpc.RpcError as err:
            out["code"], out["details"] = err.code(), err.details()
        out["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _held_requests(release: threading.Event, first: pb.AnimateRequest | None = None):
    """A request stream that sends ``first`` (or nothing) and then stays silent until ``release``."""
    if first is not None:
        yield first
    release.wait(60)


# ---- 1. photos -----------------------------------------------------------------------------------------
def test_decompression_bomb_refused_from_the_header(engine):
    bomb = bomb_png(13000, 13000)
    assert len(bomb) < 600_000  # a small upload ...
    config = make_config()
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        client.server_info()  # connected and warm
        measured = _peak_rss_reset()
        before = _peak_rss_mb()
        t0 = time.perf_counter()
        code, details = _status(lambda: client.create_avatar(image=bomb))
        elapsed = time.perf_counter() - t0
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "13000x13000" in details and f"limit of {config.max_photo_pixels} pixels" in details, details
        assert elapsed < 0.5, f"refused after {elapsed:.2f} s"  # the header is read, nothing decoded
        if measured:
            assert _peak_rss_mb() - before < 100, "the bomb was decoded"  # decoding it costs > 500 MB
        # larger than Pillow's own bomb limit, not square, and a small non-square photo: all from the header
        for data, words in ((bomb_png(18000, 9000), "18000x9000"), (bomb_png(30000, 30000), "limit of"),
                            (codec.encode_frame(np.zeros((40, 60, 3), np.uint8), "png"), "square head crop, got 60x40")):
            t0 = time.perf_counter()
            code, details = _status(lambda: client.create_avatar(image=data))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
            assert time.perf_counter() - t0 < 0.5
        assert client.server_info().stats.avatars == 0


def test_photo_decoding_has_its_own_bounded_pool(engine):
    photo = codec.encode_frame(synthetic_photo(64), "png")
    with start_server(engine, make_config(photo_workers=1, max_concurrent_creates=1)) as server, \
            FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=0)).avatar_id
        service = server._running.service
        gate = threading.Event()
        service.photo_executor.submit(gate.wait, 60)  # the photo pool is busy (a slow upload)
        try:
            # frames are still encoded (PNG): their pool is another one
            frames = list(client.animate(avatar, expressions(3, seed=0), 16, 16, encoding="png", timeout=30))
            assert [f.sequence for f in frames] == [0, 1, 2]
            # a photo waits for the photo pool; one more creation beyond max_concurrent_creates is refused at once
            waiting = client.stub.CreateAvatar.future(pb.CreateAvatarRequest(image=photo), timeout=60)
            wait_until(lambda: service.creates_in_progress == 1, what="the first photo creation to wait")
            code, details = _status(lambda: client.create_avatar(image=photo))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "already creating 1 avatars" in details, details
        finally:
            gate.set()
        assert waiting.result().source == "image"
        assert client.create_avatar(image=photo).source == "image"  # and the limit frees up again
        assert client.server_info().limits.max_concurrent_creates == 1


# ---- 2. quota and pagination ---------------------------------------------------------------------------
def test_avatar_quota_count_and_bytes(engine, tmp_path):
    code = random_avatar_code(engine, seed=1)
    photo = codec.encode_frame(synthetic_photo(64), "png")
    with start_server(engine, make_config(tmp_path, max_avatars=3)) as server, \
            FlexAvatarClient(server.address) as client:
        ids = [client.create_avatar(npy=code).avatar_id for _ in range(3)]
        for source in (dict(npy=code), dict(image=photo)):
            code_, details = _status(lambda: client.create_avatar(**source))
            assert code_ == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert "the avatar store is full: 3 of 3 avatars (max_avatars)" in details, details
        info = client.server_info()
        assert info.limits.max_avatars == 3 and info.stats.avatars == 3
        client.delete_avatar(ids[0])
        assert client.create_avatar(npy=code).source == "npy"  # deleting makes room
    assert len(list((tmp_path / "avatars").glob("*.npy"))) == 3
    with start_server(engine, make_config(max_avatars=0, max_store_bytes=int(2.5 * code.nbytes))) as server, \
            FlexAvatarClient(server.address) as client:
        client.create_avatar(npy=code)
        client.create_avatar(npy=code)
        code_, details = _status(lambda: client.create_avatar(npy=code))
        assert code_ == grpc.StatusCode.RESOURCE_EXHAUSTED and "(max_store_bytes)" in details, details


def test_list_avatars_pages(engine):
    from flexrt.runtime.store import MAX_PAGE_SIZE, list_page

    code = random_avatar_code(engine, seed=2)
    with start_server(engine, make_config()) as server, FlexAvatarClient(server.address) as client:
        ids = [client.create_avatar(npy=code, name=f"a{i}").avatar_id for i in range(25)]
        pages, token = [], ""
        while True:
            page = client.stub.ListAvatars(pb.ListAvatarsRequest(page_size=10, page_token=token), timeout=10)
            assert page.total_size == 25
            pages.append([a.avatar_id for a in page.avatars])
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [10, 10, 5] and sum(pages, []) == ids  # oldest first, no repeats
        old_client = client.stub.ListAvatars(pb.ListAvatarsRequest(), timeout=10)  # page_size 0: default page
        assert [a.avatar_id for a in old_client.avatars] == ids and old_client.next_page_token == ""
        # keyset pages: deleting an avatar of an earlier page skips or repeats nothing
        first = client.stub.ListAvatars(pb.ListAvatarsRequest(page_size=10), timeout=10)
        client.delete_avatar(ids[3])
        rest = client.stub.ListAvatars(pb.ListAvatarsRequest(page_size=100, page_token=first.next_page_token),
                                       timeout=10)
        assert [a.avatar_id for a in rest.avatars] == ids[10:]
        assert [a.avatar_id for a in client.list_avatars(page_size=7)] == ids[:3] + ids[4:]
        for request, words in ((pb.ListAvatarsRequest(page_token="not-a-token"), "page_token is not one"),
                               (pb.ListAvatarsRequest(page_size=-1), "page_size must be >= 0")):
            code_, details = _status(lambda: client.stub.ListAvatars(request, timeout=10))
            assert code_ == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
        assert client.server_info().limits.max_list_page_size == MAX_PAGE_SIZE
    store = AvatarStore(None)  # the cap, on a store with more than a page
    for _ in range(MAX_PAGE_SIZE + 5):
        store.add(np.zeros((2, 2), np.float32), source="npy", model="m")
    records, token = list_page(store, 10 * MAX_PAGE_SIZE, "")
    assert len(records) == MAX_PAGE_SIZE and token
    assert len(list_page(store, 0, token)[0]) == 5


# ---- 3. held slots -------------------------------------------------------------------------------------
def test_streams_without_config_hold_no_slot_and_time_out(engine):
    config = make_config(max_streams=2, max_pending_streams=2, pending_grace_s=0.3, config_timeout_s=1.5)
    release = threading.Event()
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=3)).avatar_id
        silent = [{}, {}, {}]
        try:
            threads = [_collect(client.stub.Animate(_held_requests(release), timeout=60), out) for out in silent[:2]]
            wait_until(lambda: client.server_info().stats.pending_streams == 2, what="two silent streams")
            time.sleep(0.4)  # past pending_grace_s: newer streams may now close them
            # the stream slots stay free for streams that send their config; the budget of silent streams is
            # full, so this one closes the silent stream that has waited longest
            assert len(list(client.animate(avatar, expressions(2, seed=3), 16, 16, timeout=30))) == 2
            threads[0].join(timeout=10)
            assert silent[0]["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED, silent[0]
            assert "2 newer streams arrived (max_pending_streams)" in silent[0]["details"]
            threads.append(_collect(client.stub.Animate(_held_requests(release), timeout=60), silent[2]))
            for thread in threads:
                thread.join(timeout=30)
            for out in silent[1:]:  # the others time out
                assert out["code"] == grpc.StatusCode.DEADLINE_EXCEEDED, out
                assert "no SessionConfig within 1.5 s" in out["details"]
        finally:
            release.set()
        assert client.server_info().stats.pending_streams == 0
        assert client.server_info().limits.max_pending_streams == 2


def test_a_burst_of_late_configs_is_not_cut_but_a_flood_is(engine):
    """More new streams at once than max_pending_streams (a server's clients reconnecting together, their configs
    behind their streams): none is closed within pending_grace_s, so all of them open. More waiting streams than
    max_pending_streams + max_streams (a flood of silent ones) close the longest-waiting at once."""
    config = make_config(max_streams=5, max_pending_streams=2, pending_grace_s=3.0, config_timeout_s=6.0)
    release = threading.Event()
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=9)).avatar_id

        def late_config():  # the config 0.5 s after the stream opens, then the client ends the stream
            time.sleep(0.5)
            yield pb.AnimateRequest(config=pb.SessionConfig(avatar_id=avatar, width=16, height=16))

        burst = [{} for _ in range(5)]
        threads = [_collect(client.stub.Animate(late_config(), timeout=30), out) for out in burst]
        for thread in threads:
            thread.join(timeout=30)
        assert [out["code"] for out in burst] == [grpc.StatusCode.OK] * 5, [out.get("details") for out in burst]
        silent = [{} for _ in range(8)]  # cap: 2 + 5 waiting streams
        try:
            t0 = time.monotonic()
            threads = []
            for out in silent:
                threads.append(_collect(client.stub.Animate(_held_requests(release), timeout=60), out))
                time.sleep(0.05)  # in order of arrival
            threads[0].join(timeout=10)
            assert silent[0]["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED, silent[0]
            assert silent[0]["ended"] - t0 < config.pending_grace_s  # at once, not after the grace
            assert client.server_info().stats.pending_streams == 7
        finally:
            release.set()
        for thread in threads:
            thread.join(timeout=30)


def test_idle_streams_are_closed_and_free_their_slot(engine):
    config = make_config(max_streams=2, stream_idle_timeout_s=1.0)
    release = threading.Event()
    with start_server(engine, config) as server, FlexAvatarClient(server.address) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=4)).avatar_id
        first = pb.AnimateRequest(config=pb.SessionConfig(avatar_id=avatar, width=16, height=16))
        idle = [{}, {}]
        try:
            t0 = time.monotonic()
            threads = [_collect(client.stub.Animate(_held_requests(release, first), timeout=60), out) for out in idle]
            wait_until(lambda: server.stats()["active_streams"] == 2, what="two config-only streams")
            code, details = _status(lambda: list(client.animate(avatar, expressions(1, seed=4), 16, 16, timeout=30)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 2 concurrent" in details
            for thread in threads:
                thread.join(timeout=30)
            for out in idle:
                assert out["code"] == grpc.StatusCode.DEADLINE_EXCEEDED, out
                assert "no message on this stream for 1 s" in out["details"]
                assert 0.9 < out["ended"] - t0 < 10
        finally:
            release.set()
        # the slots are free again, and a slow but steady sender (a frame every 0.4 s) is not idle
        results = list(client.animate(avatar, expressions(6, seed=4), 16, 16, fps=2.5, timeout=30))
        assert [r.sequence for r in results] == list(range(6))


# ---- 4. undecodable messages, auth before parsing ------------------------------------------------------
def test_undecodable_messages_and_auth_before_parsing(engine, caplog):
    token = "s3cret-token-for-tests"
    auth = (("authorization", f"Bearer {token}"),)
    caplog.set_level("INFO")
    with start_server(engine, make_config(auth_token=token)) as server, \
            FlexAvatarClient(server.address, token=token) as client:
        avatar = client.create_avatar(npy=random_avatar_code(engine, seed=5)).avatar_id
        started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm-up")]
        assert started[0].startswith("warm-up: decoder batch sizes up to") and "NOT_SERVING" in started[0], started
        assert started[-1].startswith("warm-up for batches up to"), started  # says when it is over, and how long
        channel = grpc.insecure_channel(server.address)
        raw_create = channel.unary_unary("/flexavatar.v1.FlexAvatar/CreateAvatar")  # bytes in, bytes out
        raw_animate = channel.stream_stream("/flexavatar.v1.FlexAvatar/Animate")
        raw_reflection = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                               response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        config = pb.AnimateRequest(config=pb.SessionConfig(avatar_id=avatar, width=16, height=16)).SerializeToString()
        frame = pb.AnimateRequest(frame=pb.Frame(expression=expressions(1, seed=5)[0].tolist())).SerializeToString()

        # without the token: UNAUTHENTICATED, the body is never parsed
        for call in (lambda: raw_create(GARBAGE, timeout=10), lambda: list(raw_animate(iter([GARBAGE]), timeout=10))):
            code, details = _status(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in details
        # with it: INVALID_ARGUMENT, unary and streamed, first message or after a valid config and frames
        caplog.clear()
        for _ in range(20):
            code, details = _status(lambda: raw_create(GARBAGE, timeout=10, metadata=auth))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "CreateAvatar is not a valid protobuf message" in details, details
        for messages in ([GARBAGE], [config, GARBAGE], [config, frame, frame, GARBAGE]):
            call = raw_animate(iter(messages), timeout=10, metadata=auth)
            code, details = _status(lambda: list(call))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "Animate is not a valid protobuf" in details, details
        code, details = _status(lambda: list(raw_reflection(iter([GARBAGE]), timeout=10, metadata=auth)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        channel.close()
        # the server goes on: a healthy stream after all that
        assert len(list(client.animate(avatar, expressions(2, seed=5), 16, 16, timeout=30))) == 2
    records = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert 1 <= len(records) <= 4, [r.getMessage() for r in records]  # rate limited: one a method per 10 s
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]


# ---- 5. names, INTERNAL errors, cancelled creations, .npy errors --------------------------------------
def test_names_with_control_characters_are_refused(engine, caplog):
    from flexrt.runtime.limits import log_safe

    caplog.set_level("INFO")
    with start_server(engine, make_config()) as server, FlexAvatarClient(server.address) as client:
        code = random_avatar_code(engine, seed=6)
        for name, char, at in (("evil\n2026-12-01 INFO forged line", "U+000A", 4), ("\x1b[31mred", "U+001B", 0),
                               ("abc\u202edcba", "U+202E", 3)):
            code_, details = _status(lambda: client.create_avatar(npy=code, name=name))
            assert code_ == grpc.StatusCode.INVALID_ARGUMENT, details
            assert f"control characters; found {char} at position {at}" in details, details
        ok = client.create_avatar(npy=code, name="Zoë 👩‍👩‍👧 (take 2)")  # printable Unicode, joiners included
        assert client.get_avatar(ok.avatar_id).name == "Zoë 👩‍👩‍👧 (take 2)"
        assert client.server_info().stats.avatars == 1
    assert not [r for r in caplog.records if "forged" in r.getMessage()]
    assert log_safe("a\nb\x1bc") == "a\\nb\\x1bc" and log_safe("x" * 200, 10) == "x" * 10 + "..."


def test_internal_errors_send_an_error_id_not_server_details(engine, tmp_path, caplog):
    store_dir = tmp_path / "avatars"
    caplog.set_level("INFO")
    with start_server(engine, make_config(tmp_path)) as server, FlexAvatarClient(server.address) as client:
        shutil.rmtree(store_dir)
        store_dir.write_text("not a directory any more")  # the disk under the store fails
        code, details = _status(lambda: client.create_avatar(npy=random_avatar_code(engine, seed=7)))
        assert code == grpc.StatusCode.INTERNAL
        assert details.startswith("internal server error (error id ") and "server log" in details, details
        assert str(tmp_path) not in details and "Error" not in details and "/" not in details
        error_id = details.split("error id ")[1].split(";")[0]
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None  # the details stay on the server


class SlowDiskStore(AvatarStore):
    """A store on a slow disk: every add takes 1 s (the window in which a client may give up)."""

    def add(self, *args, **kwargs):
        time.sleep(1.0)
        return super().add(*args, **kwargs)


def test_cancelled_create_stores_nothing(engine, tmp_path):
    store = SlowDiskStore(tmp_path / "avatars")
    code = random_avatar_code(engine, seed=8)
    with start_server(engine, make_config(tmp_path), store=store) as server, \
            FlexAvatarClient(server.address) as client:
        status, _ = _status(lambda: client.stub.CreateAvatar(
            pb.CreateAvatarRequest(avatar_code_npy=_npy_bytes(code)), timeout=0.4))
        assert status == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(2.0)  # the add finishes on the server ... and is rolled back
        assert len(store) == 0 and client.list_avatars() == []
        assert not list((tmp_path / "avatars").glob("*.npy")) and not list((tmp_path / "avatars").glob("*.json"))
        kept = client.create_avatar(npy=code)  # a client that waits keeps its avatar
        assert [a.avatar_id for a in client.list_avatars()] == [kept.avatar_id]


def _npy_bytes(array) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_npy_errors_describe_the_file_not_numpy_internals(engine):
    rng = np.random.default_rng(9)
    good = random_avatar_code(engine, seed=9)
    cases = (
        (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "is not a valid .npy array"),
        (_npy_bytes(np.array([{"a": 1}], dtype=object)), "must be a float array, got dtype object"),
        (_npy_bytes(good)[:-100], "bytes follow"),  # truncated: the declared size does not arrive
    )
    with start_server(engine, make_config()) as server, FlexAvatarClient(server.address) as client:
        for data, words in cases:
            code, details = _status(lambda: client.stub.CreateAvatar(pb.CreateAvatarRequest(avatar_code_npy=data),
                                                                      timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
            assert "pickle" not in details.lower()


# ---- 6. shutdown ---------------------------------------------------------------------------------------
def test_drain_serves_new_streams_then_live_streams_end_cleanly(engine):
    server = start_server(engine, make_config(shutdown_drain_s=2.0, shutdown_grace_s=5.0))
    try:
        with FlexAvatarClient(server.address) as client:
            avatar = client.create_avatar(npy=random_avatar_code(engine, seed=10)).avatar_id
            live: dict = {}
            call = client.stub.Animate(_paced_requests(avatar, 1000, 0.2), timeout=60)
            reader = _collect(call, live)
            wait_until(lambda: len(live.get("responses", [])) >= 2, what="the live stream to run")
            stopper = threading.Thread(target=server.stop)
            t_stop = time.monotonic()
            stopper.start()
            health = health_pb2_grpc.HealthStub(client.channel)
            wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                       == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
            # during the drain a new stream is still served
            fresh = list(client.animate(avatar, expressions(3, seed=10), 16, 16, timeout=30))
            assert [r.sequence for r in fresh] == [0, 1, 2]
            assert time.monotonic() - t_stop < 2.0, "the drain is over already: the check above proves nothing"
            reader.join(timeout=30)
            stopper.join(timeout=30)
        assert live["code"] == grpc.StatusCode.UNAVAILABLE and "server is shutting down" in live["details"], live
        assert 1.9 < live["ended"] - t_stop < 4.0  # after the drain, well before drain + grace
        sequences = [r.sequence for r in live["responses"]]
        assert len(sequences) >= 5 and sequences == sorted(set(sequences))  # latest wins may skip one, and
        assert all(len(r.image) == 16 * 16 * 3 for r in live["responses"])  # every frame sent is whole
    finally:
        server.stop(grace=0)


def _paced_requests(avatar_id: str, n: int, interval_s: float):
    yield pb.AnimateRequest(config=pb.SessionConfig(avatar_id=avatar_id, width=16, height=16))
    for i, code in enumerate(expressions(n, seed=11)):
        time.sleep(interval_s)
        yield pb.AnimateRequest(frame=pb.Frame(sequence=i, expression=code.tolist()))


def test_sigterm_ends_live_streams_cleanly(tmp_path):
    """`flexavatar serve` in its own process: SIGTERM ends a live stream with UNAVAILABLE after whole frames, the
    process exits 0 with no traceback."""
    import signal
    import subprocess
    import sys

    server = subprocess.Popen(
        [sys.executable, "-m", "flexrt.cli", "serve", "--model", "tiny", "--device", "cpu", "--port", "0",
         "--store", str(tmp_path / "avatars"), "--grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # "flexavatar server listening on 127.0.0.1:PORT" once it serves
        assert "listening on" in line, (line, server.stderr.read() if server.poll() is not None else "")
        address = line.split()[-1]
        with FlexAvatarClient(address) as client:
            info = client.server_info()
            code = (0.5 * np.random.default_rng(0).standard_normal((info.num_head_tokens, info.hidden_dim)))
            avatar = client.create_avatar(npy=code.astype(np.float32)).avatar_id
            live: dict = {}
            reader = _collect(client.stub.Animate(_paced_requests(avatar, 1000, 0.2), timeout=60), live)
            wait_until(lambda: len(live.get("responses", [])) >= 3, timeout=30, what="the live stream to run")
            server.send_signal(signal.SIGTERM)
            reader.join(timeout=30)
        assert live["code"] == grpc.StatusCode.UNAVAILABLE and "server is shutting down" in live["details"], live
        sequences = [r.sequence for r in live["responses"]]
        assert sequences == sorted(set(sequences)) and all(len(r.image) == 16 * 16 * 3 for r in live["responses"])
        assert server.wait(timeout=30) == 0
        stderr = server.stderr.read()
        assert "Traceback" not in stderr and "Cancelling all calls" not in stderr, stderr
        assert "SIGTERM: shutting down" in stderr and "server stopped" in stderr
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
