"""Users' interaction sequences in canonical (chronological, tie-rule) order."""

from __future__ import annotations

import numpy as np

from fedllmrec.data.split import Split, UserItemSet


def _user_bounds(split: Split, users: np.ndarray) -> np.ndarray:
    """Start of each user's block of rows (and the end of the last), for sorted ``users``."""
    return np.searchsorted(users, np.arange(split.dataset.n_users + 1))


def user_sequences(split: Split, keep: np.ndarray | None = None) -> list[np.ndarray]:
    """Per user, the items of the kept interactions in canonical order.

    ``keep`` is a boolean mask over interactions (default: all). Rows of the
    split's dataset are already in canonical order, grouped by user.
    """
    ds = split.dataset
    mask = np.ones(ds.n_interactions, dtype=bool) if keep is None else keep
    users, items = ds.user[mask], ds.item[mask]
    bounds = _user_bounds(split, users)
    return [items[bounds[u] : bounds[u + 1]] for u in range(ds.n_users)]


def observed_sequences(split: Split, history: UserItemSet, users: np.ndarray) -> list[np.ndarray]:
    """Each user's interactions that are in ``history``, in canonical order."""
    ds = split.dataset
    bounds = _user_bounds(split, ds.user)
    out = []
    for user in users.tolist():
        items = ds.item[bounds[user] : bounds[user + 1]]
        out.append(items[history.contains(np.full(items.shape[0], user), items)])
    return out


def windows(sequences: list[np.ndarray], length: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut each sequence into windows of at most ``length`` items for all-position training.

    Windows are taken from the end backwards and overlap by one item, so every
    item after a sequence's first is a target exactly once (a window's first
    item is only an input). Returns the windows and the index of the sequence
    each came from; sequences shorter than two items give no window.
    """
    if length < 2:
        raise ValueError("a training window needs at least two items")
    out: list[np.ndarray] = []
    owner: list[int] = []
    for index, seq in enumerate(sequences):
        end = seq.shape[0]
        while end >= 2:
            start = max(end - length, 0)
            out.append(seq[start:end])
            owner.append(index)
            end = start + 1
    return out, np.asarray(owner, dtype=np.int64)


def left_pad(sequences: list[np.ndarray], max_len: int, offset: int = 1) -> np.ndarray:
    """The last ``max_len`` items of each sequence, left-padded with 0, items shifted by ``offset``.

    Shifting by 1 keeps index 0 free for padding.
    """
    out = np.zeros((len(sequences), max_len), dtype=np.int64)
    for r, seq in enumerate(sequences):
        tail = seq[-max_len:]
        if tail.size:
            out[r, max_len - tail.shape[0] :] = tail + offset
    return out
