"""The shared avatar store: avatars in Redis, so N replicas behind a load balancer serve the same avatars
(``flexavatar serve --store redis://host:6379/0``; docs/SCALEOUT.md).

Same interface as the directory store (store.AvatarStore): ``add / get / delete / load_code / __len__ / usage /
list_after`` and a ``quota`` attribute the server sets from --max-avatars / --max-store-mib.

Keys (one hash tag, ``{flexrt}``, so every key lives in one slot and the scripts below also run on a Redis Cluster)::

    flexrt:{flexrt}:avatar:<id>   hash: meta (the AvatarRecord as JSON), code (.npy bytes, float32 [HT,D]), bytes
    flexrt:{flexrt}:index         sorted set: member <id>, score created_unix_s (ListAvatars' keyset order)
    flexrt:{flexrt}:usage         hash: count, bytes (what the quota counts)

Writes are Lua scripts, which Redis runs atomically (no other command runs between their steps): ``add`` reads the
usage, applies the quota and writes the avatar, its index entry and the new usage in one step, so two replicas
that create avatars at the same moment can never pass the quota together, and a reader never sees an avatar
without its code. ``delete`` removes all three in one step as well.

Each replica keeps the codes it has loaded in a small LRU cache (avatar codes never change: an id is random and
never reused, so a cached code can only go stale by being deleted, and ``get``, which asks Redis every time,
reports that). A replica that has never seen an avatar fetches its code from Redis when a stream names it.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from .store import (
    AvatarNotFound,
    AvatarQuota,
    AvatarRecord,
    StoreUnavailable,
    check_avatar_name,
    is_valid_avatar_id,
    npy_bytes,
    parse_avatar_code_npy,
)

logger = logging.getLogger(__name__)

PREFIX = "flexrt:{flexrt}:"

# KEYS: avatar hash, index, usage.  ARGV: id, created (repr), meta JSON, code bytes, code size, max_avatars, max_bytes
# (0 = no limit). -> {status, count, bytes}: status "ok" (stored; the usage after it), "full" (the usage that did
# not leave room), "exists" (id collision; never in practice: 128 random bits).
_ADD = """
local count = tonumber(redis.call('HGET', KEYS[3], 'count') or '0')
local used = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0')
local size, max_count, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if (max_count > 0 and count + 1 > max_count) or (max_bytes > 0 and used + size > max_bytes) then
  return {'full', count, used}
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', count, used} end
redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'code', ARGV[4], 'bytes', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'count', 1)
redis.call('HINCRBY', KEYS[3], 'bytes', size)
return {'ok', count + 1, used + size}
"""

# KEYS: avatar hash, index, usage.  ARGV: id.  -> the deleted avatar's meta JSON, or nil when there is none.
_DELETE = """
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return false end
local size = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'count', -1)
redis.call('HINCRBY', KEYS[3], 'bytes', -size)
return meta
"""


def redact_url(url: str) -> str:
    """redis://user:secret@host:6379/0 -> redis://user:***@host:6379/0 (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisAvatarStore:
    """Avatar store in Redis (``url``: redis://[user:password@]host:port/db, or rediss:// for TLS).
    ``cache_avatars``: codes kept in this process (LRU). Raises StoreUnavailable when Redis cannot be reached."""

    def __init__(self, url: str, quota: AvatarQuota | None = None, cache_avatars: int = 64,
                 timeout_s: float = 2.0):
        try:
            import redis
        except ImportError:
            raise RuntimeError("--store redis://... needs the redis package: pip install 'flexavatar-runtime[redis]'") \
                from None
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self.location = redact_url(url)
        self.quota = quota or AvatarQuota()
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                               health_check_interval=30)
        except ValueError as exc:
            raise ValueError(f"--store {self.location}: {exc}") from None
        self._add = self._redis.register_script(_ADD)
        self._delete = self._redis.register_script(_DELETE)
        self._index, self._usage = PREFIX + "index", PREFIX + "usage"
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._cache_avatars = cache_avatars
        self._lock = threading.Lock()
        with self._reachable():
            self._redis.ping()
        logger.info("avatar store %s: %d avatars", self.location, len(self))

    @contextlib.contextmanager
    def _reachable(self):
        try:
            yield
        except self._errors as exc:
            raise StoreUnavailable(f"the avatar store {self.location} cannot be reached ({exc})") from None

    @staticmethod
    def _key(avatar_id: str) -> str:
        return f"{PREFIX}avatar:{avatar_id}"

    # ---- queries ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.usage()[0]

    def usage(self) -> tuple[int, int]:
        """-> (avatars, bytes of their codes), across every replica."""
        with self._reachable():
            count, used = self._redis.hmget(self._usage, "count", "bytes")
        return int(count or 0), int(used or 0)

    def list(self) -> list[AvatarRecord]:
        return self.list_after(None, len(self) + 1)

    def list_after(self, after: tuple[float, str] | None, limit: int) -> list[AvatarRecord]:
        """At most ``limit`` records after the sort key ``after`` (None = from the start), oldest first. The sorted
        set orders by (score, member) = (created_unix_s, avatar_id): the keyset order of store.list_page."""
        ids: list[str] = []
        start, batch = 0, limit + 16
        low = "-inf" if after is None else repr(after[0])
        with self._reachable():
            while len(ids) < limit:
                members = self._redis.zrangebyscore(self._index, low, "+inf", start=start, num=batch, withscores=True)
                for member, score in members:
                    avatar_id = member.decode()
                    if after is None or (score, avatar_id) > after:
                        ids.append(avatar_id)
                if len(members) < batch:
                    break
                start += batch
            ids = ids[:limit]
            metas = self._redis.pipeline(transaction=False)
            for avatar_id in ids:
                metas.hget(self._key(avatar_id), "meta")
            found = metas.execute() if ids else []
        return [_record(meta) for meta in found if meta is not None]  # None: deleted since the index was read

    def get(self, avatar_id: str) -> AvatarRecord:
        if not is_valid_avatar_id(avatar_id):
            raise AvatarNotFound(avatar_id)
        with self._reachable():
            meta = self._redis.hget(self._key(avatar_id), "meta")
        if meta is None:
            raise AvatarNotFound(avatar_id)
        return _record(meta)

    def load_code(self, avatar_id: str) -> np.ndarray:
        """-> float32 [HT,D] (read-only): from this process's cache, else from Redis."""
        with self._lock:
            code = self._cache.get(avatar_id)
            if code is not None:
                self._cache.move_to_end(avatar_id)
                return code
        if not is_valid_avatar_id(avatar_id):
            raise AvatarNotFound(avatar_id)
        with self._reachable():
            data = self._redis.hget(self._key(avatar_id), "code")
        if data is None:
            raise AvatarNotFound(avatar_id)
        code = parse_avatar_code_npy(data)  # validated like an upload: the database may be shared
        code.setflags(write=False)
        self._remember(avatar_id, code)
        return code

    def _remember(self, avatar_id: str, code: np.ndarray) -> None:
        with self._lock:
            self._cache[avatar_id] = code
            self._cache.move_to_end(avatar_id)
            while len(self._cache) > self._cache_avatars:
                self._cache.popitem(last=False)

    # ---- mutations -------------------------------------------------------------------------------
    def add(self, code: np.ndarray, *, source: str, model: str, name: str = "") -> AvatarRecord:
        """code float32 [HT,D] -> a new record with a fresh random id; QuotaExceeded when the store (all replicas
        together) is full."""
        if code.ndim != 2:
            raise ValueError(f"avatar code must be [HT,D], got shape {list(code.shape)}")
        check_avatar_name(name)
        code = np.ascontiguousarray(code, dtype=np.float32)
        code.setflags(write=False)
        record = AvatarRecord(avatar_id=secrets.token_hex(16), name=name, source=source,
                              num_head_tokens=int(code.shape[0]), hidden_dim=int(code.shape[1]),
                              created_unix_s=time.time(), model=model)
        with self._reachable():
            status, count, used = self._add(
                keys=[self._key(record.avatar_id), self._index, self._usage],
                args=[record.avatar_id, repr(record.created_unix_s), json.dumps(asdict(record)), npy_bytes(code),
                      record.code_bytes, self.quota.max_avatars, self.quota.max_bytes])
        if status == b"full":
            self.quota.check(int(count), int(used), record.code_bytes)  # raises QuotaExceeded with the usual message
        if status != b"ok":
            raise RuntimeError(f"avatar store {self.location}: add returned {status!r}")
        self._remember(record.avatar_id, code)
        return record

    def delete(self, avatar_id: str) -> AvatarRecord:
        if not is_valid_avatar_id(avatar_id):
            raise AvatarNotFound(avatar_id)
        with self._reachable():
            meta = self._delete(keys=[self._key(avatar_id), self._index, self._usage], args=[avatar_id])
        with self._lock:
            self._cache.pop(avatar_id, None)
        if meta is None:
            raise AvatarNotFound(avatar_id)
        return _record(meta)


def _record(meta: bytes) -> AvatarRecord:
    fields = json.loads(meta)
    record = AvatarRecord(**fields)
    record.created_unix_s = float(record.created_unix_s)
    return record
