"""Model tests run single-threaded.

Measured on the shared 2-core machine with other jobs running (load ~13): DenseNet-121 forward +
backward at 64 px took 16.5 s wall with torch's default 2 intra-op threads and 0.84 s with 1 —
OpenMP threads spin-waiting for a core that another process holds. One thread keeps this
folder's time predictable on busy CI runners; the setting is restored after each test.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
