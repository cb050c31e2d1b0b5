"""Fixtures for evaluation tests (helpers in eval_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_fixtures import write_checkpointed_run, write_tiny_folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny-eval"))


@pytest.fixture
def run(tmp_path, tiny_data) -> Path:
    return write_checkpointed_run(tmp_path / "cnn-s0", tiny_data)
