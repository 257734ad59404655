"""The shared avatar store (runtime/store_redis.py) against a real redis-server started here.

Two RedisAvatarStore objects on one database stand for two replicas. Checked: an avatar written by one is read by
the other bit for bit; ListAvatars pages match the directory store's keyset order (ties of created_unix_s broken
by id); the quota holds across replicas when 16 threads on two stores add at once (exactly max_avatars succeed,
the usage counters equal what is stored); deletes on one are seen by the other; an unreachable database is one
clear StoreUnavailable (password redacted); and two gRPC servers on one database serve each other's avatars, the
stream rendering the same frames as a server with a directory store.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from flexrt.runtime import store_redis
from flexrt.runtime.store import (
    AvatarNotFound,
    AvatarQuota,
    AvatarStore,
    QuotaExceeded,
    StoreUnavailable,
    list_page,
    open_store,
)

from scaleout_helpers import free_port, redis_server  # noqa: F401  (fixture)
from service_helpers import expressions, make_config, tiny_engine

pytest.importorskip("redis", reason="the redis package (the `dev` / `redis` extra) is needed for the Redis store")

HT, D = 4, 8


def _code(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((HT, D)).astype(np.float32)


@pytest.fixture()
def redis_url(redis_server):  # noqa: F811
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


def test_avatars_written_by_one_replica_are_read_by_another(redis_url):
    a, b = open_store(redis_url), open_store(redis_url)
    record = a.add(_code(0), source="npy", model="imported", name="ада")
    assert b.get(record.avatar_id) == record  # every field, through JSON
    np.testing.assert_array_equal(b.load_code(record.avatar_id), _code(0))  # bit for bit, fetched from Redis
    assert not b.load_code(record.avatar_id).flags.writeable
    assert len(b) == 1 and b.usage() == (1, HT * D * 4)
    assert b.delete(record.avatar_id) == record
    with pytest.raises(AvatarNotFound):
        a.get(record.avatar_id)
    with pytest.raises(AvatarNotFound):
        b.delete(record.avatar_id)
    assert a.usage() == (0, 0)
    with pytest.raises(AvatarNotFound):
        b.get("not-an-id")


def test_pages_follow_the_directory_store_order(redis_url, tmp_path, monkeypatch):
    """Same records in both backends (created_unix_s ties included) -> the same ListAvatars pages."""
    redis_store, dir_store = open_store(redis_url), AvatarStore(tmp_path / "avatars")
    clock = iter([100.0, 100.0, 100.0, 101.5, 99.0, 100.0, 102.0])  # ties: ids decide
    times = [next(clock) for _ in range(7)]
    records = []
    for i, t in enumerate(times):
        monkeypatch.setattr(store_redis, "time", types.SimpleNamespace(time=lambda t=t: t))
        records.append(redis_store.add(_code(i), source="npy", model="m", name=f"n{i}"))
    for record in records:  # the directory store gets the very same records (same ids and times)
        dir_store._insert(record)
    expected = sorted(records, key=lambda r: r.sort_key)
    for store in (redis_store, dir_store):
        pages, token = [], ""
        while True:
            page, token = list_page(store, 2, token)
            pages.append([r.avatar_id for r in page])
            if not token:
                break
        assert sum(pages, []) == [r.avatar_id for r in expected] and [len(p) for p in pages] == [2, 2, 2, 1]
    assert redis_store.list_after(expected[2].sort_key, 10) == expected[3:]


def test_quota_holds_across_replicas_under_concurrent_adds(redis_url):
    quota = AvatarQuota(max_avatars=5)
    stores = [open_store(redis_url, quota), open_store(redis_url, quota)]
    start = threading.Barrier(16)

    def add(i):
        start.wait()
        try:
            return stores[i % 2].add(_code(i), source="npy", model="m")
        except QuotaExceeded as exc:
            return exc

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(add, range(16)))
    stored = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(stored) == 5 and len(refused) == 11
    assert "5 of 5 avatars" in str(refused[0])
    assert stores[0].usage() == (5, 5 * HT * D * 4) == stores[1].usage()
    assert sorted(r.avatar_id for r in stores[1].list()) == sorted(r.avatar_id for r in stored)
    # bytes: room for exactly one more code of HT*D*4 bytes
    for store in stores:
        store.quota = AvatarQuota(max_bytes=6 * HT * D * 4)
    stores[1].add(_code(99), source="npy", model="m")
    with pytest.raises(QuotaExceeded, match="MiB used"):
        stores[0].add(_code(100), source="npy", model="m")
    stores[0].delete(stored[0].avatar_id)  # room again, seen by the other replica
    stores[1].add(_code(101), source="npy", model="m")
    assert stores[0].usage() == (6, 6 * HT * D * 4)


def test_unreachable_database_is_one_clear_error():
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable) as err:
        open_store(url)
    assert "redis://user:***@127.0.0.1" in str(err.value) and "secret" not in str(err.value)
    with pytest.raises(ValueError, match="not supported"):
        open_store("postgresql://localhost/avatars")
    result = subprocess.run([sys.executable, "-m", "flexrt.cli", "serve", "--model", "tiny", "--device", "cpu",
                             "--port", "0", "--store", url], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: --store: the avatar store redis://user:***@") and "secret" not in result.stderr


def test_two_servers_share_one_database(redis_url, tmp_path):
    """Server A stores the avatar, server B (which never saw it) streams it: the frames equal those of a server
    with a directory store holding the same code. Redis gone -> CreateAvatar is UNAVAILABLE, not INTERNAL."""
    import grpc

    from flexrt.runtime.client import FlexAvatarClient
    from flexrt.runtime.server import start_server

    engine = tiny_engine()
    code = (0.5 * np.random.default_rng(3).standard_normal((engine.num_head_tokens, engine.hidden_dim))).astype(
        np.float32)
    exprs = expressions(4, seed=5)
    with start_server(engine, make_config(store_dir=redis_url)) as a, \
            start_server(engine, make_config(store_dir=redis_url)) as b, \
            start_server(engine, make_config(tmp_path)) as local:
        with FlexAvatarClient(a.address) as ca, FlexAvatarClient(b.address) as cb, \
                FlexAvatarClient(local.address) as cl:
            avatar = ca.create_avatar(npy=code, name="shared")
            assert cb.get_avatar(avatar.avatar_id).name == "shared"
            assert [x.avatar_id for x in cb.list_avatars()] == [avatar.avatar_id]
            shared = [r.image for r in cb.animate(avatar.avatar_id, exprs, 24, 24)]
            reference = [r.image for r in cl.animate(cl.create_avatar(npy=code).avatar_id, exprs, 24, 24)]
            assert len(shared) == 4 and all(np.array_equal(x, y) for x, y in zip(shared, reference))
            cb.delete_avatar(avatar.avatar_id)
            with pytest.raises(grpc.RpcError) as err:
                list(ca.animate(avatar.avatar_id, exprs, 24, 24))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            import redis

            redis.Redis.from_url(redis_url).shutdown(nosave=True)
            with pytest.raises(grpc.RpcError) as err:
                ca.create_avatar(npy=code)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot be reached" in err.value.details()


def test_a_hanging_database_does_not_stall_live_streams(redis_url):
    """Redis frozen (SIGSTOP: it accepts nothing and answers nothing) while a stream runs: the live stream keeps its
    frame rate, GetAvatar ends as UNAVAILABLE after the client's socket timeout instead of freezing the server's
    event loop, and everything works again once Redis resumes."""
    import os
    import signal
    import time

    import grpc
    import redis

    from flexrt.runtime.client import FlexAvatarClient
    from flexrt.runtime.server import start_server

    engine = tiny_engine()
    code = (0.5 * np.random.default_rng(4).standard_normal((engine.num_head_tokens, engine.hidden_dim))).astype(
        np.float32)
    pid = int(redis.Redis.from_url(redis_url).info()["process_id"])
    n, fps = 30, 10.0
    with start_server(engine, make_config(store_dir=redis_url)) as server, FlexAvatarClient(server.address) as c:
        avatar = c.create_avatar(npy=code)
        arrivals, blocked = [], {}

        def stream():
            for _ in c.animate(avatar.avatar_id, expressions(n, seed=1), 16, 16, fps=fps, max_in_flight=1):
                arrivals.append(time.monotonic())

        def get_while_frozen():
            t0 = time.monotonic()
            try:
                c.get_avatar(avatar.avatar_id)
                blocked["code"] = grpc.StatusCode.OK
            except grpc.RpcError as err:
                blocked["code"] = err.code()
            blocked["s"] = time.monotonic() - t0

        runner = threading.Thread(target=stream)
        runner.start()
        while len(arrivals) < 5:
            time.sleep(0.01)
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            getter = threading.Thread(target=get_while_frozen)
            getter.start()
            getter.join(timeout=15)
        finally:
            os.kill(pid, signal.SIGCONT)
        runner.join(timeout=30)
        assert not getter.is_alive() and blocked["code"] == grpc.StatusCode.UNAVAILABLE, blocked
        during = [t for t in arrivals if frozen_at <= t <= frozen_at + blocked["s"]]
        gaps = np.diff([frozen_at] + during)
        assert len(arrivals) == n  # the stream lost nothing
        # frames kept coming while GetAvatar waited on the frozen database (a stalled loop would give one gap of
        # the whole socket timeout)
        assert len(during) >= int(0.5 * fps * blocked["s"]) and gaps.max() < 0.6, (blocked, gaps.round(3).tolist())
        assert c.get_avatar(avatar.avatar_id).avatar_id == avatar.avatar_id  # Redis back: served again
