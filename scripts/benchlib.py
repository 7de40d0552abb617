"""What every benchmark records beside its numbers: the machine it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def machine() -> str:
    """CPU model, usable cores and Python version, e.g. ``AMD EPYC, 2 cores, Python 3.11.7``."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, Python {platform.python_version()}"
