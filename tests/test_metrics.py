"""Tests for fedllmrec.eval.metrics, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedllmrec.eval import metrics
from fedllmrec.eval.metrics import (
    auc,
    gauc,
    hit_rate,
    log_loss,
    ndcg,
    rank_counts,
    ranking_metrics,
    reciprocal_rank,
)

NEG_INF = -np.inf


def _log2_gain(rank: int) -> float:
    return 1.0 / math.log2(rank + 1)


# --------------------------------------------------------------------------- rank_counts


def test_rank_counts_perfect_worst_and_tied_rows() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.0],  # perfect: nothing above the positive
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # worst: all 5 others above
            [0.5, 0.9, 0.8, 0.5, 0.5, 0.1],  # 0.9, 0.8 above; two 0.5 tied
        ]
    )
    greater, tied = rank_counts(scores)
    assert greater.dtype == np.int64 and tied.dtype == np.int64
    assert greater.tolist() == [0, 5, 2]
    assert tied.tolist() == [0, 0, 2]


def test_rank_counts_excludes_neg_inf_candidates() -> None:
    # Two -inf columns are excluded; of the rest, 0.7 is above and one 0.5 is tied.
    scores = np.array([[0.5, NEG_INF, NEG_INF, 0.7, 0.5]])
    greater, tied = rank_counts(scores)
    assert (greater.tolist(), tied.tolist()) == ([1], [1])
    # A positive below every finite candidate still never counts -inf as greater or tied.
    greater, tied = rank_counts(np.array([[-5.0, NEG_INF, 1.0, NEG_INF]]))
    assert (greater.tolist(), tied.tolist()) == ([1], [0])


def test_rank_counts_per_row_positive_index() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1], [0.4, 0.4, 0.4]])
    # Row 0: positive 0.9 is top. Row 1: positive 0.1 is below 0.3 and 0.2.
    # Row 2: positive ties with both others.
    greater, tied = rank_counts(scores, np.array([1, 2, 0]))
    assert greater.tolist() == [0, 2, 0]
    assert tied.tolist() == [0, 0, 2]
    # A single int applies to all rows.
    greater, tied = rank_counts(scores, 2)
    assert greater.tolist() == [1, 2, 0]
    assert tied.tolist() == [0, 0, 2]


def test_rank_counts_nan_names_the_row() -> None:
    scores = np.array([[0.5, 0.1], [0.5, np.nan], [0.1, 0.2]])
    with pytest.raises(ValueError, match=r"row 1 contains NaN"):
        rank_counts(scores)


def test_rank_counts_neg_inf_positive_names_the_row() -> None:
    scores = np.array([[0.5, 0.1], [0.2, NEG_INF]])
    with pytest.raises(ValueError, match=r"row 1.*-inf"):
        rank_counts(scores, np.array([0, 1]))
    # Even when every candidate is -inf too, the positive may not be excluded.
    with pytest.raises(ValueError, match=r"row 0.*-inf"):
        rank_counts(np.array([[NEG_INF, NEG_INF]]))


@pytest.mark.parametrize(
    ("positive", "match"),
    [(3, "outside"), (-1, "outside"), (np.array([0]), "shape"), (0.0, "integer")],
)
def test_rank_counts_rejects_bad_positive(positive: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rank_counts(np.zeros((2, 3)), positive)  # type: ignore[arg-type]


def test_rank_counts_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rank_counts(np.zeros(3))


def test_rank_counts_chunking_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    # Few distinct values so that ties are frequent; some candidates excluded.
    scores = rng.integers(0, 5, size=(37, 23)).astype(np.float64)
    scores[rng.random(scores.shape) < 0.2] = NEG_INF
    positive = rng.integers(0, 23, size=37)
    scores[np.arange(37), positive] = rng.integers(0, 5, size=37)
    expected_g = []
    expected_t = []
    for row, p in zip(scores, positive, strict=True):
        others = np.delete(row, p)
        others = others[others != NEG_INF]
        expected_g.append(int((others > row[p]).sum()))
        expected_t.append(int((others == row[p]).sum()))
    # Chunks of 2 rows (50 // 23) exercise boundaries and a short final chunk.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)
    greater, tied = rank_counts(scores, positive)
    assert greater.tolist() == expected_g
    assert tied.tolist() == expected_t
    # The NaN row index must be global, not relative to its chunk.
    scores[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"row 7 contains NaN"):
        rank_counts(scores, positive)


# --------------------------------------------------------------------------- per-row metrics


def test_perfect_scorer_gets_one_everywhere() -> None:
    g, t = rank_counts(np.array([[0.9, 0.1, 0.2, 0.3]]))
    for policy in ("expected", "pessimistic", "optimistic"):
        assert ranking_metrics(g, t, ks=(1, 3), ties=policy) == {
            "HR@1": 1.0,
            "NDCG@1": 1.0,
            "HR@3": 1.0,
            "NDCG@3": 1.0,
            "MRR": 1.0,
        }


def test_worst_scorer() -> None:
    # Rank 4 of 4: outside top 3, at the edge of top 4.
    g, t = rank_counts(np.array([[0.0, 0.1, 0.2, 0.3]]))
    assert hit_rate(g, t, 3).tolist() == [0.0]
    assert ndcg(g, t, 3).tolist() == [0.0]
    assert hit_rate(g, t, 4).tolist() == [1.0]
    assert ndcg(g, t, 4)[0] == pytest.approx(1 / math.log2(5))
    assert reciprocal_rank(g, t).tolist() == [0.25]


def test_tied_row_under_each_policy() -> None:
    # greater=2, tied=2: the positive's rank is one of 3, 4, 5.
    g = np.array([2])
    t = np.array([2])
    k = 3
    # pessimistic: rank 5 -> HR@3 = 0, NDCG@3 = 0, RR = 1/5.
    assert hit_rate(g, t, k, ties="pessimistic")[0] == 0.0
    assert ndcg(g, t, k, ties="pessimistic")[0] == 0.0
    assert reciprocal_rank(g, t, ties="pessimistic")[0] == pytest.approx(1 / 5)
    # optimistic: rank 3 -> HR@3 = 1, NDCG@3 = 1/log2(4) = 1/2, RR = 1/3.
    assert hit_rate(g, t, k, ties="optimistic")[0] == 1.0
    assert ndcg(g, t, k, ties="optimistic")[0] == pytest.approx(0.5)
    assert reciprocal_rank(g, t, ties="optimistic")[0] == pytest.approx(1 / 3)
    # expected: ranks 3, 4, 5 equally likely.
    #   HR@3   = (3 - 2) / 3 = 1/3
    #   NDCG@3 = (1/log2(4) + 0 + 0) / 3 = (1/2) / 3 = 1/6
    #   RR     = (1/3 + 1/4 + 1/5) / 3 = (47/60) / 3 = 47/180
    assert hit_rate(g, t, k)[0] == pytest.approx(1 / 3)
    assert ndcg(g, t, k)[0] == pytest.approx(1 / 6)
    assert reciprocal_rank(g, t)[0] == pytest.approx(47 / 180)
    # expected at k=4: HR = 2/3, NDCG = (1/log2(4) + 1/log2(5) + 0) / 3.
    assert hit_rate(g, t, 4)[0] == pytest.approx(2 / 3)
    assert ndcg(g, t, 4)[0] == pytest.approx((0.5 + 1 / math.log2(5)) / 3)
    # expected at k=5 covers every possible rank, so HR is exactly 1.
    assert hit_rate(g, t, 5)[0] == 1.0


def test_constant_scorer_is_chance_level() -> None:
    # 1 positive + 99 negatives all scored 0: greater=0, tied=99, ranks 1..100 uniform.
    g, t = rank_counts(np.zeros((1, 100)))
    assert (g[0], t[0]) == (0, 99)
    assert hit_rate(g, t, 10)[0] == pytest.approx(0.1, rel=1e-15, abs=0.0)
    # NDCG@10 = sum_{r=1..10} 1/log2(r+1) / 100; MRR = H(100) / 100.
    expected_ndcg = math.fsum(_log2_gain(r) for r in range(1, 11)) / 100
    expected_mrr = math.fsum(1 / r for r in range(1, 101)) / 100
    result = ranking_metrics(g, t, ks=(10,))
    assert result["HR@10"] == pytest.approx(0.1, rel=1e-15, abs=0.0)
    assert result["NDCG@10"] == pytest.approx(expected_ndcg, rel=1e-14)
    assert result["MRR"] == pytest.approx(expected_mrr, rel=1e-14)
    # The one-sided policies give the misleading extremes.
    assert ranking_metrics(g, t, ks=(10,), ties="optimistic")["HR@10"] == 1.0
    assert ranking_metrics(g, t, ks=(10,), ties="pessimistic")["HR@10"] == 0.0


def test_mrr_values_and_no_truncation() -> None:
    # Ranks 1, 2, 4 and 50 without ties: MRR = (1 + 1/2 + 1/4 + 1/50) / 4.
    g = np.array([0, 1, 3, 49])
    t = np.zeros(4, dtype=np.int64)
    assert reciprocal_rank(g, t).tolist() == [1.0, 0.5, 0.25, 0.02]
    result = ranking_metrics(g, t, ks=(1, 2))
    assert result["MRR"] == pytest.approx((1 + 0.5 + 0.25 + 0.02) / 4)
    # HR@1: only rank 1 -> 1/4; HR@2: ranks 1, 2 -> 2/4; NDCG@2 = (1 + 1/log2(3)) / 4.
    assert result["HR@1"] == pytest.approx(0.25)
    assert result["HR@2"] == pytest.approx(0.5)
    assert result["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert list(result) == ["HR@1", "NDCG@1", "HR@2", "NDCG@2", "MRR"]


@pytest.mark.parametrize("k", [1, 3, 10])
def test_expected_policy_matches_brute_force_average(k: int) -> None:
    rng = np.random.default_rng(1)
    g = rng.integers(0, 15, size=200)
    t = rng.integers(0, 15, size=200)
    hr = hit_rate(g, t, k)
    nd = ndcg(g, t, k)
    rr = reciprocal_rank(g, t)
    for i in range(200):
        ranks = range(g[i] + 1, g[i] + t[i] + 2)
        n = len(ranks)
        assert hr[i] == pytest.approx(sum(r <= k for r in ranks) / n, abs=1e-15)
        assert nd[i] == pytest.approx(
            math.fsum(_log2_gain(r) for r in ranks if r <= k) / n, abs=1e-15
        )
        assert rr[i] == pytest.approx(math.fsum(1 / r for r in ranks) / n, rel=1e-13)


@pytest.mark.parametrize(
    ("greater", "tied"),
    [(0, 40_000), (4_000, 200), (5_000, 3), (123_456, 0), (1_000_000, 1), (10**9, 10)],
)
def test_expected_reciprocal_rank_for_large_ranks(greater: int, tied: int) -> None:
    # Beyond the harmonic table the asymptotic expansion takes over; both must agree with
    # an exact sum to near float precision.
    rr = reciprocal_rank(np.array([greater]), np.array([tied]))[0]
    lo, hi = greater + 1, greater + tied + 1
    exact = math.fsum(1 / r for r in range(lo, min(hi, lo + 100_000) + 1)) / (tied + 1)
    assert rr == pytest.approx(exact, rel=1e-12)


def test_policies_differ_only_on_ties() -> None:
    # Without ties all three policies agree.
    g = np.array([0, 3, 12])
    t = np.zeros(3, dtype=np.int64)
    base = ranking_metrics(g, t, ks=(5, 20))
    assert ranking_metrics(g, t, ks=(5, 20), ties="pessimistic") == base
    assert ranking_metrics(g, t, ks=(5, 20), ties="optimistic") == base


def test_ranking_metrics_errors() -> None:
    empty = np.array([], dtype=np.int64)
    with pytest.raises(ValueError, match="at least one row"):
        ranking_metrics(empty, empty)
    one = np.array([0])
    with pytest.raises(ValueError, match="ties must be one of"):
        ranking_metrics(one, one, ties="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ranking_metrics(one, one, ks=(0,))
    with pytest.raises(ValueError, match="non-negative"):
        hit_rate(np.array([-1]), one, 10)
    with pytest.raises(ValueError, match="integer counts"):
        hit_rate(np.array([0.5]), one, 10)
    with pytest.raises(ValueError, match="differ in shape"):
        ndcg(np.array([0, 1]), one, 10)


# --------------------------------------------------------------------------- AUC


def test_auc_with_ties_by_hand() -> None:
    # Positives score 0.5 and 0.9; negatives 0.5 and 0.1. Pairs (pos, neg):
    #   (0.5, 0.5) tie -> 1/2, (0.5, 0.1) -> 1, (0.9, 0.5) -> 1, (0.9, 0.1) -> 1
    # AUC = 3.5 / 4 = 0.875.
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(0.875)


def test_auc_perfect_reversed_and_constant() -> None:
    labels = [0, 0, 1, 1, 1]
    assert auc(labels, [0.1, 0.2, 0.3, 0.4, 0.5]) == 1.0
    assert auc(labels, [0.5, 0.4, 0.3, 0.2, 0.1]) == 0.0
    # Every pair tied -> 1/2 each.
    assert auc(labels, [0.3] * 5) == pytest.approx(0.5)


def test_auc_accepts_bool_and_float_labels() -> None:
    scores = [0.2, 0.8, 0.4]
    # Pairs: (0.8, 0.2) -> 1, (0.8, 0.4) -> 1... only one positive: AUC = 2/2 = 1.
    assert auc(np.array([False, True, False]), scores) == 1.0
    # Positive 0.4 beats 0.2, loses to 0.8 -> 1/2.
    assert auc(np.array([0.0, 0.0, 1.0]), scores) == pytest.approx(0.5)


def test_auc_errors() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both classes"):
        auc([], [])
    with pytest.raises(ValueError, match=r"labels\[1\] = 2"):
        auc([1, 2, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"scores\[2\] is NaN"):
        auc([1, 0, 0], [0.1, 0.2, np.nan])
    with pytest.raises(ValueError, match="shape"):
        auc([1, 0], [0.1, 0.2, 0.3])


def test_auc_matches_sklearn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=500)
    scores = np.round(rng.random(500) + 0.3 * labels, 1)  # rounding forces many ties
    assert auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), rel=1e-12)


# --------------------------------------------------------------------------- GAUC


def test_gauc_weights_by_rows_and_skips_single_class_users() -> None:
    # User "a" (3 rows): positive 0.9 beats 0.5, loses to 0.95 -> AUC 1/2.
    # User "b" (2 rows): positive 0.8 beats 0.2 -> AUC 1.
    # User "c" (2 rows): all positive -> skipped, contributing no weight.
    # GAUC = (3 * 1/2 + 2 * 1) / (3 + 2) = 3.5 / 5 = 0.7
    # (unweighted would be 0.75; counting c's rows in the weights would give 0.5).
    users = ["b", "a", "c", "a", "b", "c", "a"]
    labels = [1, 1, 1, 0, 0, 1, 0]
    scores = [0.8, 0.9, 0.3, 0.5, 0.2, 0.7, 0.95]
    assert gauc(users, labels, scores) == pytest.approx(0.7)


def test_gauc_ties_within_a_user_only() -> None:
    # User 1: positive and negative both 0.4 -> 1/2. User 2: positive 0.4 beats 0.1 -> 1.
    # The 0.4 of user 2's positive must not tie with user 1's negative.
    # GAUC = (2 * 1/2 + 2 * 1) / 4 = 0.75.
    assert gauc([1, 1, 2, 2], [1, 0, 1, 0], [0.4, 0.4, 0.4, 0.1]) == pytest.approx(0.75)


def test_gauc_matches_per_user_auc() -> None:
    rng = np.random.default_rng(3)
    users = rng.integers(0, 40, size=600)
    labels = rng.integers(0, 2, size=600)
    scores = np.round(rng.random(600), 1)
    num = 0.0
    den = 0
    for u in np.unique(users):
        m = users == u
        if 0 < labels[m].sum() < m.sum():
            num += m.sum() * auc(labels[m], scores[m])
            den += int(m.sum())
    assert gauc(users, labels, scores) == pytest.approx(num / den, rel=1e-12)


def test_gauc_errors() -> None:
    with pytest.raises(ValueError, match="both classes"):
        gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="users must have shape"):
        gauc([1, 2], [1, 0, 1], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------- log loss


def test_log_loss_by_hand() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2 = -(ln 0.8 + ln 0.6) / 2 ~= 0.36698
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(expected)
    assert expected == pytest.approx(0.366985, abs=1e-6)


def test_log_loss_clips_confident_mistakes() -> None:
    # p = 1 for a negative is clipped to 1 - eps: loss = -ln(eps).
    assert log_loss([0], [1.0], eps=1e-7) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))


def test_log_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"probs\[1\].*outside"):
        log_loss([1, 0], [0.5, 1.5])
    with pytest.raises(ValueError, match=r"probs\[0\] is NaN"):
        log_loss([1, 0], [np.nan, 0.5])
    with pytest.raises(ValueError, match="at least one row"):
        log_loss([], [])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        log_loss([0.5], [0.5])
