"""Users' interaction sequences in canonical (chronological, tie-rule) order."""

from __future__ import annotations

import numpy as np

from fedllmrec.data.split import TRAIN, Split, UserItemSet


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


def domain_windows(split: Split, length: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Training windows of each user's part in each domain, domain by domain.

    A window never mixes domains: it is what a domain client holds of a user. Returns the
    windows (see :func:`windows`), the user of each and its domain.
    """
    ds = split.dataset
    train = split.role == TRAIN
    chunks: list[np.ndarray] = []
    users, domains = [], []
    for d in range(len(ds.domains)):
        part, owners = windows(user_sequences(split, train & (ds.domain == d)), length)
        chunks += part
        users.append(owners)
        domains.append(np.full(owners.shape[0], d))
    return chunks, np.concatenate(users), np.concatenate(domains)


def sort_runs_by_length(order: np.ndarray, lengths: np.ndarray, span: int) -> np.ndarray:
    """``order`` (row ids) with each run of ``span`` rows sorted by ``lengths[row]`` (stable).

    Batches cut from the result hold windows of similar length (length buckets), while
    the runs keep the order's randomness.
    """
    out = order.copy()
    for lo in range(0, out.shape[0], span):
        run = out[lo : lo + span]
        out[lo : lo + span] = run[np.argsort(lengths[run], kind="stable")]
    return out
