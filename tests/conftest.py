"""Shared fixtures: real-data location, an isolated CNNBENCH_HOME for the whole test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("CNNBENCH_DATA", REPO.parent / "shared" / "datasets")).resolve()

_SESSION_HOME: str | None = None


def pytest_configure(config):
    """Point CNNBENCH_HOME at a fresh folder before any fixture (session-scoped ones included)
    runs, so no test ever writes caches into the user's ~/.cache/cnnbench; one session shares
    it, so the real train80 archive is prepared once per test run."""
    global _SESSION_HOME
    _SESSION_HOME = os.environ.get("CNNBENCH_TEST_HOME") or tempfile.mkdtemp(prefix="cnnbench-test-home-")
    os.environ["CNNBENCH_HOME"] = _SESSION_HOME


def pytest_unconfigure(config):
    if _SESSION_HOME and not os.environ.get("CNNBENCH_TEST_HOME"):
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real datasets folder (../shared/datasets); tests using it skip cleanly when absent."""
    if not (SHARED_DATASETS / "tiny-imagenet-200-train80.zip").exists():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
