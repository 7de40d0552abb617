"""Inner-product nearest-neighbour search over item vectors, per domain, with exclusions.

Design
------
Every domain gets its own faiss sub-index of the configured kind (exact, IVF or
HNSW), created by the first :meth:`ItemIndex.add` that brings the domain in
(:meth:`ItemIndex.build` is that first add). A domain-restricted search then
touches only that domain's vectors, which is exact and as fast as the domain
is small for every kind alike. faiss ``IDSelector`` filters were rejected:
IVF and HNSW apply them after probing lists or walking the graph, so a small
domain yields fewer than ``k`` hits, and a flat scan still pays for the whole
catalogue. An unrestricted search queries each sub-index and merges the
per-domain top-``k`` lists, which loses nothing since the global top-``k`` is
contained in their union.

Exclusions (say a user's history) differ per query, which a batched faiss call
cannot express, so each sub-index is asked for ``k + m`` neighbours, ``m`` the
largest number of excluded items of that domain for any query, and the excluded
ones are dropped. At most ``m`` of the fetched items can be excluded, so ``k``
eligible items remain whenever the sub-index returns its full list.

Vectors are expected L2-normalised by the caller (inner product = cosine); they
are searched as given. Item ids are arbitrary non-negative ints, unique across
the whole index; faiss sees only each sub-index's positions, mapped back here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from fedllmrec.errors import FedLLMRecError
from fedllmrec.io import atomic_dir, atomic_path, atomic_write_json

Kind = Literal["exact", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw")

_FORMAT = 1
_CONFIG_FILE = "config.json"
_ITEMS_FILE = "items.npz"
# faiss warns below 39 training points per centroid: k-means is unstable there.
_MIN_POINTS_PER_LIST = 39


class RetrievalError(FedLLMRecError, ValueError):
    """A bad argument to :class:`ItemIndex`: shape, dtype, duplicate ids, settings."""


class IndexFileError(FedLLMRecError):
    """A saved :class:`ItemIndex` is missing or unreadable; names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class IndexConfig:
    """How an :class:`ItemIndex` is built and searched.

    Parameters
    ----------
    kind : {"exact", "ivf", "hnsw"}
        Flat scan, inverted lists, or HNSW graph; all use inner product.
    nlist : int, optional
        IVF lists per domain; default ``4 * sqrt(n)``. Capped so each list gets
        at least 39 training points.
    nprobe : int
        IVF lists scanned per query.
    hnsw_m, ef_search, ef_construction : int
        HNSW links per node and beam widths at search and build time.
    train_sample : int, optional
        Train IVF on this many vectors drawn with ``seed``; default all.
    seed : int
        Seed of the IVF training sample and k-means.
    """

    kind: Kind = "exact"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 200
    train_sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RetrievalError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        positive = {
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "ef_construction": self.ef_construction,
        }
        if self.nlist is not None:
            positive["nlist"] = self.nlist
        if self.train_sample is not None:
            positive["train_sample"] = self.train_sample
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise RetrievalError(f"IndexConfig.{name} must be a positive int, got {value!r}")


_threads_configured = False


