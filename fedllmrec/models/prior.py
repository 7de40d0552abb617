"""A popularity prior added to a trained model's scores, its weight chosen on validation.

A sequence model trained with a sampled softmax over 1,000 negatives on a 19k-item domain
learns less of the items' popularity than the data holds: on Art-Office the learned rows
sat near (or under) pure popularity on 1+99 lists. :class:`PopularityPrior` scores::

    score(u, i) = model.score(u, i) + weight * log(1 + n_i)

with ``n_i`` item ``i``'s interactions in the split's training role, the counts popularity
ranks by. The trainer tries each of ``trainer.prior_weights`` on validation after training
and keeps the best by its monitor (weight 0 is the model alone), so the test set never
picks it (docs/cross-domain.md, "A popularity prior at scoring").

Whose data the counts are: an item's count comes from its own domain's users. With
domains as clients each domain client holds its items' counts already; with users as
clients no client does, so recipes refuse the prior there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Self

import numpy as np

from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.models.base import Scorer, scoring_session
from fedllmrec.models.baselines import Popularity


def log_counts(split: Split) -> np.ndarray:
    """``log(1 + n_i)`` of every item's training-role interactions (the counts
    :class:`~fedllmrec.models.baselines.Popularity` ranks by), shape (I,)."""
    counts = Popularity().fit(split).counts  # float32, exact integers
    assert counts is not None
    return np.log1p(counts.astype(np.float64)).astype(np.float32)


@dataclass
class PopularityPrior:
    """``model``'s scores plus ``weight * log(1 + training count)`` of each item.

    Parameters
    ----------
    model : Scorer
        A trained (or fitted) model; only its ``score`` is called.
    weight : float
        The prior's weight (0: the model's own scores).
    prior : ndarray, optional
        ``log(1 + n_i)`` per item (:func:`log_counts`); ``fit`` computes it.
    """

    model: Scorer
    weight: float
    prior: np.ndarray | None = field(default=None, repr=False)

    def fit(self, split: Split) -> Self:
        """Count the training interactions; the model itself is not fitted again."""
        self.prior = log_counts(split)
        return self

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        if self.prior is None:
            raise RuntimeError("call fit() before score()")
        scores = np.asarray(self.model.score(users, items, history))  # (R, C)
        if self.weight == 0.0:
            return scores
        return scores + np.float32(self.weight) * self.prior[items]

    @contextmanager
    def scoring_session(self) -> Iterator[None]:
        """The wrapped model's session (:func:`fedllmrec.models.base.scoring_session`)."""
        with scoring_session(self.model):
            yield
