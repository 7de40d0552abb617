"""A content-addressed, on-disk cache of text embeddings.

One file per encoder identity (model weights, dtype, max length), mapping a
hash of each text to its vector. Changing one item's text re-embeds only that
item; re-running on unchanged texts reads the file and never loads the model.
The file carries a digest of its contents: a corrupted or truncated file is
detected, reported and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedllmrec.io import atomic_path

log = logging.getLogger(__name__)

KEY_BYTES = 16


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """Content hashes of texts, as a (n,) array of 16-byte strings."""
    return np.asarray(
        [hashlib.blake2b(t.encode("utf-8"), digest_size=KEY_BYTES).digest() for t in texts],
        dtype=f"S{KEY_BYTES}",
    )


def _digest(keys: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(keys).tobytes())
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """Sorted text keys and their vectors, stored in one ``.npz`` file."""

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self.keys = np.empty(0, dtype=f"S{KEY_BYTES}")
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.rebuilt = False
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
                digest = str(data["digest"])
            if (
                vectors.shape != (keys.shape[0], self.dim)
                or digest != _digest(keys, vectors)
                or (keys.shape[0] > 1 and not (keys[1:] > keys[:-1]).all())
            ):
                raise ValueError("contents do not match their digest")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
            log.warning("embedding cache %s is corrupt (%s); rebuilding it", self.path, err)
            self.path.unlink(missing_ok=True)
            self.rebuilt = True
            return
        self.keys, self.vectors = keys, vectors

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached vectors of ``keys``: (found mask (n,), vectors (n, dim), zero where missing)."""
        out = np.zeros((keys.shape[0], self.dim), dtype=np.float32)
        if len(self) == 0:
            return np.zeros(keys.shape[0], dtype=bool), out
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self) - 1)
        found = self.keys[pos] == keys
        out[found] = self.vectors[pos[found]]
        return found, out

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Insert new entries (existing keys keep their vectors) and write the file atomically."""
        all_keys = np.concatenate([self.keys, keys])
        all_vectors = np.concatenate([self.vectors, vectors.astype(np.float32)])
        uniq, first = np.unique(all_keys, return_index=True)
        self.keys, self.vectors = uniq, all_vectors[first]
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh, keys=self.keys, vectors=self.vectors, digest=_digest(self.keys, self.vectors)
            )
