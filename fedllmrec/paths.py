"""Where fedllmrec finds data and keeps its caches.

Data is looked up in this order: an explicit ``--data-dir``, then the
``FEDLLMREC_DATA`` environment variable, then the cache (``FEDLLMREC_CACHE``,
default ``~/.cache/fedllmrec``) under ``data/``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FEDLLMREC_DATA"
CACHE_ENV = "FEDLLMREC_CACHE"


def cache_dir() -> Path:
    """Root of every cache this library writes (prepared splits, downloads, embeddings)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedllmrec"


def data_search_path(data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for raw datasets, highest priority first."""
    paths: list[Path] = []
    if data_dir is not None:
        paths.append(Path(data_dir).expanduser())
    env = os.environ.get(DATA_ENV)
    if env:
        paths.append(Path(env).expanduser())
    paths.append(cache_dir() / "data")
    return paths
