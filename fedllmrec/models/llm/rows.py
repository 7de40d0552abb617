"""Training rows of the LLM recommender: a user's next training item among sampled negatives.

A row is one user in one domain at one position of its training sequence in that domain:
the items before it are the history the prompt shows, the item at it is the target, and
the candidates are the target and uniform negatives from the domain (never an item the
user touched in any role, so a negative is never a later positive). Only training
interactions are read: validation and test items never enter a prompt or a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedllmrec.data.candidates import sample_excluding
from fedllmrec.data.sequences import user_sequences
from fedllmrec.data.split import TRAIN, Split, UserItemSet
from fedllmrec.errors import FedLLMRecError


@dataclass(frozen=True)
class TrainingRows:
    """Rows (R of them): each one's user, domain, in-domain history and target."""

    users: np.ndarray  # (R,)
    domains: np.ndarray  # (R,)
    targets: np.ndarray  # (R,)
    histories: list[np.ndarray]  # R in-domain item sequences, oldest first

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def of_domain(self, domain: int) -> np.ndarray:
        """Positions of the rows of ``domain`` (a domain client's rows)."""
        return np.flatnonzero(self.domains == domain)


def training_rows(
    split: Split, users_per_domain: int, rows_per_user: int, seed: int
) -> TrainingRows:
    """The rows of a seeded subset of ``users_per_domain`` users per domain (0: all) with at
    least two training items there, their last ``rows_per_user`` positions each."""
    ds = split.dataset
    sequences = user_sequences(split, keep=split.role == TRAIN)
    rng = np.random.default_rng([seed, 7])
    users, domains, targets, histories = [], [], [], []
    for d in range(len(ds.domains)):
        per_user = [s[ds.item_domain[s] == d] for s in sequences]
        eligible = np.flatnonzero([s.shape[0] >= 2 for s in per_user])
        if users_per_domain and eligible.shape[0] > users_per_domain:
            eligible = np.sort(rng.choice(eligible, size=users_per_domain, replace=False))
        for user in eligible.tolist():
            seq = per_user[user]
            for t in range(max(1, seq.shape[0] - rows_per_user), seq.shape[0]):
                users.append(user)
                domains.append(d)
                targets.append(int(seq[t]))
                histories.append(seq[:t])
    return TrainingRows(
        np.asarray(users, dtype=np.int64),
        np.asarray(domains, dtype=np.int64),
        np.asarray(targets, dtype=np.int64),
        histories,
    )


def sample_negatives(
    trained: UserItemSet, pool: np.ndarray, user: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` distinct items of ``pool`` (a domain's active items) that ``user`` has no
    training interaction with (``trained``: the training pairs), uniformly: the saved
    candidates' draw (:func:`~fedllmrec.data.candidates.sample_excluding`)."""
    drawn = sample_excluding(rng, pool, n, user, trained)
    if drawn is None:
        raise FedLLMRecError(
            f"user {user}: fewer than {n} items of the domain to draw as negatives"
        )
    return drawn.astype(np.int64)
