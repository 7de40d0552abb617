"""Leak-free evaluation candidates (and a sampler of untouched negatives).

Every evaluation negative is an item the user never interacted with in any
split and in any domain: a candidate list that held one of the user's own
items would score a true positive as a negative (:func:`assert_leak_free`
catches it). The models' training negatives are drawn elsewhere
(``SequentialTrainConfig``) and never consult held-out interactions;
docs/evaluation.md says what they may contain, as measured.

Candidates are drawn once with a fixed seed, saved, and reused by every model,
so all models rank identical lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedllmrec.data.split import ROLE_NAMES, Split, UserItemSet
from fedllmrec.errors import FedLLMRecError
from fedllmrec.io import atomic_path


class LeakageError(FedLLMRecError, AssertionError):
    """A candidate or negative is an item its user interacted with."""


@dataclass(frozen=True, eq=False)
class Candidates:
    """Ranking candidates of the evaluation interactions of one role.

    ``items[r, 0]`` is the held-out positive of row ``r``; ``items[r, 1:]`` are
    negatives. ``row[r]`` is the interaction row it evaluates.
    """

    role: str
    row: np.ndarray  # (N,) int64 interaction rows
    user: np.ndarray  # (N,) int32
    domain: np.ndarray  # (N,) int8
    items: np.ndarray  # (N, 1 + n_negatives) int32
    seed: int

    @property
    def n_negatives(self) -> int:
        return int(self.items.shape[1]) - 1

    def head(self, n_negatives: int) -> Candidates:
        """The positive and the first ``n_negatives`` negatives of every row.

        Negatives are drawn in random order, so any prefix is itself a uniform
        sample: the 1+19 LLM lists are the first 19 negatives of the 1+99 lists.
        """
        if n_negatives > self.n_negatives:
            raise ValueError(f"only {self.n_negatives} negatives were drawn")
        return Candidates(
            self.role, self.row, self.user, self.domain, self.items[:, : n_negatives + 1], self.seed
        )

    def to_table(self) -> pa.Table:
        n_cols = self.items.shape[1]
        flat = pa.array(self.items.reshape(-1), pa.int32())
        return pa.table(
            {
                "row": pa.array(self.row, pa.int64()),
                "user": pa.array(self.user, pa.int32()),
                "domain": pa.array(self.domain, pa.int8()),
                "items": pa.FixedSizeListArray.from_arrays(flat, n_cols),
            }
        ).replace_schema_metadata({"role": self.role, "seed": str(self.seed)})

    def save(self, path: str | Path) -> None:
        """Write as Parquet, atomically."""
        with atomic_path(path) as tmp:
            pq.write_table(self.to_table(), tmp)

    @classmethod
    def load(cls, path: str | Path) -> Candidates:
        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        items_col = table.column("items").combine_chunks()
        n_cols = items_col.type.list_size
        items = items_col.flatten().to_numpy().reshape(-1, n_cols).astype(np.int32)
        return cls(
            role=meta["role"],
            row=table.column("row").to_numpy(),
            user=table.column("user").to_numpy(),
            domain=table.column("domain").to_numpy(),
            items=items,
            seed=int(meta["seed"]),
        )


def catalogue_row(items: np.ndarray) -> np.ndarray | None:
    """The one row every row of ``items`` (B, C) is, when ``items`` is a broadcast view of
    it (the full ranking: every user ranks the same catalogue), else None. A scorer may
    then gather scores by column once instead of row by row."""
    items = np.asarray(items)
    if items.ndim == 2 and items.shape[0] > 1 and items.strides[0] == 0:
        return items[0]
    return None


def _available(pool: np.ndarray, user: int, touched: UserItemSet) -> int:
    """How many items of ``pool`` ``user`` never touched."""
    return pool.shape[0] - int(np.isin(touched.items_of(user), pool).sum())


def sample_excluding(
    rng: np.random.Generator,
    pool: np.ndarray,
    n: int,
    user: int,
    touched: UserItemSet,
) -> np.ndarray | None:
    """``n`` distinct items of ``pool`` (int32) that ``user`` has no pair with in
    ``touched``, uniformly, in random order.

    ``touched`` is whatever must be excluded: every split's pairs for evaluation
    candidates, the training pairs only for training negatives. None when the user has
    fewer than ``n`` such items in the pool.
    """
    seen = touched.items_of(user)
    available = pool.shape[0] - int(np.isin(seen, pool).sum())
    if available < n:
        return None
    if available < 4 * n:
        # A small pool: drawing without rejection is cheaper and exact.
        free = np.setdiff1d(pool, seen, assume_unique=True)
        return rng.permutation(free)[:n].astype(np.int32)
    chosen: list[int] = []
    chosen_set: set[int] = set()
    while len(chosen) < n:
        draw = pool[rng.integers(0, pool.shape[0], size=2 * (n - len(chosen)) + 8)]
        draw = draw[~np.isin(draw, seen)]
        for item in draw.tolist():
            if item not in chosen_set:
                chosen_set.add(item)
                chosen.append(item)
                if len(chosen) == n:
                    break
    return np.asarray(chosen, dtype=np.int32)


def sample_candidates(
    split: Split, role: str, *, n_negatives: int = 99, seed: int = 0
) -> Candidates:
    """Draw ``n_negatives`` uniform negatives for every ``role`` interaction.

    Negatives come from the items of the positive's domain that occur in the
    data, minus every item the user touched in any split. The draw depends only
    on ``seed`` and the split, so it is reproducible.

    Raises
    ------
    FedLLMRecError
        When a user has fewer untouched items than ``n_negatives``; the message
        gives the largest count every user can have.
    """
    if role not in ROLE_NAMES[1:]:
        raise ValueError(f"role must be 'valid' or 'test', not {role!r}")
    ds = split.dataset
    rows = split.rows(role)
    users = ds.user[rows]
    domains = ds.domain[rows]
    positives = ds.item[rows]
    pools = [split.active_items(d) for d in range(len(ds.domains))]
    touched = split.touched
    # One stream per role, so adding test candidates never changes validation ones.
    rng = np.random.default_rng([seed, ROLE_NAMES.index(role)])
    items = np.empty((rows.shape[0], n_negatives + 1), dtype=np.int32)
    items[:, 0] = positives
    for r in range(rows.shape[0]):
        drawn = sample_excluding(rng, pools[domains[r]], n_negatives, int(users[r]), touched)
        if drawn is None:
            raise _too_few(split, role, n_negatives, users, domains, pools, r)
        items[r, 1:] = drawn
    return Candidates(role, rows.astype(np.int64), users, domains, items, seed)


def _too_few(
    split: Split,
    role: str,
    n_negatives: int,
    users: np.ndarray,
    domains: np.ndarray,
    pools: list[np.ndarray],
    failed: int,
) -> FedLLMRecError:
    """The error of a catalogue too small for ``n_negatives``, saying what would fit."""
    touched = split.touched
    # Every row's count, only on this error path: the number to advise must fit them all.
    fits = min(_available(pools[d], int(u), touched) for u, d in zip(users, domains, strict=True))
    ds = split.dataset
    user = int(users[failed])
    user_id = ds.users.column("user_id")[user].as_py()
    have = _available(pools[domains[failed]], user, touched)
    return FedLLMRecError(
        f"{ds.name}: user {user_id!r} has only {have} untouched items to draw {role} "
        f"negatives from; {n_negatives} requested: prepare with at most {fits} negatives "
        f"(--negatives {fits}, negatives = {fits} in a recipe's [data], or "
        f"prepare(n_negatives={fits})), or 0 to evaluate by full ranking only"
    )


def assert_leak_free(split: Split, candidates: Candidates) -> None:
    """Raise :class:`LeakageError` unless every negative is untouched by its user.

    Also checks that column 0 holds the interaction being evaluated and that a
    row has no duplicate candidate.
    """
    ds = split.dataset
    if not np.array_equal(candidates.items[:, 0], ds.item[candidates.row]):
        raise LeakageError("column 0 of the candidates is not the held-out item")
    negatives = candidates.items[:, 1:]
    hit = split.touched.contains(candidates.user[:, None], negatives)
    if hit.any():
        r, c = np.argwhere(hit)[0]
        raise LeakageError(
            f"negative {negatives[r, c]} of user {candidates.user[r]} ({candidates.role} row "
            f"{candidates.row[r]}) is an item the user interacted with"
        )
    ordered = np.sort(candidates.items, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise LeakageError("a candidate list holds the same item twice")


class NegativeSampler:
    """Uniform negatives that exclude every item the user touched in any split.

    It reads held-out interactions, so it suits evaluation-time draws, not training:
    no model trains with it (training negatives: ``SequentialTrainConfig``).
    """

    def __init__(self, split: Split, domain: int | None = None) -> None:
        self.touched = split.touched
        self.pool = (
            np.arange(split.dataset.n_items, dtype=np.int32)
            if domain is None
            else split.active_items(domain)
        )

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Negatives for each user, shape ``(len(users), n)``; may repeat within a row."""
        users = np.asarray(users, dtype=np.int64)
        out = self.pool[rng.integers(0, self.pool.shape[0], size=(users.shape[0], n))]
        bad = self.touched.contains(users[:, None], out)
        # Rejection sampling: each retry redraws only the rejected cells.
        for _ in range(1000):
            if not bad.any():
                return out
            r, c = np.nonzero(bad)
            out[r, c] = self.pool[rng.integers(0, self.pool.shape[0], size=r.shape[0])]
            bad[r, c] = self.touched.contains(users[r], out[r, c])
        raise FedLLMRecError("could not draw untouched negatives: users touched almost every item")
