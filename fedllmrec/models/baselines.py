"""Non-personalised and neighbourhood baselines: the floor every model must beat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

import numpy as np
import scipy.sparse as sp

from fedllmrec.data.split import TRAIN, Split, UserItemSet


@dataclass
class PopularityConfig:
    """Popularity has no knobs; the config exists for a uniform recipe format."""


@dataclass
class Popularity:
    """Scores an item by how often it was interacted with in training."""

    config: PopularityConfig = field(default_factory=PopularityConfig)
    counts: np.ndarray | None = None

    def fit(self, split: Split) -> Self:
        items = split.dataset.item[split.role == TRAIN]
        self.counts = np.bincount(items, minlength=split.dataset.n_items).astype(np.float32)
        return self

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("call fit() before score()")
        return self.counts[items]


@dataclass
class ItemKNNConfig:
    """Item-based k-nearest-neighbours (Deshpande & Karypis 2004, as in RecBole).

    Parameters
    ----------
    neighbours : int
        Similar items kept per item.
    shrink : float
        Added to the cosine denominator; damps similarities from few co-occurrences.
    """

    neighbours: int = 100
    shrink: float = 0.0


@dataclass
class ItemKNN:
    """Score = sum of cosine similarities between the item and the user's history items."""

    config: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    similarity: sp.csr_matrix | None = None

    def fit(self, split: Split) -> Self:
        ds = split.dataset
        train = split.role == TRAIN
        n_users, n_items = ds.n_users, ds.n_items
        pairs = UserItemSet(ds.user[train], ds.item[train], n_items).keys
        matrix = sp.csr_matrix(
            (np.ones(pairs.shape[0], dtype=np.float32), (pairs // n_items, pairs % n_items)),
            shape=(n_users, n_items),
        )
        co = (matrix.T @ matrix).tocsr()  # (I, I) co-occurrence counts
        co.setdiag(0)
        co.eliminate_zeros()
        norms = np.sqrt(np.asarray(matrix.sum(axis=0)).ravel())  # (I,)
        co = co.tocoo()
        values = co.data / (norms[co.row] * norms[co.col] + self.config.shrink + 1e-12)
        sim = sp.csr_matrix((values.astype(np.float32), (co.row, co.col)), shape=(n_items, n_items))
        self.similarity = _keep_top_k_per_row(sim, self.config.neighbours)
        return self

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        if self.similarity is None:
            raise RuntimeError("call fit() before score()")
        n_items = self.similarity.shape[0]
        uniq, inverse = np.unique(users, return_inverse=True)
        rows, cols = [], []
        for r, u in enumerate(uniq.tolist()):
            mine = history.items_of(u)
            rows.append(np.full(mine.shape[0], r))
            cols.append(mine)
        profile = sp.csr_matrix(
            (np.ones(sum(c.shape[0] for c in cols), np.float32),
             (np.concatenate(rows), np.concatenate(cols))),
            shape=(uniq.shape[0], n_items),
        )  # fmt: skip
        # Row i of S holds item i's neighbours, so the score of candidate c is
        # the sum over history items h of S[h, c]: profile @ S.
        dense = np.asarray((profile @ self.similarity).todense())  # (U, I)
        return dense[inverse[:, None], items]


def _keep_top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row."""
    matrix = matrix.tocsr()
    indptr, data = matrix.indptr, matrix.data
    keep = np.zeros(data.shape[0], dtype=bool)
    for row in range(matrix.shape[0]):
        lo, hi = indptr[row], indptr[row + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            keep[lo + np.argpartition(-data[lo:hi], k - 1)[:k]] = True
    row_of = np.repeat(np.arange(matrix.shape[0]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (row_of[keep], matrix.indices[keep])), shape=matrix.shape)
