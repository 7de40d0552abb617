"""Chronological leave-one-out splits.

Tie rule (the one rule every dataset uses): interactions are ordered by
timestamp, and interactions of one user with the same timestamp keep the order
of the source file. The last interaction of each (user, domain) is the test
interaction and the second-to-last the validation one; a (user, domain) with
fewer than three interactions is used for training only. On ml-100k, 415 of
943 users rated their last two movies in the same second, so this rule decides
their test item; on KuaiSAR-R it reproduces MRFF's sequence order and on
Art-Office URLLM's targets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from fedllmrec.data.schema import RecDataset

TRAIN, VALID, TEST = 0, 1, 2
ROLE_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How to filter and split a dataset.

    Parameters
    ----------
    min_user_interactions, min_item_interactions : int
        k-core filter: repeatedly drop interactions of users / items with fewer
        interactions than this, until none is left to drop (0 turns it off).
    max_history : int, optional
        Keep only each user's most recent ``max_history`` interactions (all
        domains together) before splitting.
    per_domain : bool
        Hold out the last two interactions of every (user, domain); otherwise of
        every user across domains.
    max_users : int, optional
        Keep every interaction of ``max_users`` users drawn uniformly (seed
        ``users_seed``) and nobody else's, before any other filter: a documented subset
        for quick runs. Ranking then covers the items those users touched.
    users_seed : int
        Seed of the ``max_users`` draw.
    """

    min_user_interactions: int = 0
    min_item_interactions: int = 0
    max_history: int | None = None
    per_domain: bool = True
    max_users: int | None = None
    users_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.max_users is None:  # the keys of every split prepared before the option
            del out["max_users"], out["users_seed"]
        return out


