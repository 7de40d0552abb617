"""Content digests of raw data files, remembered across runs.

A prepared split is keyed by what its raw files hold, not by their names, so an
edited file is prepared again. Hashing ~100 MB takes a fraction of a second on
every run; the digest is therefore remembered, keyed by the file's absolute
path, size, modification time and inode, and recomputed when any of them changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from fedllmrec.io import atomic_write_json
from fedllmrec.paths import cache_dir

# A file modified this recently may be modified again within the same timestamp tick,
# keeping its size and mtime: its digest is computed but not remembered ("racy" files).
RACY_SECONDS = 2.0


def _signature(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _memo_path(path: Path) -> Path:
    # One small file per raw file, so concurrent runs never overwrite each other's entries.
    name = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return cache_dir() / "digests" / f"{name}.json"


def file_sha256(path: str | Path, *, remember: bool = True) -> str:
    """Hex SHA-256 of a file's bytes, streamed; reused while the file is unchanged.

    Parameters
    ----------
    path : str or Path
        The file.
    remember : bool
        Look the digest up in, and store it into, ``<cache>/digests``.
    """
    path = Path(path).resolve()
    before = path.stat()
    memo = _memo_path(path)
    if remember:
        try:
            entry: dict[str, Any] = json.loads(memo.read_text())
        except (OSError, ValueError):
            entry = {}
        if entry.get("path") == str(path) and entry.get("stat") == _signature(before):
            return str(entry["sha256"])
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    after = path.stat()
    settled = time.time_ns() - after.st_mtime_ns > RACY_SECONDS * 1e9
    if remember and settled and _signature(after) == _signature(before):
        # A read-only cache only costs the hashing next time.
        with contextlib.suppress(OSError):
            atomic_write_json(
                memo, {"path": str(path), "stat": _signature(after), "sha256": digest}
            )
    return digest