def _configure_threads() -> None:
    # faiss's OpenMP default may count the host's cores rather than the ones this
    # process may use, oversubscribing them; an explicit OMP_NUM_THREADS wins.
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    if os.environ.get("OMP_NUM_THREADS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    faiss.omp_set_num_threads(max(1, min(faiss.omp_get_max_threads(), cores or 1)))


def _as_int_array(values: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise RetrievalError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise RetrievalError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and int(arr.min()) < 0:
        raise RetrievalError(f"{name} must be non-negative, got {int(arr.min())}")
    return arr


class ItemIndex:
    """Inner-product top-``k`` search over item vectors, one sub-index per domain.

    Parameters
    ----------
    dim : int
        Vector dimension.
    config : IndexConfig, optional
        Index kind and parameters; default exact search.
    """

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise RetrievalError(f"dim must be a positive int, got {dim!r}")
        _configure_threads()
        self._dim = dim
        self._config = dataclasses.replace(config) if config is not None else IndexConfig()
        self._ids = np.empty(0, dtype=np.int64)
        self._domains = np.empty(0, dtype=np.int64)
        self._local = np.empty(0, dtype=np.int64)  # position inside its domain's sub-index
        self._subs: dict[int, Any] = {}
        self._sub_ids: dict[int, np.ndarray] = {}  # item id of each sub-index position
        self._sort = np.empty(0, dtype=np.int64)  # argsort of _ids, for id lookups

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        item_ids: np.ndarray | None = None,
        domains: np.ndarray | None = None,
        config: IndexConfig | None = None,
    ) -> ItemIndex:
        """Index ``vectors`` (n, d); ids default to ``0..n-1``, domains to all 0."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise RetrievalError(f"vectors must have shape (n, dim), got {vectors.shape}")
        index = cls(int(vectors.shape[1]), config)
        if item_ids is None:
            item_ids = np.arange(vectors.shape[0], dtype=np.int64)
        index.add(vectors, item_ids, domains)
        return index

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def config(self) -> IndexConfig:
        """A copy of the index configuration."""
        return dataclasses.replace(self._config)

    @property
    def item_ids(self) -> np.ndarray:
        """Item ids in insertion order (read-only view)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def item_domains(self) -> np.ndarray:
        """Domain of each item, aligned with :attr:`item_ids` (read-only view)."""
        view = self._domains.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"ItemIndex(kind={self._config.kind!r}, items={len(self)}, dim={self._dim}, "
            f"domains={sorted(self._subs)})"
        )

    def _vectors(self, vectors: Any, name: str) -> np.ndarray:
        arr = np.asarray(vectors)
        if arr.ndim != 2 or arr.shape[1] != self._dim:
            raise RetrievalError(f"{name} must have shape (n, {self._dim}), got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise RetrievalError(f"{name} contain NaN or infinite values")
        return arr

    def _new_sub(self, vectors: np.ndarray) -> Any:
        cfg = self._config
        if cfg.kind == "exact":
            return faiss.IndexFlatIP(self._dim)
        if cfg.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self._dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = cfg.ef_construction
            hnsw.hnsw.efSearch = cfg.ef_search
            return hnsw
        n = vectors.shape[0]
        sample = vectors
        if cfg.train_sample is not None and cfg.train_sample < n:
            rng = np.random.default_rng(cfg.seed)
            sample = vectors[np.sort(rng.choice(n, cfg.train_sample, replace=False))]
        nlist = cfg.nlist if cfg.nlist is not None else round(4 * math.sqrt(n))
        nlist = max(1, min(nlist, sample.shape[0] // _MIN_POINTS_PER_LIST))
        quantizer = faiss.IndexFlatIP(self._dim)
        ivf = faiss.IndexIVFFlat(quantizer, self._dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = cfg.seed
        # Centroids on the unit sphere suit normalised vectors searched by inner product.
        ivf.cp.spherical = True
        # nlist is capped above; what remains is a tiny domain, where faiss's warning is noise.
        ivf.cp.min_points_per_centroid = 1
        ivf.train(sample)
        ivf.nprobe = min(cfg.nprobe, nlist)
        return ivf

    def add(
        self, vectors: np.ndarray, item_ids: np.ndarray, domains: np.ndarray | None = None
    ) -> None:
        """Add items; ids must be new. A domain's IVF lists are trained on its first add."""
        vectors = self._vectors(vectors, "vectors")
        n = vectors.shape[0]
        ids = _as_int_array(item_ids, "item_ids", n)
        doms = (
            np.zeros(n, dtype=np.int64) if domains is None else _as_int_array(domains, "domains", n)
        )
        ordered = np.sort(ids)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeated.size:
            raise RetrievalError(f"item_ids contain duplicates, e.g. {int(repeated[0])}")
        present = self._positions(ids) >= 0
        if present.any():
            raise RetrievalError(f"item id {int(ids[present][0])} is already in the index")
        local = np.empty(n, dtype=np.int64)
        for domain in np.unique(doms).tolist():
            rows = np.flatnonzero(doms == domain)
            # One domain (the common case) indexes the caller's array without a copy.
            part = vectors if rows.shape[0] == n else np.ascontiguousarray(vectors[rows])
            if domain not in self._subs:
                self._subs[domain] = self._new_sub(part)
                self._sub_ids[domain] = np.empty(0, dtype=np.int64)
            sub = self._subs[domain]
            local[rows] = sub.ntotal + np.arange(rows.shape[0])
            sub.add(part)
            self._sub_ids[domain] = np.concatenate([self._sub_ids[domain], ids[rows]])
        self._ids = np.concatenate([self._ids, ids])
        self._domains = np.concatenate([self._domains, doms])
        self._local = np.concatenate([self._local, local])
        self._sort = np.argsort(self._ids, kind="stable")

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Insertion position of each id, -1 where it is not indexed."""
        if self._ids.shape[0] == 0 or ids.shape[0] == 0:
            return np.full(ids.shape[0], -1, dtype=np.int64)
        sorted_ids = self._ids[self._sort]
        at = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        return np.where(sorted_ids[at] == ids, self._sort[at], -1)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change IVF ``nprobe`` or HNSW ``ef_search`` without rebuilding."""
        self._config = dataclasses.replace(
            self._config,
            nprobe=self._config.nprobe if nprobe is None else nprobe,
            ef_search=self._config.ef_search if ef_search is None else ef_search,
        )
        for sub in self._subs.values():
            self._apply_search_params(sub)

    def _apply_search_params(self, sub: Any) -> None:
        if self._config.kind == "ivf":
            sub.nprobe = min(self._config.nprobe, sub.nlist)
        elif self._config.kind == "hnsw":
            sub.hnsw.efSearch = self._config.ef_search

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        domain: int | None = None,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each query.

        Parameters
        ----------
        queries : (q, dim) array
        k : int
        domain : int, optional
            Return only items of this domain (none if the domain has no items).
        exclude : sequence of q int arrays, optional
            ``exclude[r]`` are item ids never returned for query ``r``.

        Returns
        -------
        scores : (q, k) float32
            Descending per row; ``-inf`` where fewer than ``k`` items are eligible.
        ids : (q, k) int64
            Item ids; ``-1`` in the padded slots.
        """
        queries = self._vectors(queries, "queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise RetrievalError(f"k must be a positive int, got {k!r}")
        k = int(k)
        q = queries.shape[0]
        excluded = self._exclusion_table(exclude, q)
        wanted = sorted(self._subs) if domain is None else [int(domain)]
        parts = [self._search_sub(d, queries, k, excluded) for d in wanted if d in self._subs]
        if not parts:
            return (
                np.full((q, k), -np.inf, dtype=np.float32),
                np.full((q, k), -1, dtype=np.int64),
            )
        if len(parts) == 1:
            return parts[0]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def _exclusion_table(
        self, exclude: Sequence[np.ndarray] | None, q: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(query row, insertion position) of every excluded item that is indexed."""
        if exclude is None:
            return None
        if len(exclude) != q:
            raise RetrievalError(f"exclude must hold one array per query ({q}), got {len(exclude)}")
        lists = [np.asarray(e).reshape(-1) for e in exclude]
        for r, e in enumerate(lists):
            if e.size and not np.issubdtype(e.dtype, np.integer):
                raise RetrievalError(f"exclude[{r}] must be integer item ids, got {e.dtype}")
        rows = np.repeat(np.arange(q, dtype=np.int64), [e.shape[0] for e in lists])
        ids = np.concatenate([e.astype(np.int64, copy=False) for e in lists]) if lists else rows
        pos = self._positions(ids)
        keep = pos >= 0
        return rows[keep], pos[keep]

    def _search_sub(
        self,
        domain: int,
        queries: np.ndarray,
        k: int,
        excluded: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        sub = self._subs[domain]
        size = int(sub.ntotal)
        q = queries.shape[0]
        keys = np.empty(0, dtype=np.int64)
        extra = 0
        if excluded is not None:
            rows, pos = excluded
            mine = self._domains[pos] == domain
            rows, local = rows[mine], self._local[pos[mine]]
            # Row-major keys make one vectorised membership test for all queries.
            keys = np.unique(rows * size + local)
            if keys.size:
                extra = int(np.bincount(keys // size, minlength=q).max())
        fetch = min(k + extra, size)
        scores, labels = sub.search(queries, fetch)
        valid = labels >= 0
        if keys.size:
            found = np.arange(q, dtype=np.int64)[:, None] * size + labels
            valid &= ~np.isin(found, keys)
        # Stable sort on "not valid" moves the kept items to the front in rank order.
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        labels = np.take_along_axis(labels, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        valid = np.take_along_axis(valid, order, axis=1)
        out_ids = np.full((q, k), -1, dtype=np.int64)
        out_scores = np.full((q, k), -np.inf, dtype=np.float32)
        width = labels.shape[1]
        out_ids[:, :width] = np.where(valid, self._sub_ids[domain][np.maximum(labels, 0)], -1)
        out_scores[:, :width] = np.where(valid, scores, -np.inf)
        return out_scores, out_ids

    def save(self, path: str | Path) -> None:
        """Write the index as a folder: config JSON, ids/domains npz, one faiss file per domain.

        The folder is replaced as a whole, so a reader never sees a mix of two saves.
        """
        path = Path(path)
        with atomic_dir(path) as folder:
            atomic_write_json(
                folder / _CONFIG_FILE,
                {
                    "format": _FORMAT,
                    "dim": self._dim,
                    "items": len(self),
                    "domains": sorted(self._subs),
                    "config": dataclasses.asdict(self._config),
                },
            )
            with atomic_path(folder / _ITEMS_FILE) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, ids=self._ids, domains=self._domains)
            for domain, sub in self._subs.items():
                with atomic_path(folder / _sub_file(domain)) as tmp:
                    faiss.write_index(sub, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        """Read an index written by :meth:`save`; raises :class:`IndexFileError` if unreadable."""
        path = Path(path)
        if not path.is_dir():
            raise IndexFileError(path, "no saved ItemIndex folder here")
        meta = _read_config(path / _CONFIG_FILE)
        ids, domains = _read_items(path / _ITEMS_FILE, int(meta["items"]))
        index = cls(int(meta["dim"]), meta["cfg"])
        index._ids, index._domains = ids, domains
        index._local = np.empty(ids.shape[0], dtype=np.int64)
        index._sort = np.argsort(ids, kind="stable")
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise IndexFileError(path / _ITEMS_FILE, "duplicate item ids")
        if sorted(np.unique(domains).tolist()) != meta["domains"]:
            raise IndexFileError(path / _ITEMS_FILE, "domains do not match config.json")
        for domain in meta["domains"]:
            rows = np.flatnonzero(domains == domain)
            file = path / _sub_file(domain)
            sub = _read_faiss(file)
            if int(sub.d) != index._dim or int(sub.ntotal) != rows.shape[0]:
                raise IndexFileError(
                    file,
                    f"holds {sub.ntotal} vectors of dim {sub.d}, "
                    f"expected {rows.shape[0]} of dim {index._dim}",
                )
            index._apply_search_params(sub)
            index._subs[domain] = sub
            index._sub_ids[domain] = ids[rows]
            index._local[rows] = np.arange(rows.shape[0])
        return index


def _sub_file(domain: int) -> str:
    return f"domain-{domain}.faiss"


def _read_config(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise IndexFileError(file, "missing; not a saved ItemIndex")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        if raw.get("format") != _FORMAT:
            raise IndexFileError(file, f"unsupported format {raw.get('format')!r}")
        cfg = IndexConfig(**raw["config"])
        domains = [int(d) for d in raw["domains"]]
        return {"dim": int(raw["dim"]), "items": int(raw["items"]), "domains": domains, "cfg": cfg}
    except IndexFileError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
        raise IndexFileError(file, f"unreadable index config: {exc}") from exc


def _read_items(file: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    if not file.is_file():
        raise IndexFileError(file, "missing; not a saved ItemIndex")
    try:
        with np.load(file, allow_pickle=False) as data:
            ids = np.asarray(data["ids"], dtype=np.int64)
            domains = np.asarray(data["domains"], dtype=np.int64)
    except Exception as exc:  # zip, pickle and key errors alike mean a damaged file
        raise IndexFileError(file, f"unreadable item arrays: {exc}") from exc
    if ids.shape != (n,) or domains.shape != (n,):
        raise IndexFileError(
            file, f"expected {n} ids and domains, got shapes {ids.shape} and {domains.shape}"
        )
    return ids, domains


def _read_faiss(file: Path) -> Any:
    if not file.is_file():
        raise IndexFileError(file, "missing; not a saved ItemIndex")
    try:
        return faiss.read_index(str(file))
    except RuntimeError as exc:
        raise IndexFileError(file, f"unreadable faiss index: {exc}") from exc
