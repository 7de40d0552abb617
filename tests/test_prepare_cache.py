"""Prepared splits are keyed by content; small catalogues prepare with fewer (or no) negatives."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fedllmrec.data.digest import file_sha256
from fedllmrec.data.prepare import SAMPLED_NEGATIVES, load_prepared, prepare
from fedllmrec.data.split import UserItemSet
from fedllmrec.errors import FedLLMRecError
from fedllmrec.eval.evaluators import RankingEvaluator
from fedllmrec.eval.ranking import evaluate_ranking


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDLLMREC_CACHE", str(cache))
    return cache


def _write_dataset(folder: Path, users: int = 6, items: int = 12, per_user: int = 5) -> Path:
    """A generic-format folder: user k interacts with ``per_user`` consecutive items."""
    folder.mkdir(parents=True)
    rows = [f"u{u},i{(u + t) % items},{100 * u + t}" for u in range(users) for t in range(per_user)]
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text(
        "item_id,title\n" + "".join(f"i{i},Item {i}\n" for i in range(items))
    )
    return folder


def _drop_line(path: Path, line: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    del lines[line - 1]
    path.write_text("".join(lines))


def _prepared_folders(cache: Path) -> list[Path]:
    root = cache / "prepared"
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


class Constant:
    """A scorer that ranks every candidate the same (chance level under expected ties)."""

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        return np.zeros(items.shape, dtype=np.float32)


def test_edited_file_is_prepared_again(tmp_path: Path, _cache: Path) -> None:
    folder = _write_dataset(tmp_path / "shop")
    first = prepare(str(folder), n_negatives=3)
    assert first.dataset.n_interactions == 30
    assert prepare(str(folder), n_negatives=3).folder == first.folder  # reused as it is

    _drop_line(folder / "interactions.csv", 2)
    second = prepare(str(folder), n_negatives=3)
    assert second.dataset.n_interactions == 29
    assert second.folder != first.folder
    assert json.loads((second.folder / "manifest.json").read_text())["stats"]["interactions"] == 29
    assert len(_prepared_folders(_cache)) == 2

    # An explicit output folder prepared from older bytes is prepared again, too.
    out = tmp_path / "out"
    assert prepare(str(folder), n_negatives=3, out=out).dataset.n_interactions == 29
    _drop_line(folder / "interactions.csv", 2)
    assert prepare(str(folder), n_negatives=3, out=out).dataset.n_interactions == 28
    assert load_prepared(out).dataset.n_interactions == 28


def test_same_relative_path_from_two_folders(
    tmp_path: Path, _cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_dataset(tmp_path / "one" / "data", users=6)
    _write_dataset(tmp_path / "two" / "data", users=4)
    monkeypatch.chdir(tmp_path / "one")
    one = prepare("data", n_negatives=3)
    monkeypatch.chdir(tmp_path / "two")
    two = prepare("data", n_negatives=3)
    assert (one.dataset.n_users, two.dataset.n_users) == (6, 4)
    assert one.folder != two.folder
    assert len(_prepared_folders(_cache)) == 2
    monkeypatch.chdir(tmp_path / "one")
    assert prepare("data", n_negatives=3).dataset.n_users == 6
    manifest = json.loads((one.folder / "manifest.json").read_text())
    assert manifest["source"]["folder"] == str((tmp_path / "one" / "data").resolve())


def test_file_digest_is_remembered_until_the_file_changes(tmp_path: Path, _cache: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"a,b\n" * 100_000)
    old = time.time() - 60  # older than the racy window, so its digest may be remembered
    os.utime(path, (old, old))
    digest = file_sha256(path)
    assert [p.suffix for p in (_cache / "digests").iterdir()] == [".json"]
    assert file_sha256(path) == digest == file_sha256(path, remember=False)
    path.write_bytes(b"a,b\n" * 99_999 + b"a,c\n")  # same size, new bytes and mtime
    assert file_sha256(path) != digest


def test_small_catalogue_error_says_how_many_negatives_fit(tmp_path: Path) -> None:
    # Negatives come from the 10 items that occur in the data; each user touched 5.
    folder = _write_dataset(tmp_path / "tiny")
    with pytest.raises(FedLLMRecError) as err:
        prepare(str(folder))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{SAMPLED_NEGATIVES} requested" in msg and "user 'u0' has only 5 untouched" in msg
    assert "--negatives 5" in msg and "prepare(n_negatives=5)" in msg and "0 to" in msg
    assert not (tmp_path / "cache" / "prepared").exists()  # nothing half-prepared is left
    # The advised count works; one more does not.
    assert prepare(str(folder), n_negatives=5).n_negatives == 5
    with pytest.raises(FedLLMRecError, match="at most 5 negatives"):
        prepare(str(folder), n_negatives=6)


def test_fewer_negatives_are_saved_and_used_by_the_evaluator(tmp_path: Path) -> None:
    folder = _write_dataset(tmp_path / "tiny")
    prepared = prepare(str(folder), n_negatives=4)
    assert prepared.candidates["test"].items.shape == (6, 5)
    manifest = json.loads((prepared.folder / "manifest.json").read_text())
    assert manifest["negatives"] == {"sampled": 4, "llm": 4}
    again = load_prepared(prepared.folder)
    assert again.n_negatives == 4
    np.testing.assert_array_equal(again.candidates["test"].items, prepared.candidates["test"].items)

    # The evaluator's default is every saved negative: a constant scorer ranks 1 of 5.
    metrics = RankingEvaluator(again)(Constant(), "test")
    assert metrics["sampled/HR@10"] == pytest.approx(1.0)
    assert metrics["sampled/MRR"] == pytest.approx(np.mean(1 / np.arange(1, 6)))
    assert evaluate_ranking(Constant(), again, mode="sampled")["mode"] == "sampled-1+4"
    assert evaluate_ranking(Constant(), again, mode="sampled", n_negatives=2)["mode"] == (
        "sampled-1+2"
    )
    with pytest.raises(FedLLMRecError, match=r"5 sampled negatives requested, but 4 were saved"):
        RankingEvaluator(again, n_negatives=5)


def test_no_negatives_means_full_ranking_only(tmp_path: Path) -> None:
    folder = _write_dataset(tmp_path / "tiny")
    with_negatives = prepare(str(folder), n_negatives=3)
    prepared = prepare(str(folder), n_negatives=0)
    assert prepared.folder != with_negatives.folder  # the count is part of the key
    assert prepared.candidates == {} and prepared.n_negatives == 0
    assert not list(prepared.folder.glob("candidates_*"))
    assert load_prepared(prepared.folder).n_negatives == 0

    full = RankingEvaluator(prepared, modes=("full",))(Constant(), "test")
    assert set(full) == {"full/HR@10", "full/NDCG@10", "full/MRR"}
    for build in (
        lambda: RankingEvaluator(prepared),  # default modes include "sampled"
        lambda: evaluate_ranking(Constant(), prepared, mode="sampled"),
    ):
        with pytest.raises(FedLLMRecError) as err:
            build()
        msg = str(err.value)
        assert "\n" not in msg and "no sampled candidates" in msg
        assert 'modes = ["full"]' in msg and "--negatives N" in msg
    with pytest.raises(FedLLMRecError, match=">= 0"):
        prepare(str(folder), n_negatives=-1)


def test_recipe_sets_the_number_of_negatives(tmp_path: Path) -> None:
    from fedllmrec.recipes.recipe import load_recipe

    folder = _write_dataset(tmp_path / "tiny")
    recipe_file = Path(__file__).resolve().parents[1] / "recipes" / "popularity-ml100k.toml"
    recipe = load_recipe(recipe_file, [f'data.name="{folder}"', "data.negatives=3"])
    assert recipe.record()["data"]["negatives"] == 3
    prepared = recipe.prepare()
    assert prepared.n_negatives == 3
    assert "sampled/HR@10" in recipe.build_evaluator(prepared).metric_names()  # type: ignore[attr-defined]

    none = load_recipe(recipe_file, [f'data.name="{folder}"', "data.negatives=0"])
    # Its [eval] asks for "sampled": refused when the evaluator is built, not after training.
    with pytest.raises(FedLLMRecError, match=r'no sampled candidates.*modes = \["full"\]'):
        none.build_evaluator(none.prepare())
    full = load_recipe(
        recipe_file, [f'data.name="{folder}"', "data.negatives=0", 'eval.modes=["full"]']
    )
    assert full.build_evaluator(full.prepare()).metric_names() == [  # type: ignore[attr-defined]
        "full/HR@10",
        "full/NDCG@10",
        "full/MRR",
    ]
