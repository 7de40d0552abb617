"""Ranking metrics for leave-one-out evaluation and CTR metrics.

Ranking metrics assume exactly one positive per evaluation row. A row's outcome is
summarised by two counts over the *other* candidates: ``greater`` (scores strictly
above the positive's) and ``tied`` (scores exactly equal to it). The positive's rank
then lies in ``greater + 1 .. greater + tied + 1`` and a tie policy decides where:

- ``"expected"`` (default): the rank is uniform over that range, as with random
  tie-breaking, and each metric is its exact expectation. A constant scorer therefore
  gets chance-level metrics instead of perfect (optimistic) or zero (pessimistic) ones.
- ``"pessimistic"``: rank ``greater + tied + 1``.
- ``"optimistic"``: rank ``greater + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

__all__ = [
    "TiePolicy",
    "auc",
    "gauc",
    "hit_rate",
    "log_loss",
    "ndcg",
    "rank_counts",
    "ranking_metrics",
    "reciprocal_rank",
]

TiePolicy = Literal["expected", "pessimistic", "optimistic"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_TIE_POLICIES: Final[tuple[str, ...]] = get_args(TiePolicy)

# Upper bound on the elements of one row chunk in rank_counts: each comparison makes a
# temporary boolean array of this size, so N x C never has to fit in memory at once.
_CHUNK_ELEMENTS = 1 << 22

# Harmonic numbers up to this bound come from a cumulative-sum table; above it the
# asymptotic expansion is used, so huge ranks never allocate huge tables.
_HARMONIC_TABLE_MAX: Final[int] = 1 << 12


# --------------------------------------------------------------------------- ranking


def rank_counts(
    scores: npt.ArrayLike, positive: npt.ArrayLike | int = 0
) -> tuple[IntArray, IntArray]:
    """Count candidates scored above and equal to the positive, per row.

    Parameters
    ----------
    scores : array_like, shape (N, C)
        Candidate scores; ``-inf`` marks an excluded candidate (padding, already-seen
        items), which is never counted as greater or tied.
    positive : int or array_like of int, shape (N,)
        Column of the positive in each row, or one column for all rows.

    Returns
    -------
    greater, tied : ndarray of int64, shape (N,)
        Number of other candidates with a strictly greater / exactly equal score.

    Raises
    ------
    ValueError
        On bad shapes or indices, a NaN anywhere in a row, or a positive scored ``-inf``;
        the message names the first offending row.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows, candidates), got shape {s.shape}")
    if s.dtype.kind not in "fiu":
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    n_rows, n_cols = s.shape
    pos = _positive_columns(positive, n_rows, n_cols)

    greater = np.empty(n_rows, dtype=np.int64)
    tied = np.empty(n_rows, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        chunk = s[start:stop]
        pos_score = chunk[np.arange(stop - start), pos[start:stop]]
        if s.dtype.kind == "f":
            bad = np.flatnonzero(np.isnan(chunk).any(axis=1))
            if bad.size:
                raise ValueError(f"scores row {start + int(bad[0])} contains NaN")
            bad = np.flatnonzero(np.isneginf(pos_score))
            if bad.size:
                row = start + int(bad[0])
                raise ValueError(
                    f"scores row {row}: the positive (column {int(pos[row])}) is -inf, "
                    "i.e. excluded"
                )
        # The positive is finite or +inf here, so -inf candidates can never compare
        # greater or equal to it: exclusion needs no extra mask.
        ref = pos_score[:, None]
        greater[start:stop] = np.count_nonzero(chunk > ref, axis=1)
        # The positive always equals itself; it is not one of its own ties.
        tied[start:stop] = np.count_nonzero(chunk == ref, axis=1) - 1
    return greater, tied


def hit_rate(
    greater: npt.ArrayLike,
    tied: npt.ArrayLike,
    /,
    k: int,
    *,
    ties: TiePolicy = "expected",
) -> FloatArray:
    """Hit rate at ``k`` per row: whether (or the probability that) rank <= ``k``.

    Parameters
    ----------
    greater, tied : array_like of int
        Counts from :func:`rank_counts`.
    k : int
        Cut-off, at least 1.
    ties : {"expected", "pessimistic", "optimistic"}
        Tie policy; ``"expected"`` gives ``clip((k - greater) / (tied + 1), 0, 1)``.

    Returns
    -------
    ndarray of float64
        One value per row, in [0, 1].
    """
    g, t = _check_counts(greater, tied)
    _check_k(k)
    policy = _check_policy(ties)
    if policy == "optimistic":
        return (g + 1 <= k).astype(np.float64)
    if policy == "pessimistic":
        return (g + t + 1 <= k).astype(np.float64)
    # The number of ranks in [g+1, g+t+1] that are <= k, out of t+1 equally likely.
    return np.clip(k - g, 0, t + 1) / (t + 1)


def ndcg(
    greater: npt.ArrayLike,
    tied: npt.ArrayLike,
    /,
    k: int,
    *,
    ties: TiePolicy = "expected",
) -> FloatArray:
    """NDCG at ``k`` per row, with one relevant item (so the ideal DCG is 1).

    Parameters
    ----------
    greater, tied : array_like of int
        Counts from :func:`rank_counts`.
    k : int
        Cut-off, at least 1.
    ties : {"expected", "pessimistic", "optimistic"}
        Tie policy; ``"expected"`` averages ``1 / log2(r + 1)`` (0 beyond ``k``) over
        the ranks ``r`` the positive can take.

    Returns
    -------
    ndarray of float64
        One value per row, in [0, 1].
    """
    g, t = _check_counts(greater, tied)
    _check_k(k)
    policy = _check_policy(ties)
    if policy == "optimistic":
        return _gain_at(g + 1, k)
    if policy == "pessimistic":
        return _gain_at(g + t + 1, k)
    # cum[r] = sum of 1/log2(j + 1) for j = 1..r; the sum over [g+1, min(g+t+1, k)] is a
    # difference of two entries, both clamped to k because gains beyond k are zero.
    cum = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))))
    lo = np.minimum(g, k)
    hi = np.maximum(np.minimum(g + t + 1, k), lo)
    expected = (cum[hi] - cum[lo]) / (t + 1)
    # Without ties the direct gain avoids the rounding of a table difference.
    return np.where(t == 0, _gain_at(g + 1, k), expected)


