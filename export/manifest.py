"""``manifest.json``: what an engine directory holds, and proof that it is what was built.

The manifest records the model identity (config hash, checkpoint / DINOv2 / template hashes), every file with its
sha256, the graphs' tensor names, shapes and dtypes, precision, opset, tool versions and the parity report.
:func:`verify_file` refuses a file whose bytes do not match its recorded hash (a tampered or truncated engine).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flexrt.model.checkpoint import file_sha256 as sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class ManifestError(RuntimeError):
    """The engine directory is incomplete, tampered with, or not an engine directory."""


def file_entry(root: Path, rel: str, **extra: Any) -> dict[str, Any]:
    path = root / rel
    return {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size, **extra}


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(root) / MANIFEST_NAME
    manifest = {"manifest_version": MANIFEST_VERSION, **manifest}
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{root} is not an engine directory: {MANIFEST_NAME} not found (run `flexavatar export-engines`)")
    manifest = json.loads(path.read_text())
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: unsupported manifest_version {manifest.get('manifest_version')!r}")
    return manifest


def find_file(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    files = manifest.get("files", {})
    if key not in files:
        raise ManifestError(f"the engine directory has no {key!r} (available: {', '.join(sorted(files)) or 'none'})")
    return files[key]


def verify_file(root: str | Path, entry: dict[str, Any]) -> Path:
    """Return the file's path after checking its sha256 (and those of its external-data files)."""
    root = Path(root)
    for rel, digest in [(entry["path"], entry["sha256"])] + list(entry.get("external_data", {}).items()):
        path = root / rel
        if not path.is_file():
            raise ManifestError(f"engine file missing: {path}")
        actual = sha256_file(path)
        if actual != digest:
            raise ManifestError(
                f"engine file {path} does not match its manifest (sha256 {actual[:16]}..., expected {digest[:16]}...): "
                "refusing to load a modified or corrupt file; re-run `flexavatar export-engines`"
            )
    return root / entry["path"]
