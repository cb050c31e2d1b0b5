"""Fixtures for the training-engine tests (the helpers live in train_fixtures.py, a name no
other test folder uses, so imports never pick up another folder's conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_fixtures import write_tiny_imagenet


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny-train") / "tiny-imagenet-200.zip")