def reciprocal_rank(
    greater: npt.ArrayLike,
    tied: npt.ArrayLike,
    /,
    *,
    ties: TiePolicy = "expected",
) -> FloatArray:
    """Reciprocal rank per row (not truncated); MRR is its mean.

    Parameters
    ----------
    greater, tied : array_like of int
        Counts from :func:`rank_counts`.
    ties : {"expected", "pessimistic", "optimistic"}
        Tie policy; ``"expected"`` gives ``(H(g + t + 1) - H(g)) / (t + 1)`` with
        ``H`` the harmonic numbers, i.e. the mean of ``1 / r`` over the possible ranks.

    Returns
    -------
    ndarray of float64
        One value per row, in (0, 1].
    """
    g, t = _check_counts(greater, tied)
    policy = _check_policy(ties)
    if policy == "optimistic":
        return 1.0 / (g + 1)
    if policy == "pessimistic":
        return 1.0 / (g + t + 1)
    expected = _harmonic_diff(g, g + t + 1) / (t + 1)
    return np.where(t == 0, 1.0 / (g + 1), expected)


def ranking_metrics(
    greater: npt.ArrayLike,
    tied: npt.ArrayLike,
    /,
    ks: Sequence[int] = (10,),
    *,
    ties: TiePolicy = "expected",
) -> dict[str, float]:
    """Mean HR@k and NDCG@k for each ``k``, and MRR, over all rows.

    Parameters
    ----------
    greater, tied : array_like of int
        Counts from :func:`rank_counts`.
    ks : sequence of int
        Cut-offs, each at least 1.
    ties : {"expected", "pessimistic", "optimistic"}
        Tie policy, see the module docstring.

    Returns
    -------
    dict of str to float
        Keys ``HR@{k}`` and ``NDCG@{k}`` for each ``k`` in order, then ``MRR``.

    Raises
    ------
    ValueError
        If there are no rows, or on bad counts, cut-offs or tie policy.
    """
    g, t = _check_counts(greater, tied)
    if g.size == 0:
        raise ValueError("ranking_metrics needs at least one row, got none")
    policy = _check_policy(ties)
    for k in ks:
        _check_k(k)
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(hit_rate(g, t, k, ties=policy).mean())
        out[f"NDCG@{k}"] = float(ndcg(g, t, k, ties=policy).mean())
    out["MRR"] = float(reciprocal_rank(g, t, ties=policy).mean())
    return out


