"""The ranking evaluation protocol (see docs/evaluation.md).

Two modes over the held-out interaction of each (user, domain):

``full``
    the positive against every item of its domain that occurs in the data,
    minus every other item the user interacted with in any split;
``sampled``
    the positive against the saved negatives (all of them by default: 99 unless
    the dataset was prepared with another ``n_negatives``; 19 for LLM ranking),
    which exclude every item the user ever touched. A dataset prepared with no
    negatives has only the full mode.

Ties are scored by their expectation under random tie-breaking
(:mod:`fedllmrec.eval.metrics`), so a constant scorer gets chance, not a
perfect score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.split import TRAIN
from fedllmrec.eval.metrics import TiePolicy, rank_counts, ranking_metrics
from fedllmrec.models.base import Recommender

Mode = Literal["full", "sampled"]


def cold_items(prepared: Prepared) -> np.ndarray:
    """Boolean (n_items,): items that never occur in a training interaction."""
    split = prepared.split
    ds = split.dataset
    cold = np.ones(ds.n_items, dtype=bool)
    cold[ds.item[split.role == TRAIN]] = False
    return cold


def _scored(
    prepared: Prepared,
    users: np.ndarray,
    positives: np.ndarray,
    cold_only: bool,
    only_users: np.ndarray | None,
) -> np.ndarray:
    """Boolean mask of the held-out rows (``users``, ``positives``) that are scored."""
    keep = np.ones(users.shape[0], dtype=bool)
    if cold_only:
        keep &= cold_items(prepared)[positives]
    if only_users is not None:
        keep &= np.isin(users, only_users)
    return keep


def _counts_sampled(
    model: Recommender,
    prepared: Prepared,
    role: str,
    n_negatives: int | None,
    batch_size: int,
    cold_only: bool,
    only_users: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cands = prepared.sampled(role, n_negatives)  # explains itself when there are too few
    users, items, domains = cands.user, cands.items, cands.domain
    keep = _scored(prepared, users, items[:, 0], cold_only, only_users)  # column 0: positive
    users, items, domains = users[keep], items[keep], domains[keep]
    history = prepared.split.observed(role)
    greater = np.empty(users.shape[0], dtype=np.int64)
    tied = np.empty_like(greater)
    for lo in range(0, users.shape[0], batch_size):
        hi = lo + batch_size
        scores = model.score(users[lo:hi], items[lo:hi], history)
        greater[lo:hi], tied[lo:hi] = rank_counts(np.asarray(scores, dtype=np.float64), 0)
    return greater, tied, domains


def _counts_full(
    model: Recommender,
    prepared: Prepared,
    role: str,
    batch_size: int,
    cold_only: bool,
    only_users: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    split = prepared.split
    ds = split.dataset
    rows = split.rows(role)
    rows = rows[_scored(prepared, ds.user[rows], ds.item[rows], cold_only, only_users)]
    users, targets, domains = ds.user[rows], ds.item[rows], ds.domain[rows]
    history = split.observed(role)
    touched = split.touched
    greater = np.empty(rows.shape[0], dtype=np.int64)
    tied = np.empty_like(greater)
    for d in range(len(ds.domains)):
        catalogue = split.active_items(d)  # (C,)
        idx = np.flatnonzero(domains == d)
        for lo in range(0, idx.shape[0], batch_size):
            batch = idx[lo : lo + batch_size]
            u, t = users[batch], targets[batch]
            items = np.broadcast_to(catalogue, (batch.shape[0], catalogue.shape[0]))
            scores = np.asarray(model.score(u, items, history), dtype=np.float64)  # (B, C)
            row, col = touched.grid_hits(u, catalogue)  # every touched item but the target
            other = catalogue[col] != t[row]
            scores[row[other], col[other]] = -np.inf
            positive = np.searchsorted(catalogue, t)
            greater[batch], tied[batch] = rank_counts(scores, positive)
    return greater, tied, domains


def evaluate_ranking(
    model: Recommender,
    prepared: Prepared,
    *,
    role: str = "test",
    mode: Mode = "sampled",
    n_negatives: int | None = None,
    ks: Sequence[int] = (10,),
    ties: TiePolicy = "expected",
    batch_size: int = 256,
    cold_only: bool = False,
    only_users: np.ndarray | None = None,
) -> dict[str, Any]:
    """Evaluate a fitted model on the held-out ``role`` interactions.

    With ``cold_only``, only the held-out interactions whose item never occurs in
    training are scored (the cold-start check); candidates are unchanged. With
    ``only_users`` (user ids), only those users' interactions are scored (a cheaper
    validation); their candidates are unchanged too. In the sampled mode
    ``n_negatives`` (default: every saved one) sets the list length.

    Raises
    ------
    FedLLMRecError
        In the sampled mode, when fewer than ``n_negatives`` negatives were saved, or none.

    Returns
    -------
    dict
        ``{"mode", "role", "rows", "metrics": {...}, "domains": {name: {...}}}``
        where metrics hold HR@k, NDCG@k and MRR (means over rows).
    """
    if mode == "sampled":
        n_negatives = prepared.sampled(role, n_negatives).n_negatives
        greater, tied, domains = _counts_sampled(
            model, prepared, role, n_negatives, batch_size, cold_only, only_users
        )
    elif mode == "full":
        greater, tied, domains = _counts_full(
            model, prepared, role, batch_size, cold_only, only_users
        )
    else:
        raise ValueError(f"mode must be 'full' or 'sampled', not {mode!r}")
    result: dict[str, Any] = {
        "mode": mode if mode == "full" else f"sampled-1+{n_negatives}",
        "role": role,
        "rows": int(greater.shape[0]),
        "cold_only": cold_only,
        "only_users": None if only_users is None else int(np.unique(only_users).shape[0]),
        "metrics": ranking_metrics(greater, tied, ks, ties=ties),
        "domains": {},
    }
    names = prepared.dataset.domains
    if len(names) > 1:
        for d, name in enumerate(names):
            mask = domains == d
            if mask.any():
                result["domains"][name] = ranking_metrics(greater[mask], tied[mask], ks, ties=ties)
    return result
