"""Avatar store: avatar codes [HT,D] float32 persisted to a directory, so a restarted server keeps its avatars.

Layout of ``root``::

    <avatar_id>.npy    the avatar code, float32 [HT,D]
    <avatar_id>.json   metadata (AvatarRecord); written last, so a crash mid-write leaves no half avatar

Ids are 32 random hex characters (``secrets.token_hex(16)``); any other id is rejected before it touches the
file system. ``root=None`` keeps the avatars in memory only.

``open_store(location)`` (the end of this file) picks the backend of ``flexavatar serve --store``: this directory
store, or a database shared by several replicas (``redis://...``: store_redis.RedisAvatarStore).

What another backend (a database) must provide, and what it can reuse from here:

- ``add / get / delete / load_code / __len__ / usage / list_after`` (the AvatarStore methods below);
- the quota: ``AvatarQuota.check(count, used_bytes, new_bytes)`` is the one rule; a backend calls it inside the
  critical section (lock / transaction) that inserts, with its own count and byte total;
- pagination: ``list_page(store, page_size, page_token)`` works on any backend with ``list_after``
  (keyset order: ``(created_unix_s, avatar_id)``; a database answers it with ``WHERE (created, id) > (?, ?)
  ORDER BY created, id LIMIT ?``); page tokens are opaque to clients and validated here;
- names: ``check_avatar_name`` (length, no control characters).
"""
from __future__ import annotations

import base64
import bisect
import io
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_NAME_CHARS = 128
DEFAULT_PAGE_SIZE = 100  # ListAvatars page_size 0 (old clients) gets this many
MAX_PAGE_SIZE = 1000  # larger page_size values are lowered to this (a page of 1000 Avatars is ~0.2 MB)
_NPY_MAGIC = b"\x93NUMPY"


class AvatarNotFound(KeyError):
    def __init__(self, avatar_id: str):
        super().__init__(avatar_id)
        self.avatar_id = avatar_id

    def __str__(self) -> str:
        return f"avatar {self.avatar_id!r} not found"


class QuotaExceeded(Exception):
    """The store is full (count or bytes); the message says which limit and how to make room."""


class InvalidPageToken(ValueError):
    pass


class StoreUnavailable(RuntimeError):
    """A database-backed store cannot be reached (the server answers UNAVAILABLE; the message names the store)."""


@dataclass(frozen=True)
class AvatarQuota:
    """How many avatars a store may hold, and how many bytes of avatar codes. 0 = no limit."""

    max_avatars: int = 0
    max_bytes: int = 0

    def check(self, count: int, used_bytes: int, new_bytes: int) -> None:
        """Raise QuotaExceeded when one more avatar of ``new_bytes`` does not fit beside ``count`` avatars that
        take ``used_bytes`` (each backend passes its own numbers, read inside its insert's critical section)."""
        if self.max_avatars and count + 1 > self.max_avatars:
            raise QuotaExceeded(f"the avatar store is full: {count} of {self.max_avatars} avatars "
                                "(max_avatars); delete avatars to make room")
        if self.max_bytes and used_bytes + new_bytes > self.max_bytes:
            raise QuotaExceeded(f"the avatar store is full: {used_bytes / 2**20:.1f} MiB of "
                                f"{self.max_bytes / 2**20:.1f} MiB used, this avatar needs {new_bytes / 2**20:.1f} MiB "
                                "(max_store_bytes); delete avatars to make room")


@dataclass
class AvatarRecord:
    avatar_id: str
    name: str
    source: str  # "image" or "npy"
    num_head_tokens: int  # HT
    hidden_dim: int  # D
    created_unix_s: float
    model: str  # identity of the model that encoded it, "imported" for .npy

    @property
    def code_bytes(self) -> int:
        return self.num_head_tokens * self.hidden_dim * 4  # float32 [HT,D]

    @property
    def sort_key(self) -> tuple[float, str]:
        return (self.created_unix_s, self.avatar_id)


def is_valid_avatar_id(avatar_id: str) -> bool:
    return isinstance(avatar_id, str) and bool(_ID_RE.match(avatar_id))


