"""Avatar store: avatar codes [HT,D] float32 persisted to a directory, so a restarted server keeps its avatars.

Layout of ``root``::

    <avatar_id>.npy    the avatar code, float32 [HT,D]
    <avatar_id>.json   metadata (AvatarRecord); written last, so a crash mid-write leaves no half avatar

Ids are 32 random hex characters (``secrets.token_hex(16)``); any other id is rejected before it touches the
file system. ``root=None`` keeps the avatars in memory only.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_NAME_CHARS = 128


class AvatarNotFound(KeyError):
    def __init__(self, avatar_id: str):
        super().__init__(avatar_id)
        self.avatar_id = avatar_id

    def __str__(self) -> str:
        return f"avatar {self.avatar_id!r} not found"


@dataclass
class AvatarRecord:
    avatar_id: str
    name: str
    source: str  # "image" or "npy"
    num_head_tokens: int  # HT
    hidden_dim: int  # D
    created_unix_s: float
    model: str  # identity of the model that encoded it, "imported" for .npy


def is_valid_avatar_id(avatar_id: str) -> bool:
    return isinstance(avatar_id, str) and bool(_ID_RE.match(avatar_id))


def parse_avatar_code_npy(data: bytes) -> np.ndarray:
    """.npy bytes of an avatar code [HT,1,D] (official, sequence-first) or [HT,D] -> float32 [HT,D].

    Raises ValueError saying what is wrong (not an .npy, pickled objects, wrong rank, non-finite values).
    """
    try:
        code = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"avatar_code_npy is not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if not isinstance(code, np.ndarray) or code.dtype.kind != "f":
        raise ValueError(f"avatar code must be a float array, got dtype {getattr(code, 'dtype', type(code))}")
    if code.ndim == 3 and code.shape[1] == 1:
        code = code[:, 0, :]  # [HT,1,D] -> [HT,D]
    elif code.ndim != 2:
        raise ValueError(f"avatar code must be [HT,1,D] or [HT,D], got shape {list(code.shape)}")
    code = np.ascontiguousarray(code, dtype=np.float32)
    if not np.isfinite(code).all():
        raise ValueError("avatar code contains NaN or Inf")
    return code


class AvatarStore:
    """Thread-safe avatar store. ``root``: directory (created if missing) or None for memory only."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None
        self._lock = threading.Lock()
        self._records: dict[str, AvatarRecord] = {}
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
            except Exception as exc:
                logger.warning("avatar store: skipping unreadable %s (%s)", meta_path, exc)
                continue
            if not (self.root / f"{avatar_id}.npy").is_file():
                logger.warning("avatar store: skipping %s: its .npy is missing", meta_path)
                continue
            self._records[avatar_id] = record
        logger.info("avatar store %s: %d avatars", self.root, len(self._records))

    # ---- queries ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def list(self) -> list[AvatarRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: (r.created_unix_s, r.avatar_id))

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
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"avatar name has {len(name)} characters, at most {MAX_NAME_CHARS} are allowed")
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
        if self.root is not None:
            self._atomic_write(self.root / f"{record.avatar_id}.npy", _npy_bytes(code))
            self._atomic_write(self.root / f"{record.avatar_id}.json", json.dumps(asdict(record), indent=1).encode())
        with self._lock:
            self._records[record.avatar_id] = record
            self._codes[record.avatar_id] = code
        return record

    def delete(self, avatar_id: str) -> AvatarRecord:
        record = self.get(avatar_id)
        with self._lock:
            self._records.pop(avatar_id, None)
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


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
