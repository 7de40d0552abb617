"""The interface every recommender implements (LensKit style: ``fit`` then score)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
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


class Scorer(Protocol):
    """What evaluation needs of a model: scores of candidate items (see ``Recommender``)."""

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray: ...


def scoring_session(model: object) -> AbstractContextManager[None]:
    """``model.scoring_session()`` if the model has one, else a context that does nothing.

    An evaluation holds one: inside it the weights and each role's history do not change,
    so a model may compute per-user work (a sequence encoder's user state) once and reuse
    it across the evaluation's modes (full, 1+99, 1+19, their cold-item subsets).
    """
    hook = getattr(model, "scoring_session", None)
    return nullcontext() if hook is None else hook()
