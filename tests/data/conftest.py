"""Fixtures for the data-layer tests: official-format datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_formats import write_cifar_targz, write_mnist, write_tiny_zip


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A CNNBENCH_HOME of this test alone (for tests that count builds or fill the cache)."""
    home = tmp_path / "home"
    monkeypatch.setenv("CNNBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_zip(tmp_path_factory) -> Path:
    """The default Tiny ImageNet fixture as tiny-imagenet-200.zip (shared, read-only by convention)."""
    return write_tiny_zip(tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200.zip")


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist-src") / "mnist")


@pytest.fixture(scope="session")
def cifar_targz(tmp_path_factory) -> Path:
    return write_cifar_targz(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz")


def pytest_configure(config):
    # torchvision 0.29 marks its image codecs deprecated (in favour of TorchCodec) and warns on
    # every call; the data layer uses decode_jpeg on purpose, so keep that one message quiet.
    config.addinivalue_line("filterwarnings", "ignore:The image decoding and encoding capabilities:DeprecationWarning")