def k_core(user: np.ndarray, item: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Boolean mask of the interactions kept by an iterative k-core filter."""
    keep = np.ones(user.shape[0], dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    while True:
        user_counts = np.bincount(user[keep], minlength=int(user.max()) + 1)
        item_counts = np.bincount(item[keep], minlength=int(item.max()) + 1)
        drop = keep & ((user_counts[user] < min_user) | (item_counts[item] < min_item))
        if not drop.any():
            return keep
        keep &= ~drop


def _rank_from_end(groups: np.ndarray) -> np.ndarray:
    """For rows sorted by group, 0 for a group's last row, 1 for the one before, ..."""
    n = groups.shape[0]
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = groups[1:] != groups[:-1]
    # Index of the last row of each row's group, found by scanning from the end.
    last_index = np.where(is_last, np.arange(n), n)
    last_index = np.minimum.accumulate(last_index[::-1])[::-1]
    return last_index - np.arange(n)


def leave_one_out(dataset: RecDataset, config: SplitConfig | None = None) -> Split:
    """Filter ``dataset`` as ``config`` says and assign every interaction a role."""
    config = config or SplitConfig()
    user, item = dataset.user, dataset.item
    keep = np.ones(user.shape[0], dtype=bool)
    if config.max_users is not None:
        present = np.unique(user)
        if config.max_users < present.shape[0]:
            rng = np.random.default_rng([config.users_seed, config.max_users])
            keep = np.isin(user, rng.choice(present, config.max_users, replace=False))
    kept_rows = np.flatnonzero(keep)
    core = k_core(
        user[kept_rows], item[kept_rows], config.min_user_interactions, config.min_item_interactions
    )
    keep[kept_rows[~core]] = False
    if config.max_history is not None:
        # Rows are in canonical order, so the rank from the end of the user's block is recency.
        recency = _rank_from_end(user)
        keep &= recency < config.max_history
    rows = np.flatnonzero(keep)
    interactions = dataset.interactions.take(pa.array(rows))
    kept = dataclasses.replace(dataset, interactions=interactions)
    k_user = kept.user.astype(np.int64)
    if config.per_domain:
        # A stable sort by (user, domain) keeps chronological order inside each group.
        order = np.lexsort((np.arange(k_user.shape[0]), kept.domain, k_user))
        groups = k_user[order] * len(kept.domains) + kept.domain[order]
    else:
        order = np.arange(k_user.shape[0])
        groups = k_user
    from_end = _rank_from_end(groups)
    group_sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    size_of_row = np.repeat(group_sizes, group_sizes)
    role_sorted = np.full(order.shape[0], TRAIN, dtype=np.int8)
    evaluable = size_of_row >= 3
    role_sorted[evaluable & (from_end == 0)] = TEST
    role_sorted[evaluable & (from_end == 1)] = VALID
    role = np.empty_like(role_sorted)
    role[order] = role_sorted
    return Split(kept, role, config)


@dataclass(frozen=True, eq=False)
class Split:
    """A dataset whose interactions each have a role: train, valid or test.

    ``role[i]`` is the role of ``dataset.interactions`` row ``i``.
    """

    dataset: RecDataset
    role: np.ndarray
    config: SplitConfig

    def rows(self, role: int | str) -> np.ndarray:
        """Interaction row indices with one role (``"train"``, ``"valid"``, ``"test"``)."""
        code = ROLE_NAMES.index(role) if isinstance(role, str) else role
        return np.flatnonzero(self.role == code)

    @cached_property
    def touched(self) -> UserItemSet:
        """Every (user, item) pair of the dataset, whatever its role."""
        return UserItemSet(self.dataset.user, self.dataset.item, self.dataset.n_items)

    def observed(self, before: int | str) -> UserItemSet:
        """(user, item) pairs a model may know when evaluating role ``before``.

        Validation sees train interactions; test sees train and validation. Built once
        per role and shared: every mode of an evaluation gets the same object (a model
        may memoise per-user work by it).
        """
        code = ROLE_NAMES.index(before) if isinstance(before, str) else before
        built = self._observed_sets
        if code not in built:
            mask = self.role < code
            ds = self.dataset
            built[code] = UserItemSet(ds.user[mask], ds.item[mask], ds.n_items)
        return built[code]

    @cached_property
    def _observed_sets(self) -> dict[int, UserItemSet]:
        """role code -> :meth:`observed`'s set, filled on first use."""
        return {}

    def active_items(self, domain: int) -> np.ndarray:
        """Items of ``domain`` that occur in the (filtered) interactions, sorted."""
        items = self.dataset.item[self.dataset.domain == domain]
        return np.unique(items).astype(np.int32)

    def summary(self) -> dict[str, int]:
        """Number of interactions per role."""
        return {name: int((self.role == i).sum()) for i, name in enumerate(ROLE_NAMES)}

    def with_roles_table(self) -> pa.Table:
        """The interactions table with an extra ``role`` column (int8)."""
        return self.dataset.interactions.append_column("role", pa.array(self.role, pa.int8()))


class UserItemSet:
    """A set of (user, item) pairs with vectorised membership tests.

    Pairs are stored as sorted ``user * n_items + item`` keys, so a batch of
    lookups is one ``searchsorted``.
    """

    def __init__(self, user: np.ndarray, item: np.ndarray, n_items: int) -> None:
        self.n_items = n_items
        self.keys = np.unique(user.astype(np.int64) * n_items + item.astype(np.int64))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is in the set; broadcasts like numpy."""
        query = np.asarray(user, dtype=np.int64) * self.n_items + np.asarray(item, dtype=np.int64)
        pos = np.searchsorted(self.keys, query)
        pos = np.minimum(pos, max(len(self.keys) - 1, 0))
        return (self.keys[pos] == query) if len(self.keys) else np.zeros(query.shape, bool)

    def grid_hits(self, users: np.ndarray, catalogue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) of every pair ``(users[row], catalogue[column])`` in the set.

        The same pairs as ``contains(users[:, None], catalogue[None, :])``, found from each
        user's own keys instead of a (B, C) grid of lookups: a full-ranking batch has a few
        touched items per user against a catalogue of thousands. ``catalogue`` is sorted.
        """
        base = np.asarray(users, dtype=np.int64) * self.n_items  # (B,)
        lo = np.searchsorted(self.keys, base)
        counts = np.searchsorted(self.keys, base + self.n_items) - lo
        rows = np.repeat(np.arange(base.shape[0]), counts)
        first = np.repeat(lo - (np.cumsum(counts) - counts), counts)  # each run's start
        items = self.keys[first + np.arange(rows.shape[0])] - base[rows]
        if not catalogue.shape[0]:
            return rows[:0], rows[:0]
        cols = np.minimum(np.searchsorted(catalogue, items), catalogue.shape[0] - 1)
        found = catalogue[cols] == items
        return rows[found], cols[found]

    def items_of(self, user: int) -> np.ndarray:
        """Sorted items of one user."""
        lo = np.searchsorted(self.keys, np.int64(user) * self.n_items)
        hi = np.searchsorted(self.keys, np.int64(user + 1) * self.n_items)
        return (self.keys[lo:hi] - np.int64(user) * self.n_items).astype(np.int32)
