"""Shared fixtures: real-data location, an isolated CNNBENCH_HOME per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("CNNBENCH_DATA", REPO.parent / "shared" / "datasets")).resolve()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real datasets folder (../shared/datasets); tests using it skip cleanly when absent."""
    if not (SHARED_DATASETS / "tiny-imagenet-200-train80.zip").exists():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Caches go to a per-session temporary CNNBENCH_HOME unless a test sets its own."""
    home = os.environ.get("CNNBENCH_TEST_HOME")
    if home is None:
        home = str(tmp_path_factory.getbasetemp() / "cnnbench-home")
    monkeypatch.setenv("CNNBENCH_HOME", home)
