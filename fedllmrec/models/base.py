"""The interface every recommender implements (LensKit style: ``fit`` then score)."""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import numpy as np

from fedllmrec.data.split import Split, UserItemSet


@runtime_checkable
class Recommender(Protocol):
    """Scores candidate items for users.

    ``fit`` may use only the split's training interactions. ``score`` gets the
    interactions observable at evaluation time (train for validation, train +
    validation for test) as ``history``.
    """

    def fit(self, split: Split) -> Self: ...

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        """Scores of shape ``items.shape``: ``items[r]`` are candidates of ``users[r]``."""
        ...
