"""The popularity prior added at scoring, its weight chosen on validation, on real ml-100k."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import pytest

from fedllmrec.data.prepare import Prepared
from fedllmrec.data.split import TRAIN, Split, UserItemSet
from fedllmrec.errors import RecipeError
from fedllmrec.eval.evaluators import RankingEvaluator
from fedllmrec.models import ItemKNN, Popularity
from fedllmrec.models.prior import PopularityPrior
from fedllmrec.recipes import load_recipe, run_recipe
from fedllmrec.recipes.recipe import load_run
from fedllmrec.train import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Noise:
    """Fixed pseudo-random scores per (user, item): a model that knows nothing."""

    n_items: int = 0

    def fit(self, split: Split) -> Self:
        self.n_items = split.dataset.n_items
        return self

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        keys = users[:, None].astype(np.int64) * self.n_items + items  # (R, C)
        return ((keys * 2654435761) % 1000003 / 1000003.0).astype(np.float32)


def evaluator(prepared: Prepared) -> RankingEvaluator:
    return RankingEvaluator(prepared, modes=("full", "sampled"), ks=(10,))


def test_prior_adds_weighted_log_training_counts(ml100k_prepared: Prepared) -> None:
    split = ml100k_prepared.split
    knn = ItemKNN().fit(split)
    users = np.array([0, 5, 9])
    items = np.array([[1, 2, 50], [3, 300, 7], [0, 0, 1000]])
    history = split.observed("valid")
    counts = np.bincount(split.dataset.item[split.role == TRAIN], minlength=split.dataset.n_items)
    plain = knn.score(users, items, history)
    assert np.array_equal(PopularityPrior(knn, 0.0).fit(split).score(users, items, history), plain)
    with_prior = PopularityPrior(knn, 0.5).fit(split).score(users, items, history)
    np.testing.assert_allclose(with_prior, plain + 0.5 * np.log1p(counts[items]), rtol=1e-6)
    with pytest.raises(RuntimeError, match="fit"):
        PopularityPrior(knn, 0.5).score(users, items, history)


def test_trainer_keeps_the_weight_that_validates_best(
    ml100k_prepared: Prepared, tmp_path: Path
) -> None:
    weights = (0.01, 1.0, 100.0)
    config = TrainerConfig(monitor="full/NDCG@10", prior_weights=weights)
    metrics = Trainer(config, quiet=True).run(
        Noise(), ml100k_prepared, evaluator(ml100k_prepared), tmp_path
    )
    tried = metrics["prior"]["valid"]
    assert set(tried) == {"0.0", "0.01", "1.0", "100.0"}
    best = max(tried, key=lambda w: tried[w])
    assert metrics["prior"]["weight"] == float(best) > 0  # noise gains from popularity
    assert metrics["valid"]["full/NDCG@10"] == tried[best]
    assert metrics["history"][0]["full/NDCG@10"] == tried["0.0"]  # the model alone
    chosen = PopularityPrior(Noise().fit(ml100k_prepared.split), float(best))
    assert evaluator(ml100k_prepared)(chosen.fit(ml100k_prepared.split), "test") == metrics["test"]


def test_a_prior_that_changes_no_ranking_is_not_chosen(
    ml100k_prepared: Prepared, tmp_path: Path
) -> None:
    # Popularity plus its own log counts ranks the same: every weight ties, 0 is kept.
    config = TrainerConfig(monitor="full/NDCG@10", prior_weights=(0.5, 2.0))
    metrics = Trainer(config, quiet=True).run(
        Popularity(), ml100k_prepared, evaluator(ml100k_prepared), tmp_path
    )
    assert len(set(metrics["prior"]["valid"].values())) == 1
    assert metrics["prior"]["weight"] == 0.0


def test_load_run_scores_as_the_run_was_tested(
    ml100k_prepared: Prepared, ml100k_root: Path, tmp_path: Path
) -> None:
    recipe = load_recipe(REPO / "recipes/itemknn-ml100k.toml", ["trainer.prior_weights=[0.5, 4.0]"])
    metrics = run_recipe(recipe, tmp_path, data_dir=ml100k_root, quiet=True)
    model, prepared = load_run(tmp_path, data_dir=ml100k_root)
    weight = metrics["prior"]["weight"]
    assert isinstance(model, PopularityPrior) == (weight > 0)
    assert evaluator(prepared)(model, "test") == metrics["test"]


def test_recipes_refuse_a_prior_with_user_clients() -> None:
    with pytest.raises(RecipeError, match=r"trainer\.prior_weights.*no user client"):
        load_recipe(REPO / "recipes/fedavg-sasrec-ml100k.toml", ["trainer.prior_weights=[0.5]"])
    with pytest.raises(RecipeError, match=r"trainer\.prior_weights"):
        load_recipe(REPO / "recipes/itemknn-ml100k.toml", ["trainer.prior_weights=[-1.0]"])
    domains = load_recipe(REPO / "recipes/fkd-fed-art-office.toml")  # domain clients: allowed
    assert domains.trainer.prior_weights == (0.25, 0.5, 1.0)