# line and paragraph separators and bidirectional overrides/isolates: they rewrite how a log line or a terminal
# shows the text around them (other format characters, e.g. the zero-width joiner of emoji, are allowed)
_FORBIDDEN_FORMAT = {0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def check_avatar_name(name: str) -> None:
    """Raise ValueError unless ``name`` is at most MAX_NAME_CHARS characters without control characters
    (newlines, escapes, ...), which could forge log lines or terminal output."""
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name has {len(name)} characters, at most {MAX_NAME_CHARS} are allowed")
    for i, ch in enumerate(name):
        if unicodedata.category(ch) == "Cc" or ord(ch) in _FORBIDDEN_FORMAT:
            raise ValueError(f"name must not contain control characters; found U+{ord(ch):04X} at position {i}")


def parse_avatar_code_npy(data: bytes) -> np.ndarray:
    """.npy bytes of an avatar code [HT,1,D] (official, sequence-first) or [HT,D] -> float32 [HT,D].

    Only the .npy header is parsed before the data is checked (never pickles, never trusts the declared shape
    beyond the bytes present). Raises ValueError saying what is wrong (not an .npy, not a float array, wrong
    rank, truncated, non-finite values).
    """
    if not data.startswith(_NPY_MAGIC):
        raise ValueError("avatar_code_npy is not a valid .npy array (it does not start with the .npy magic "
                         "bytes \\x93NUMPY); save the code with numpy.save")
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"version {version}")
    except Exception:
        raise ValueError("avatar_code_npy is not a valid .npy array (its header could not be read)") from None
    if dtype.kind != "f" or dtype.hasobject:
        raise ValueError(f"avatar code must be a float array, got dtype {dtype}")
    count = math.prod(shape)
    payload = memoryview(data)[f.tell():]
    if len(payload) != count * dtype.itemsize:
        raise ValueError(f"avatar_code_npy is not a valid .npy array: its header declares {list(shape)} {dtype} "
                         f"({count * dtype.itemsize} bytes) but {len(payload)} bytes follow")
    code = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    if code.ndim == 3 and code.shape[1] == 1:
        code = code[:, 0, :]  # [HT,1,D] -> [HT,D]
    elif code.ndim != 2:
        raise ValueError(f"avatar code must be [HT,1,D] or [HT,D], got shape {list(code.shape)}")
    code = np.ascontiguousarray(code, dtype=np.float32)
    if not np.isfinite(code).all():
        raise ValueError("avatar code contains NaN or Inf")
    return code


# ---------------------------------------------------------------------------------------------------------
# pagination (any backend with list_after)
# ---------------------------------------------------------------------------------------------------------

def encode_page_token(record: AvatarRecord) -> str:
    """The position after ``record`` in (created_unix_s, avatar_id) order, as an opaque URL-safe string."""
    return base64.urlsafe_b64encode(f"{record.created_unix_s!r}/{record.avatar_id}".encode()).decode()


def decode_page_token(token: str) -> tuple[float, str]:
    """-> (created_unix_s, avatar_id); InvalidPageToken for anything ListAvatars did not hand out."""
    try:
        created, avatar_id = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii").split("/")
        key = (float(created), avatar_id)
    except Exception:
        key = None
    if key is None or not math.isfinite(key[0]) or not is_valid_avatar_id(key[1]) or len(token) > 200:
        raise InvalidPageToken("page_token is not one that ListAvatars returned (pass next_page_token unchanged)")
    return key


def list_page(store, page_size: int, page_token: str) -> tuple[list[AvatarRecord], str]:
    """One ListAvatars page -> (records, next_page_token; "" on the last page). page_size 0 = DEFAULT_PAGE_SIZE,
    larger than MAX_PAGE_SIZE = MAX_PAGE_SIZE; negative is an error (ValueError)."""
    if page_size < 0:
        raise ValueError(f"page_size must be >= 0 (0 = {DEFAULT_PAGE_SIZE}), got {page_size}")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = decode_page_token(page_token) if page_token else None
    records = store.list_after(after, size + 1)  # one more tells whether another page follows
    if len(records) <= size:
        return records, ""
    return records[:size], encode_page_token(records[size - 1])


# ---------------------------------------------------------------------------------------------------------
# the directory / memory backend
# ---------------------------------------------------------------------------------------------------------

