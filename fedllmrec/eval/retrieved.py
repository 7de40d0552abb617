"""The realistic mode: rank the top-K items FAISS retrieves, not a list that holds the target.

The saved 1+19 lists always contain the held-out item; a deployed ranker only sees what
retrieval returns. Here each held-out (user, domain) gets the top ``k`` items of its
domain by inner product with the user's query, the mean all-MiniLM-L6-v2 embedding of
the user's observed history *in that domain* (the better query on Art-Office,
docs/benchmarks.md "Candidate retrieval recall"), never an item the user touched except
the held-out one (the full ranking's exclusion). The lists are exact (a flat index), so
they are the same on every run; they are saved once beside the prepared split and reused
by every model.

Metrics (:func:`evaluate_retrieved`): ``recall@k`` (the target is among the ``k``), then
HR / NDCG / MRR end to end (a target that was not retrieved is a miss, whatever the model
does) and ``within/HR@…`` over the rows whose target was retrieved (the model's own share
of the work). Only rows with a retrieved target are scored: a miss needs no model call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedllmrec.data.prepare import Prepared
from fedllmrec.eval.metrics import TiePolicy, rank_counts, ranking_metrics
from fedllmrec.io import atomic_path
from fedllmrec.models.base import Recommender
from fedllmrec.retrieval import ItemIndex
from fedllmrec.retrieval.history import exclusions, history_queries
from fedllmrec.semantics import embed_items

RETRIEVED_K = 20  # the realistic mode's list length, beside the saved 1+19 lists
MISSED = 1 << 30  # the "others scored above" of a target retrieval did not return


@dataclass(frozen=True)
class RetrievedLists:
    """The top-``k`` retrieved items of every held-out row of ``role``."""

    role: str
    users: np.ndarray  # (R,)
    domains: np.ndarray  # (R,)
    targets: np.ndarray  # (R,) the held-out item
    items: np.ndarray  # (R, k) int64, best first; -1 where the domain ran out of items
    scores: np.ndarray  # (R, k) float32, the retrieval scores; -inf where padded

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    @property
    def found(self) -> np.ndarray:
        """(R,) bool: the target is among the retrieved items."""
        return (self.items == self.targets[:, None]).any(axis=1)


def retrieved_lists(prepared: Prepared, role: str, k: int = RETRIEVED_K) -> RetrievedLists:
    """The saved retrieved lists of ``role`` (computed and saved on first use)."""
    vectors = embed_items(prepared.dataset)  # cached on disk by the encoder
    digest = hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()[:16]
    file = prepared.folder / "retrieved" / f"{role}-top{k}-{digest}.npz"
    if file.exists():
        with np.load(file) as saved:
            return RetrievedLists(role, *(saved[key] for key in _FIELDS))
    lists = _retrieve(prepared, vectors, role, k)
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp, open(tmp, "wb") as out:
        np.savez(out, **{key: getattr(lists, key) for key in _FIELDS})
    return lists


_FIELDS = ("users", "domains", "targets", "items", "scores")


def _retrieve(prepared: Prepared, vectors: np.ndarray, role: str, k: int) -> RetrievedLists:
    split = prepared.split
    ds = split.dataset
    rows = split.rows(role)
    users = ds.user[rows].astype(np.int64)
    domains = ds.domain[rows].astype(np.int64)
    targets = ds.item[rows].astype(np.int64)
    index = ItemIndex.build(vectors, domains=ds.item_domain.astype(np.int64))
    items = np.full((rows.shape[0], k), -1, dtype=np.int64)
    scores = np.full((rows.shape[0], k), -np.inf, dtype=np.float32)
    history = split.observed(role)
    for d in np.unique(domains).tolist():
        sel = np.flatnonzero(domains == d)
        queries, _ = history_queries(
            vectors, history, users[sel], item_domain=ds.item_domain, domain=d
        )  # a user with no history in the domain has a zero query: arbitrary items, no hit
        excluded = exclusions(split, users[sel], keep=targets[sel])
        scores[sel], items[sel] = index.search(queries, k, domain=d, exclude=excluded)
    return RetrievedLists(role, users, domains, targets, items, scores)


def evaluate_retrieved(
    model: Recommender,
    prepared: Prepared,
    *,
    role: str = "test",
    k: int = RETRIEVED_K,
    ks: Sequence[int] = (1, 5),
    ties: TiePolicy = "expected",
    batch_size: int = 256,
    only_users: np.ndarray | None = None,
) -> dict[str, Any]:
    """Rank each row's retrieved list with ``model``; see the module docstring.

    Returns
    -------
    dict
        ``{"mode", "role", "rows", "metrics", "domains"}`` as
        :func:`~fedllmrec.eval.ranking.evaluate_ranking`, the metrics holding
        ``recall@k``, HR@…, NDCG@…, MRR and ``within/HR@…``.
    """
    lists = retrieved_lists(prepared, role, k)
    keep = np.ones(lists.users.shape[0], dtype=bool)
    if only_users is not None:
        keep = np.isin(lists.users, only_users)
    users, domains, items = lists.users[keep], lists.domains[keep], lists.items[keep]
    found = lists.found[keep]
    greater = np.full(users.shape[0], MISSED, dtype=np.int64)
    tied = np.zeros_like(greater)
    history = prepared.split.observed(role)
    hit = np.flatnonzero(found)
    for lo in range(0, hit.shape[0], batch_size):
        batch = hit[lo : lo + batch_size]
        shown = items[batch]
        # The target first (column 0), then the other retrieved items in retrieval order;
        # padding (-1) is scored as the target and then masked out.
        target = lists.targets[keep][batch]
        others = np.stack([row[row != t] for row, t in zip(shown, target, strict=True)])
        ordered = np.concatenate([target[:, None], others], axis=1)
        padded = ordered < 0
        ordered = np.where(padded, target[:, None], ordered)
        scores = np.asarray(model.score(users[batch], ordered, history), dtype=np.float64)
        scores[padded] = -np.inf
        greater[batch], tied[batch] = rank_counts(scores, 0)
    names = prepared.dataset.domains
    result: dict[str, Any] = {
        "mode": f"retrieved-{k}",
        "role": role,
        "rows": int(users.shape[0]),
        "metrics": _metrics(greater, tied, found, k, ks, ties),
        "domains": {},
    }
    if len(names) > 1:
        for d, name in enumerate(names):
            mask = domains == d
            if mask.any():
                result["domains"][name] = _metrics(
                    greater[mask], tied[mask], found[mask], k, ks, ties
                )
    return result


def _metrics(
    greater: np.ndarray,
    tied: np.ndarray,
    found: np.ndarray,
    k: int,
    ks: Sequence[int],
    ties: TiePolicy,
) -> dict[str, float]:
    out = {f"recall@{k}": float(found.mean())}
    out.update(ranking_metrics(greater, tied, ks, ties=ties))
    # 0 when no target was retrieved (the end-to-end metrics are 0 then too).
    within = ranking_metrics(greater[found], tied[found], ks, ties=ties) if found.any() else {}
    out.update({f"within/HR@{c}": within.get(f"HR@{c}", 0.0) for c in ks})
    return out
