"""Process settings of the entry points: glibc keeps freed tensor memory for reuse."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from fedllmrec.runtime import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_tensor_memory_is_reused_without_page_faults() -> None:
    assert keep_freed_memory()
    for _ in range(10):  # the heap grows first
        torch.ones(4 << 20)  # 16 MiB, freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(4 << 20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Unmapped on free, each 16 MiB block would fault in 4,096 fresh pages again.
    assert faults < 1000
