"""Baselines under the protocol: sane values, chance for a constant scorer, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.split import UserItemSet
from fedllmrec.eval import evaluate_ranking
from fedllmrec.models import ItemKNN, ItemKNNConfig, Popularity, Recommender


class Constant:
    """Scores every item the same: must get exactly chance under expected ties."""

    def fit(self, split):  # type: ignore[no-untyped-def]
        return self

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        return np.zeros(items.shape)


class Oracle:
    """Knows the test items: an upper bound that checks the positive is really ranked."""

    def __init__(self, prepared: Prepared, role: str) -> None:
        ds = prepared.dataset
        rows = prepared.split.rows(role)
        self.target = dict(zip(ds.user[rows].tolist(), ds.item[rows].tolist(), strict=True))

    def fit(self, split):  # type: ignore[no-untyped-def]
        return self

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        targets = np.asarray([self.target[u] for u in users.tolist()])
        return (items == targets[:, None]).astype(float)


def test_constant_scorer_gets_chance(ml100k_prepared: Prepared) -> None:
    sampled = evaluate_ranking(Constant(), ml100k_prepared, mode="sampled")
    assert sampled["metrics"]["HR@10"] == pytest.approx(0.10)
    llm = evaluate_ranking(Constant(), ml100k_prepared, mode="sampled", n_negatives=19)
    assert llm["metrics"]["HR@10"] == pytest.approx(0.50)
    full = evaluate_ranking(Constant(), ml100k_prepared, mode="full")
    # Full ranking excludes each user's other touched items, so chance varies per user.
    ds = ml100k_prepared.dataset
    n_seen = np.bincount(ds.user, minlength=ds.n_users)
    chance = np.minimum(10 / (ds.n_items - n_seen + 1), 1.0).mean()
    assert full["metrics"]["HR@10"] == pytest.approx(chance)


def test_oracle_is_perfect(ml100k_prepared: Prepared) -> None:
    for mode in ("full", "sampled"):
        result = evaluate_ranking(Oracle(ml100k_prepared, "test"), ml100k_prepared, mode=mode)
        assert result["metrics"]["HR@10"] == 1.0
        assert result["metrics"]["MRR"] == 1.0


def test_baselines_beat_chance_and_knn_beats_popularity(ml100k_prepared: Prepared) -> None:
    pop = Popularity().fit(ml100k_prepared.split)
    knn = ItemKNN(ItemKNNConfig(neighbours=20)).fit(ml100k_prepared.split)
    assert isinstance(knn, Recommender)
    res = {
        (name, mode): evaluate_ranking(model, ml100k_prepared, mode=mode)["metrics"]
        for name, model in (("pop", pop), ("knn", knn))
        for mode in ("full", "sampled")
    }
    assert 0.30 < res["pop", "sampled"]["HR@10"] < res["knn", "sampled"]["HR@10"] < 0.9
    assert 0.03 < res["pop", "full"]["HR@10"] < res["knn", "full"]["HR@10"] < 0.5
    again = evaluate_ranking(
        ItemKNN(ItemKNNConfig(neighbours=20)).fit(ml100k_prepared.split), ml100k_prepared
    )
    assert again["metrics"] == res["knn", "sampled"]


def test_item_knn_scores_by_hand() -> None:
    """Three users, four items: the cosine item-item scores computed by hand."""
    import pyarrow as pa

    from fedllmrec.data import build_dataset
    from fedllmrec.data.split import Split, SplitConfig

    # u0: items 0,1   u1: items 0,1,2   u2: items 2,3 (all training)
    users = ["u0", "u0", "u1", "u1", "u1", "u2", "u2"]
    items = ["0", "1", "0", "1", "2", "2", "3"]
    ds = build_dataset(
        "toy",
        interactions={
            "user_id": np.asarray(users, dtype=object),
            "item_id": np.asarray(items, dtype=object),
            "timestamp": np.arange(7),
        },
        items={"item_id": ["0", "1", "2", "3"], "domain": ["d"] * 4},
        time_unit="position",
        label_kind="implicit",
    )
    split = Split(ds, np.zeros(7, dtype=np.int8), SplitConfig())
    knn = ItemKNN(ItemKNNConfig(neighbours=10)).fit(split)
    # cos(0,1) = 2/(sqrt2*sqrt2) = 1; cos(0,2) = 1/(sqrt2*sqrt2) = 0.5; cos(2,3) = 1/sqrt2.
    history = UserItemSet(ds.user, ds.item, 4)
    scores = knn.score(np.array([0]), np.array([[0, 1, 2, 3]]), history)
    # u0 history {0, 1}: score(2) = cos(0,2) + cos(1,2) = 0.5 + 0.5; score(3) = 0.
    np.testing.assert_allclose(scores[0, 2:], [1.0, 0.0], atol=1e-6)
    assert isinstance(ds.interactions, pa.Table)


def test_cold_only_scores_just_the_items_unseen_in_training(ml100k_prepared: Prepared) -> None:
    split, ds = ml100k_prepared.split, ml100k_prepared.dataset
    trained = set(ds.item[split.role == 0].tolist())
    rows = split.rows("test")
    cold_rows = [r for r in rows.tolist() if ds.item[r] not in trained]
    assert cold_rows, "ml-100k has test items never seen in training"
    for mode in ("full", "sampled"):
        cold = evaluate_ranking(Oracle(ml100k_prepared, "test"), ml100k_prepared, mode=mode,
                                cold_only=True)  # fmt: skip
        assert cold["rows"] == len(cold_rows) and cold["cold_only"]
        assert cold["metrics"]["HR@10"] == 1.0
    # Popularity has never seen a cold item: its expected full-rank HR@10 is tiny.
    pop = Popularity().fit(split)
    cold_pop = evaluate_ranking(pop, ml100k_prepared, mode="full", cold_only=True)["metrics"]
    assert cold_pop["HR@10"] < 0.05


def test_validation_on_a_user_subset_scores_just_those_users(ml100k_prepared: Prepared) -> None:
    from fedllmrec.eval.evaluators import RankingEvaluator

    knn = ItemKNN(ItemKNNConfig()).fit(ml100k_prepared.split)
    modes = ("full", "sampled")
    subset = RankingEvaluator(ml100k_prepared, modes=modes, valid_users=300, valid_seed=3)
    users = subset.validation_users
    assert users is not None and users.shape == (300,) and np.unique(users).shape == (300,)
    again = RankingEvaluator(ml100k_prepared, modes=modes, valid_users=300, valid_seed=3)
    np.testing.assert_array_equal(users, again.validation_users)  # the same users every time
    valid = subset(knn, "valid")
    ds, rows = ml100k_prepared.dataset, ml100k_prepared.split.rows("valid")
    for mode in modes:  # exactly what scoring those users' rows alone gives
        alone = evaluate_ranking(knn, ml100k_prepared, role="valid", mode=mode, only_users=users)
        assert alone["rows"] == int(np.isin(ds.user[rows], users).sum()) < rows.shape[0]
        assert valid[f"{mode}/HR@10"] == alone["metrics"]["HR@10"]
    # Test scores every user; a subset as large as the data is every user.
    everyone = RankingEvaluator(ml100k_prepared, modes=modes)
    assert subset(knn, "test") == everyone(knn, "test")
    assert RankingEvaluator(ml100k_prepared, valid_users=10**6).validation_users is None
    with pytest.raises(ValueError, match="valid_users"):
        RankingEvaluator(ml100k_prepared, valid_users=0)


def test_test_on_a_user_subset_scores_just_those_users(ml100k_prepared: Prepared) -> None:
    """``test_users``: the LLM rows' seeded subset; validation is unaffected by it."""
    from fedllmrec.eval.evaluators import RankingEvaluator

    knn = ItemKNN(ItemKNNConfig()).fit(ml100k_prepared.split)
    subset = RankingEvaluator(ml100k_prepared, modes=("sampled",), test_users=200, test_seed=1)
    users = subset.test_users_scored
    assert users is not None and users.shape == (200,) and subset.validation_users is None
    alone = evaluate_ranking(knn, ml100k_prepared, role="test", mode="sampled", only_users=users)
    assert subset(knn, "test")["sampled/HR@10"] == alone["metrics"]["HR@10"]
    everyone = RankingEvaluator(ml100k_prepared, modes=("sampled",))
    assert subset(knn, "valid") == everyone(knn, "valid")
    with pytest.raises(ValueError, match="test_users"):
        RankingEvaluator(ml100k_prepared, test_users=-1)


def test_a_user_subset_of_a_max_users_split_is_drawn_among_its_users(
    ml100k_root: Path, tmp_path: Path
) -> None:
    """A ``max_users`` split keeps the whole user table; the subset has rows to score."""
    from fedllmrec.data.prepare import prepare
    from fedllmrec.data.split import SplitConfig
    from fedllmrec.eval.evaluators import RankingEvaluator

    small = prepare("ml-100k", data_dir=ml100k_root, config=SplitConfig(max_users=100),
                    out=tmp_path / "small")  # fmt: skip
    present = np.unique(small.split.dataset.user)
    assert present.shape == (100,) and small.dataset.n_users == 943
    users = RankingEvaluator(small, modes=("sampled",), test_users=30).test_users_scored
    assert users is not None and users.shape == (30,) and np.isin(users, present).all()
    assert RankingEvaluator(small, modes=("sampled",), test_users=100).test_users_scored is None
