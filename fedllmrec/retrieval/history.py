"""Candidate generation from text semantics, and its recall against the held-out item.

A user's query vector is the mean of the (normalised) embeddings of the items
they interacted with, optionally from one domain only (so a query built from
domain A can retrieve in domain B); later the sequential model's user state
replaces it. Retrieved candidates never include an item the user touched,
except the held-out target itself (the same exclusion as full ranking).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.split import TRAIN, Split, UserItemSet
from fedllmrec.retrieval.index import ItemIndex


def history_queries(
    item_vectors: np.ndarray,
    history: UserItemSet,
    users: np.ndarray,
    *,
    item_domain: np.ndarray | None = None,
    domain: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean history embedding per user, L2-normalised.

    Returns
    -------
    queries : (len(users), dim) float32
    has_history : (len(users),) bool
        False where the user has no history item (in ``domain``, if given); the
        query is then all zeros.
    """
    queries = np.zeros((users.shape[0], item_vectors.shape[1]), dtype=np.float32)
    has = np.zeros(users.shape[0], dtype=bool)
    for r, user in enumerate(users.tolist()):
        items = history.items_of(user)
        if domain is not None and item_domain is not None:
            items = items[item_domain[items] == domain]
        if items.size:
            mean = item_vectors[items].mean(axis=0)
            queries[r] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            has[r] = True
    return queries, has


def exclusions(split: Split, users: np.ndarray, keep: np.ndarray | None = None) -> list[np.ndarray]:
    """Items each user touched in any split, minus ``keep[r]`` (the target) when given."""
    touched = split.touched
    out = []
    for r, user in enumerate(users.tolist()):
        items = touched.items_of(user)
        if keep is not None:
            items = items[items != keep[r]]
        out.append(items)
    return out


def candidates_for_users(
    index: ItemIndex,
    split: Split,
    users: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    domain: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items per user for any query vectors, never an item the user touched.

    ``queries`` may be mean history embeddings (:func:`history_queries`) or any
    user state in the item space, such as a sequential model's output.

    Returns
    -------
    scores : (len(users), k) float32; ids : (len(users), k) int64, -1 where padded.
    """
    return index.search(queries, k, domain=domain, exclude=exclusions(split, users))


def popularity_top(split: Split, domain: int, k: int, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """Top-``k`` items of ``domain`` by training popularity, per user, minus exclusions."""
    ds = split.dataset
    counts = np.bincount(ds.item[split.role == TRAIN], minlength=ds.n_items)
    catalogue = split.active_items(domain)
    ranked = catalogue[np.argsort(-counts[catalogue], kind="stable")]
    depth = k + max((e.shape[0] for e in exclude), default=0)
    head = ranked[:depth]
    out = np.full((len(exclude), k), -1, dtype=np.int64)
    for r, excluded in enumerate(exclude):
        kept = head[~np.isin(head, excluded)][:k]
        out[r, : kept.shape[0]] = kept
    return out


def retrieval_recall(
    index: ItemIndex,
    item_vectors: np.ndarray,
    prepared: Prepared,
    *,
    role: str = "test",
    ks: Sequence[int] = (10, 50, 100),
    query_domain: int | None = None,
    target_domain: int | None = None,
) -> dict[str, Any]:
    """Recall@K of text retrieval and of popularity for the held-out ``role`` items.

    Parameters
    ----------
    query_domain : int, optional
        Build queries only from history items of this domain (cross-domain retrieval).
    target_domain : int, optional
        Evaluate only held-out items of this domain (default: every domain, each
        retrieved within its own domain).
    """
    split = prepared.split
    ds = split.dataset
    rows = split.rows(role)
    if target_domain is not None:
        rows = rows[ds.domain[rows] == target_domain]
    users, targets, domains = ds.user[rows], ds.item[rows], ds.domain[rows]
    queries, has = history_queries(
        item_vectors, split.observed(role), users, item_domain=ds.item_domain, domain=query_domain
    )
    k_max = max(ks)
    hits_text = {k: np.zeros(rows.shape[0], dtype=bool) for k in ks}
    hits_pop = {k: np.zeros(rows.shape[0], dtype=bool) for k in ks}
    for d in np.unique(domains).tolist():
        sel = np.flatnonzero((domains == d) & has)
        excluded = exclusions(split, users[sel], keep=targets[sel])
        _, ids = index.search(queries[sel], k_max, domain=d, exclude=excluded)
        pop = popularity_top(split, d, k_max, excluded)
        for k in ks:
            hits_text[k][sel] = (ids[:, :k] == targets[sel, None]).any(axis=1)
            hits_pop[k][sel] = (pop[:, :k] == targets[sel, None]).any(axis=1)
    evaluated = int(has.sum())
    return {
        "role": role,
        "rows": evaluated,
        "rows_without_history": int((~has).sum()),
        "text": {f"Recall@{k}": float(hits_text[k][has].mean()) for k in ks},
        "popularity": {f"Recall@{k}": float(hits_pop[k][has].mean()) for k in ks},
    }