class AvatarStore:
    """Thread-safe avatar store. ``root``: directory (created if missing) or None for memory only.
    ``quota``: refuse ``add`` beyond this many avatars / bytes (QuotaExceeded); None = no limit."""

    def __init__(self, root: str | os.PathLike | None, quota: AvatarQuota | None = None):
        self.root = Path(root) if root is not None else None
        self.location = str(self.root) if self.root is not None else "memory"  # for logs
        self.quota = quota or AvatarQuota()
        self._lock = threading.Lock()
        self._records: dict[str, AvatarRecord] = {}
        self._order: list[tuple[float, str]] = []  # sort keys of _records, ascending (pagination)
        self._bytes = 0  # code bytes of _records
        self._reserved = (0, 0)  # (avatars, bytes) of adds that passed the quota and are being written
        self._codes: dict[str, np.ndarray] = {}  # memory-only store, or a cache of loaded codes
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._load_index()

    def _load_index(self) -> None:
        for meta_path in sorted(self.root.glob("*.json")):
            avatar_id = meta_path.stem
            if not is_valid_avatar_id(avatar_id):
                continue
            try:
                record = AvatarRecord(**json.loads(meta_path.read_text()))
                record.created_unix_s = float(record.created_unix_s)
                record.num_head_tokens, record.hidden_dim = int(record.num_head_tokens), int(record.hidden_dim)
                if record.avatar_id != avatar_id:
                    raise ValueError(f"it names avatar {record.avatar_id!r}")
            except Exception as exc:
                logger.warning("avatar store: skipping unreadable %s (%s)", meta_path, exc)
                continue
            if not (self.root / f"{avatar_id}.npy").is_file():
                logger.warning("avatar store: skipping %s: its .npy is missing", meta_path)
                continue
            self._insert(record)
        logger.info("avatar store %s: %d avatars", self.root, len(self._records))

    def _insert(self, record: AvatarRecord) -> None:  # caller holds the lock (or is __init__)
        self._records[record.avatar_id] = record
        bisect.insort(self._order, record.sort_key)
        self._bytes += record.code_bytes

    # ---- queries ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def usage(self) -> tuple[int, int]:
        """-> (avatars, bytes of their codes), counting adds that are still being written."""
        with self._lock:
            return self._usage_locked()

    def _usage_locked(self) -> tuple[int, int]:
        return len(self._records) + self._reserved[0], self._bytes + self._reserved[1]

    def list(self) -> list[AvatarRecord]:
        """Every record, oldest first (small stores and tests; the service pages with list_after)."""
        return self.list_after(None, len(self._records) + 1)

    def list_after(self, after: tuple[float, str] | None, limit: int) -> list[AvatarRecord]:
        """At most ``limit`` records after the sort key ``after`` (None = from the start), oldest first."""
        with self._lock:
            start = 0 if after is None else bisect.bisect_right(self._order, after)
            return [self._records[avatar_id] for _, avatar_id in self._order[start:start + limit]]

    def get(self, avatar_id: str) -> AvatarRecord:
        with self._lock:
            record = self._records.get(avatar_id) if is_valid_avatar_id(avatar_id) else None
        if record is None:
            raise AvatarNotFound(avatar_id)
        return record

    def load_code(self, avatar_id: str) -> np.ndarray:
        """-> float32 [HT,D] (read-only view; callers copy to their device)."""
        record = self.get(avatar_id)
        with self._lock:
            code = self._codes.get(avatar_id)
        if code is None:
            code = np.load(self.root / f"{record.avatar_id}.npy", allow_pickle=False)
            code.setflags(write=False)
            with self._lock:
                self._codes[avatar_id] = code
        return code

    # ---- mutations -------------------------------------------------------------------------------
    def add(self, code: np.ndarray, *, source: str, model: str, name: str = "") -> AvatarRecord:
        """code float32 [HT,D] -> a new record with a fresh random id."""
        if code.ndim != 2:
            raise ValueError(f"avatar code must be [HT,D], got shape {list(code.shape)}")
        check_avatar_name(name)
        code = np.ascontiguousarray(code, dtype=np.float32)
        code.setflags(write=False)
        record = AvatarRecord(
            avatar_id=secrets.token_hex(16),
            name=name,
            source=source,
            num_head_tokens=int(code.shape[0]),
            hidden_dim=int(code.shape[1]),
            created_unix_s=time.time(),
            model=model,
        )
        with self._lock:  # the quota check and the reservation are one step
            self.quota.check(*self._usage_locked(), record.code_bytes)
            self._reserved = (self._reserved[0] + 1, self._reserved[1] + record.code_bytes)
        written = False
        try:
            if self.root is not None:
                self._atomic_write(self.root / f"{record.avatar_id}.npy", npy_bytes(code))
                self._atomic_write(self.root / f"{record.avatar_id}.json",
                                   json.dumps(asdict(record), indent=1).encode())
            written = True
        finally:
            with self._lock:
                self._reserved = (self._reserved[0] - 1, self._reserved[1] - record.code_bytes)
                if written:
                    self._insert(record)
                    self._codes[record.avatar_id] = code
        return record

    def delete(self, avatar_id: str) -> AvatarRecord:
        record = self.get(avatar_id)
        with self._lock:
            if self._records.pop(avatar_id, None) is not None:
                del self._order[bisect.bisect_left(self._order, record.sort_key)]
                self._bytes -= record.code_bytes
            self._codes.pop(avatar_id, None)
        if self.root is not None:
            # metadata first: an avatar without its .json is invisible, an orphan .npy is harmless
            for suffix in (".json", ".npy"):
                (self.root / f"{avatar_id}{suffix}").unlink(missing_ok=True)
        return record

    def _atomic_write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# choosing a backend (flexavatar serve --store)
# ---------------------------------------------------------------------------------------------------------

def open_store(location: str | os.PathLike | None, quota: AvatarQuota | None = None):
    """``--store`` -> a store: ``redis://host:port/db`` (or ``rediss://``, TLS) -> RedisAvatarStore, shared by every
    replica that names it (store_redis.py); a directory path -> AvatarStore (one host); None -> memory only.
    Raises StoreUnavailable when the database cannot be reached, ValueError for a URL of another scheme."""
    text = os.fspath(location) if location is not None else None
    if text is not None and "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme in ("redis", "rediss"):
            from .store_redis import RedisAvatarStore  # the redis package only when it is used

            return RedisAvatarStore(text, quota)
        raise ValueError(f"--store {scheme}://... is not supported; expected a directory or redis://host:port/db")
    return AvatarStore(text, quota)