def _positive_columns(positive: npt.ArrayLike | int, n_rows: int, n_cols: int) -> IntArray:
    """Validate ``positive`` and broadcast it to one column index per row."""
    p = np.asarray(positive)
    if p.dtype.kind not in "iu":
        raise ValueError(f"positive must be integer column indices, got dtype {p.dtype}")
    if p.ndim == 0:
        p = np.full(n_rows, int(p), dtype=np.int64)
    elif p.shape != (n_rows,):
        raise ValueError(f"positive must be an int or have shape ({n_rows},), got {p.shape}")
    bad = np.flatnonzero((p < 0) | (p >= n_cols))
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"positive column {int(p[row])} of row {row} is outside 0..{n_cols - 1}")
    return p.astype(np.int64, copy=False)


def _check_counts(greater: npt.ArrayLike, tied: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    """Validate rank counts and return them as flat int64 arrays."""
    g = np.asarray(greater)
    t = np.asarray(tied)
    if g.dtype.kind not in "iu" or t.dtype.kind not in "iu":
        raise ValueError(
            f"greater and tied must be integer counts, got dtypes {g.dtype} and {t.dtype}"
        )
    if g.shape != t.shape:
        raise ValueError(f"greater and tied differ in shape: {g.shape} vs {t.shape}")
    if (g < 0).any() or (t < 0).any():
        raise ValueError("greater and tied must be non-negative")
    return g.astype(np.int64, copy=False).ravel(), t.astype(np.int64, copy=False).ravel()


def _check_k(k: int) -> None:
    """Reject cut-offs that are not positive integers (bools included)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _check_policy(ties: object) -> TiePolicy:
    """Return ``ties`` as a tie policy, or raise naming the allowed ones."""
    if isinstance(ties, str) and ties in _TIE_POLICIES:
        return cast(TiePolicy, ties)
    raise ValueError(f"ties must be one of {_TIE_POLICIES}, got {ties!r}")


def _gain_at(rank: IntArray, k: int) -> FloatArray:
    """DCG gain ``1 / log2(rank + 1)`` of a single relevant item, 0 beyond ``k``."""
    return np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)


def _harmonic_diff(a: IntArray, b: IntArray) -> FloatArray:
    """``H(b) - H(a)`` for ``0 <= a <= b``, H being the harmonic numbers."""
    if a.size == 0:
        return np.zeros(0, dtype=np.float64)
    m = min(int(b.max()), _HARMONIC_TABLE_MAX)
    table = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, m + 1, dtype=np.float64))))
    # Split each range at m: the table covers the part up to m, the expansion the rest,
    # where n > _HARMONIC_TABLE_MAX puts its first omitted term, 1 / (252 n^6), far below
    # float precision.
    a_low = np.minimum(a, m)
    b_low = np.minimum(b, m)
    out = table[b_low] - table[a_low]
    large = b > m
    if large.any():
        a_high = np.maximum(a[large], m)
        out[large] += _harmonic_diff_asymptotic(a_high, b[large])
    return out


def _harmonic_diff_asymptotic(a: IntArray, b: IntArray) -> FloatArray:
    """``H(b) - H(a)`` for large ``a <= b`` via the Euler-Maclaurin expansion.

    Each term is differenced on its own (log1p for the logarithm) so that close ``a``
    and ``b`` do not lose precision to cancellation of two ~ln(n) values.
    """
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    log_term = np.log1p((bf - af) / af)
    return (
        log_term
        + (1.0 / (2.0 * bf) - 1.0 / (2.0 * af))
        - (1.0 / (12.0 * bf**2) - 1.0 / (12.0 * af**2))
        + (1.0 / (120.0 * bf**4) - 1.0 / (120.0 * af**4))
    )


# --------------------------------------------------------------------------- CTR


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Global ROC-AUC (Mann-Whitney), a positive-negative tie counting 1/2.

    Parameters
    ----------
    labels : array_like, shape (n,)
        Binary labels, 0 or 1.
    scores : array_like, shape (n,)
        Real scores; higher means more likely positive.

    Returns
    -------
    float
        Probability that a random positive outscores a random negative.

    Raises
    ------
    ValueError
        If labels are not all 0/1, scores are NaN, shapes differ, or only one class
        is present.
    """
    y, s = _check_labels_scores(labels, s_name="scores", values=scores)
    codes = np.zeros(y.shape[0], dtype=np.int64)
    per_group, n_pos, n_neg = _grouped_auc(codes, y, s, n_groups=1)
    if n_pos[0] == 0 or n_neg[0] == 0:
        raise ValueError(
            f"AUC needs both classes, got {int(n_pos[0])} positives and {int(n_neg[0])} negatives"
        )
    return float(per_group[0])


def gauc(users: npt.ArrayLike, labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Group AUC: per-user AUC averaged with weights equal to each user's row count.

    Users whose rows are all positive or all negative have no defined AUC and are
    skipped: they contribute neither a value nor weight.

    Parameters
    ----------
    users : array_like, shape (n,)
        User id of each row (any sortable dtype).
    labels : array_like, shape (n,)
        Binary labels, 0 or 1.
    scores : array_like, shape (n,)
        Real scores; higher means more likely positive.

    Returns
    -------
    float
        Row-weighted mean of the per-user AUCs.

    Raises
    ------
    ValueError
        On bad labels, NaN scores or mismatched shapes, or if no user has both classes.
    """
    y, s = _check_labels_scores(labels, s_name="scores", values=scores)
    u = np.asarray(users)
    if u.shape != y.shape:
        raise ValueError(f"users must have shape {y.shape}, got {u.shape}")
    uniq, codes = np.unique(u, return_inverse=True)
    per_user, n_pos, n_neg = _grouped_auc(codes.reshape(-1), y, s, n_groups=uniq.shape[0])
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        raise ValueError(f"GAUC needs a user with both classes; none of {uniq.shape[0]} has")
    weights = (n_pos + n_neg)[valid].astype(np.float64)
    return float(np.dot(weights, per_user[valid]) / weights.sum())


def log_loss(labels: npt.ArrayLike, probs: npt.ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, with ``probs`` clipped to ``[eps, 1 - eps]``.

    Parameters
    ----------
    labels : array_like, shape (n,)
        Binary labels, 0 or 1.
    probs : array_like, shape (n,)
        Predicted probabilities of label 1, in [0, 1].
    eps : float
        Clipping margin, in (0, 0.5); keeps a confident mistake finite.

    Returns
    -------
    float
        Mean negative log-likelihood in nats.

    Raises
    ------
    ValueError
        On empty input, bad labels, mismatched shapes, or probabilities that are NaN or
        outside [0, 1].
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    y, p = _check_labels_scores(labels, s_name="probs", values=probs)
    if y.size == 0:
        raise ValueError("log_loss needs at least one row, got none")
    bad = np.flatnonzero((p < 0.0) | (p > 1.0))
    if bad.size:
        raise ValueError(f"probs[{int(bad[0])}] = {p[bad[0]]} is outside [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def _check_labels_scores(
    labels: npt.ArrayLike, *, s_name: str, values: npt.ArrayLike
) -> tuple[IntArray, FloatArray]:
    """Validate 1-D binary labels and same-shaped, NaN-free real values."""
    y = np.asarray(labels)
    v = np.asarray(values)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if v.shape != y.shape:
        raise ValueError(f"{s_name} must have shape {y.shape}, got {v.shape}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0/1 numbers, got dtype {y.dtype}")
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        raise ValueError(f"labels must be 0 or 1, got labels[{int(bad[0])}] = {y[bad[0]].item()!r}")
    if v.dtype.kind not in "biuf":
        raise ValueError(f"{s_name} must be real numbers, got dtype {v.dtype}")
    v = v.astype(np.float64, copy=False)
    bad = np.flatnonzero(np.isnan(v))
    if bad.size:
        raise ValueError(f"{s_name}[{int(bad[0])}] is NaN")
    return y.astype(np.int64), v


def _grouped_auc(
    codes: IntArray, labels: IntArray, scores: FloatArray, n_groups: int
) -> tuple[FloatArray, IntArray, IntArray]:
    """Mann-Whitney AUC within each group, in O(n log n) without a loop over groups.

    Returns per-group AUC (NaN where a class is missing) and positive/negative counts.
    """
    n_pos = np.bincount(codes, weights=labels, minlength=n_groups).astype(np.int64)
    n_neg = np.bincount(codes, minlength=n_groups).astype(np.int64) - n_pos
    per_group = np.full(n_groups, np.nan)
    if codes.size == 0:
        return per_group, n_pos, n_neg

    order = np.lexsort((scores, codes))
    c = codes[order]
    s = scores[order]
    y = labels[order]
    # A block is a run of equal (group, score): inside it positives and negatives tie.
    starts = np.flatnonzero(np.concatenate(([True], (c[1:] != c[:-1]) | (s[1:] != s[:-1]))))
    block_size = np.diff(np.append(starts, c.size))
    block_pos = np.add.reduceat(y, starts)
    block_neg = block_size - block_pos
    block_group = c[starts]

    # Negatives strictly below each block within its group: a running total over all
    # blocks minus that total where the group begins.
    neg_before = np.cumsum(block_neg) - block_neg
    group_first = np.flatnonzero(np.concatenate(([True], block_group[1:] != block_group[:-1])))
    group_offset = np.zeros(n_groups, dtype=np.int64)
    group_offset[block_group[group_first]] = neg_before[group_first]
    neg_below = neg_before - group_offset[block_group]

    # Each positive beats every negative below its block and half-beats those tied with it;
    # float64 keeps the pair counts from overflowing int64 on huge inputs.
    wins = block_pos * (neg_below + 0.5 * block_neg)
    numer = np.bincount(block_group, weights=wins, minlength=n_groups)
    pairs = n_pos.astype(np.float64) * n_neg
    ok = pairs > 0
    per_group[ok] = numer[ok] / pairs[ok]
    return per_group, n_pos, n_neg


def click_metrics(labels: npt.ArrayLike, probs: npt.ArrayLike) -> dict[str, float]:
    """Global AUC and LogLoss of held-out click probabilities (the MRFF protocol).

    The one place click metrics are computed: the click evaluator and the Flower
    ServerApp (on the nodes' pooled predictions) both call it.

    Returns
    -------
    dict
        ``"LogLoss"``, and ``"AUC"`` when both classes occur; ``"rows"`` counts the labels.
    """
    y = np.asarray(labels, dtype=np.float64)
    metrics: dict[str, float] = {"rows": float(y.shape[0])}
    if y.size:
        metrics["LogLoss"] = log_loss(y, probs)
        if 0 < y.sum() < y.size:  # AUC needs both classes
            metrics["AUC"] = auc(y, probs)
    return metrics
