"""Fixtures for report tests (synthetic run folders written by report_fixtures.py)."""

from __future__ import annotations

import pytest

from report_fixtures import write_run


@pytest.fixture
def runs(tmp_path):
    """Four runs: resnet18 with two seeds (one recipe), vgg16, and an unevaluated squeezenet."""
    return [
        write_run(tmp_path / "resnet18-s0", "resnet18-s0", "resnet18", seed=0, quality=0.6),
        write_run(tmp_path / "resnet18-s1", "resnet18-s1", "resnet18", seed=1, quality=0.55),
        write_run(tmp_path / "vgg16", "vgg16", "vgg16", quality=0.4, params=138_000_000, mflops=1250.0),
        write_run(tmp_path / "squeezenet", "squeezenet", "squeezenet1_1", quality=0.3, params=1_200_000,
                  mflops=60.0, evaluate=False),
    ]
