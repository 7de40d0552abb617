"""Candidate retrieval on real ml-100k embeddings: exactness, exclusions, recall, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedllmrec.data.prepare import Prepared
from fedllmrec.errors import FedLLMRecError
from fedllmrec.eval import evaluate_ranking
from fedllmrec.models import Popularity
from fedllmrec.retrieval import IndexConfig, ItemIndex
from fedllmrec.retrieval.history import (
    candidates_for_users,
    exclusions,
    history_queries,
    popularity_top,
    retrieval_recall,
)
from fedllmrec.semantics import embed_items


@pytest.fixture(scope="module")
def vectors(ml100k_prepared: Prepared) -> np.ndarray:
    return embed_items(ml100k_prepared.dataset)


def test_exact_search_equals_brute_force_and_excludes_seen(
    ml100k_prepared: Prepared, vectors: np.ndarray
) -> None:
    split = ml100k_prepared.split
    users = np.arange(50)
    queries, has = history_queries(vectors, split.observed("test"), users)
    assert has.all()
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    excluded = exclusions(split, users)
    scores, ids = candidates_for_users(ItemIndex.build(vectors), split, users, queries, 20)
    brute = queries @ vectors.T  # (50, 1682)
    for r, user in enumerate(users.tolist()):
        brute[r, split.touched.items_of(user)] = -np.inf
        assert not np.isin(ids[r], excluded[r]).any()
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :20]
    # Same top-20 scores, and every returned item really has its returned score; ids may
    # differ only where two items' scores agree to float precision (faiss and numpy sum
    # in different orders).
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(brute, ids, axis=1), scores, atol=1e-5)
    assert (ids == expected).mean() > 0.95


def test_recall_is_measured_against_popularity(
    ml100k_prepared: Prepared, vectors: np.ndarray
) -> None:
    index = ItemIndex.build(vectors, config=IndexConfig(kind="exact"))
    result = retrieval_recall(index, vectors, ml100k_prepared, ks=(10, 100))
    assert result["rows"] == 943 and result["rows_without_history"] == 0
    text, pop = result["text"], result["popularity"]
    assert 0 < text["Recall@10"] <= text["Recall@100"] <= 1
    assert pop["Recall@10"] <= pop["Recall@100"]
    # Popularity's Recall@10 is its full-rank HR@10 with popularity ties broken by item id,
    # so it lies between the pessimistic and optimistic tie policies of the protocol.
    model = Popularity().fit(ml100k_prepared.split)
    bounds = [
        evaluate_ranking(model, ml100k_prepared, mode="full", ties=policy)["metrics"]["HR@10"]
        for policy in ("pessimistic", "optimistic")
    ]
    assert bounds[0] <= pop["Recall@10"] <= bounds[1]


def test_popularity_top_skips_excluded(ml100k_prepared: Prepared) -> None:
    split = ml100k_prepared.split
    excluded = exclusions(split, np.array([0, 1]))
    top = popularity_top(split, 0, 30, excluded)
    for r in range(2):
        assert not np.isin(top[r], excluded[r]).any()
        assert (top[r] >= 0).all() and np.unique(top[r]).shape[0] == 30


def test_cli_retrieve_prints_unseen_candidates(data_root: Path, ml100k_prepared: Prepared) -> None:
    exe = Path(sys.executable).parent / "fedllmrec"
    out = subprocess.run(
        [str(exe), "retrieve", "ml-100k", "--user", "1", "--k", "5", "--data-dir", str(data_root)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ds = ml100k_prepared.dataset
    seen = set(ds.items.column("item_id").to_numpy(zero_copy_only=False)[ds.item[ds.user == 0]])
    listed = [line.split("│")[2].strip() for line in out.splitlines() if line.count("│") >= 5]
    assert len(listed) == 5
    assert seen.isdisjoint(listed)


class _TargetFirst:
    """A scorer that knows the held-out item: the target scores 1, every other item 0."""

    def __init__(self, prepared: Prepared) -> None:
        ds, split = prepared.dataset, prepared.split
        rows = split.rows("test")
        self.target = dict(zip(ds.user[rows].tolist(), ds.item[rows].tolist(), strict=True))

    def score(self, users: np.ndarray, items: np.ndarray, history: object) -> np.ndarray:
        target = np.array([self.target[int(u)] for u in users])
        return (items == target[:, None]).astype(np.float32)


def test_retrieved_lists_exclude_touched_items_are_saved_and_rank_end_to_end(
    ml100k_prepared: Prepared, vectors: np.ndarray
) -> None:
    from fedllmrec.eval.evaluators import RankingEvaluator
    from fedllmrec.eval.retrieved import retrieved_lists

    split = ml100k_prepared.split
    lists = retrieved_lists(ml100k_prepared, "test")
    assert lists.items.shape == (943, 20)
    touched = exclusions(split, lists.users, keep=lists.targets)
    for r in range(lists.users.shape[0]):
        assert not np.isin(lists.items[r], touched[r]).any()  # only the target may be seen
    # The lists are the in-domain history query's exact top 20 (ml-100k: one domain).
    queries, _ = history_queries(vectors, split.observed("test"), lists.users[:30])
    brute = queries @ vectors.T
    np.testing.assert_allclose(
        np.take_along_axis(brute, lists.items[:30], axis=1), lists.scores[:30], atol=1e-5
    )
    saved = list((ml100k_prepared.folder / "retrieved").glob("test-top20-*.npz"))
    assert len(saved) == 1
    again = retrieved_lists(ml100k_prepared, "test")  # read back from the saved file
    np.testing.assert_array_equal(again.items, lists.items)

    evaluator = RankingEvaluator(ml100k_prepared, modes=("retrieved-20",), ks=(1, 5))
    oracle = evaluator(_TargetFirst(ml100k_prepared), "test")
    recall = float(lists.found.mean())
    assert 0 < recall < 1
    assert oracle["retrieved-20/recall@20"] == pytest.approx(recall)
    # A perfect ranker is capped by retrieval: HR@1 = recall, and 1 within the found rows.
    assert oracle["retrieved-20/HR@1"] == pytest.approx(recall)
    assert oracle["retrieved-20/within/HR@1"] == pytest.approx(1.0)
    assert set(oracle) == set(evaluator.metric_names())
    popular = evaluator(Popularity().fit(split), "test")
    assert popular["retrieved-20/HR@5"] <= popular["retrieved-20/recall@20"]
    assert popular["retrieved-20/within/HR@1"] < 1.0


def test_recommend_ranks_the_retrieved_untouched_items_with_the_runs_model(
    ml100k_prepared: Prepared, ml100k_root: Path, vectors: np.ndarray, tmp_path: Path
) -> None:
    from fedllmrec.recipes import load_recipe, run_recipe
    from fedllmrec.recipes.recommend import recommend

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "popularity-ml100k.toml")
    run_recipe(recipe, tmp_path, data_dir=ml100k_root, quiet=True)
    dataset = ml100k_prepared.dataset
    user = dataset.users.column("user_id")[7].as_py()
    rows = recommend(tmp_path, user, dataset.domains[0], k=20)
    assert [row.rank for row in rows] == list(range(1, 21))
    ids = dataset.items.column("item_id").to_pylist()
    dense = np.asarray([ids.index(row.item_id) for row in rows])
    touched = ml100k_prepared.split.touched.items_of(7)
    assert not np.isin(dense, touched).any()  # never an item the user already touched
    # The 20 are the exact top 20 of the whole-history query, re-ranked by popularity.
    query, _ = history_queries(vectors, ml100k_prepared.split.touched, np.asarray([7]))
    brute = (query @ vectors.T)[0]
    brute[touched] = -np.inf
    np.testing.assert_allclose(sorted(brute[dense]), sorted(np.sort(brute)[-20:]), atol=1e-5)
    np.testing.assert_allclose([row.retrieval_score for row in rows], brute[dense], atol=1e-5)
    counts = (
        Popularity()
        .fit(ml100k_prepared.split)
        .score(np.asarray([7]), dense[None, :], ml100k_prepared.split.touched)[0]
    )
    np.testing.assert_allclose([row.model_score for row in rows], counts)
    scores = [row.model_score for row in rows]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(FedLLMRecError, match="not in ml-100k"):
        recommend(tmp_path, "no-such-user")
