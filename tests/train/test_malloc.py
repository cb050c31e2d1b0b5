"""glibc's malloc told to keep freed memory while a run trains on the CPU (native.keep_freed_memory):
a freed large block is reused without faulting its pages in again, and the defaults come back after."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from cnnbench.train import native
from cnnbench.train.native import freed_memory_kept, keep_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# A fresh process (glibc's state untouched by this one's history) allocates, writes and frees a training
# step's worth of activation-sized tensors (1-48 MB) a few times and prints the median of seven rounds'
# minor page faults after three warm-up rounds: with keep_freed_memory on, or switched on and off again
# (glibc's documented defaults, fixed, as training leaves them: every block of more than 128 KB a fresh
# mapping, faulted in and handed back every round). glibc's untouched dynamic thresholds fall in between,
# and vary from process to process (0 or ~12,000 faults a round here for the same probe), so they are
# not what is compared.
PROBE = """
import json, resource, sys, torch
from cnnbench.train.native import keep_freed_memory
said = keep_freed_memory(True)
if sys.argv[1] == "off":  # glibc's documented defaults, fixed (as after training)
    said = keep_freed_memory(False)
SIZES_MB = [16, 4, 48, 9, 2, 16, 1, 8, 4, 4]
def step():
    kept = [torch.ones(mb << 18) for mb in SIZES_MB]  # torch's CPU allocator is malloc: written...
    del kept                                          # ... then freed
for _ in range(3):
    step()
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"said": said, "faults": sorted(faults)[3], "pages": (sum(SIZES_MB) << 20) // resource.getpagesize()}))
"""


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_faults_where_glibcs_defaults_fault_every_page_in_again():
    off, kept = probe("off"), probe("keep")
    assert kept["said"] == "on" and off["said"] == "off"
    assert off["faults"] > 0.9 * off["pages"]  # every block mapped afresh every round
    assert kept["faults"] < 0.02 * kept["pages"]  # the heap kept them: (almost) none


@pytest.fixture
def defaults_after():
    yield
    keep_freed_memory(False)


def test_off_undoes_only_what_on_did_and_a_block_restores_what_it_found(defaults_after):
    assert keep_freed_memory(False) == "off" and not native._keeping  # never on: nothing to undo
    with freed_memory_kept() as said:
        assert said == "on" and native._keeping
    assert not native._keeping
    assert keep_freed_memory(True) == "on"  # as training has it
    with freed_memory_kept():
        pass
    assert native._keeping  # still on: the block did not turn off what it found on
