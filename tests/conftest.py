"""Shared test fixtures.

- ``shared_dir``: the reference data folder (``../shared`` beside the checkout, or ``$FLEXRT_SHARED``).
  Tests that need it skip with a reason when it is absent.
- ``gpu`` marker: tests skip with a reason when no CUDA device is visible.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_shared_dir() -> Path | None:
    env = os.environ.get("FLEXRT_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared", REPO_ROOT / "shared", REPO_ROOT / ".devdata" / "shared"]
    for c in candidates:
        if (c / "reference").is_dir():
            return c
    return None


SHARED = find_shared_dir()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if SHARED is None:
        pytest.skip("reference data not found: set FLEXRT_SHARED or place shared/ beside the checkout")
    return SHARED


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device visible (run on the GPU machine, see docs/BENCHMARKS.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
