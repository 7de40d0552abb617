"""Evaluation candidates and training negatives never contain an item the user touched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedllmrec.data import RecDataset
from fedllmrec.data.candidates import (
    Candidates,
    LeakageError,
    NegativeSampler,
    assert_leak_free,
    sample_candidates,
)
from fedllmrec.data.prepare import Prepared, load_prepared, prepare
from fedllmrec.data.split import TEST, TRAIN, VALID, leave_one_out


def test_candidates_exclude_every_touched_item(art_office: RecDataset) -> None:
    split = leave_one_out(art_office)
    cands = sample_candidates(split, "test", n_negatives=99, seed=0)
    assert cands.items.shape == (19_150, 100)
    assert_leak_free(split, cands)
    # Spelled out for a few users, without the vectorised helper.
    for r in range(0, 19_150, 997):
        user = cands.user[r]
        touched = set(split.dataset.item[split.dataset.user == user].tolist())
        assert touched.isdisjoint(cands.items[r, 1:].tolist())
        # Negatives come from the positive's domain.
        assert (split.dataset.item_domain[cands.items[r]] == cands.domain[r]).all()


def test_candidates_are_seeded_and_nested(ml100k: RecDataset) -> None:
    split = leave_one_out(ml100k)
    a = sample_candidates(split, "test", seed=7)
    b = sample_candidates(split, "test", seed=7)
    c = sample_candidates(split, "test", seed=8)
    np.testing.assert_array_equal(a.items, b.items)
    assert (a.items[:, 1:] != c.items[:, 1:]).any()
    llm = a.head(19)
    assert llm.items.shape == (943, 20)
    np.testing.assert_array_equal(llm.items, a.items[:, :20])
    valid = sample_candidates(split, "valid", seed=7)
    assert (valid.items[:, 0] != a.items[:, 0]).any()


def test_prepared_candidates_are_saved_and_reused(
    ml100k_prepared: Prepared, data_root, tmp_path
) -> None:
    again = load_prepared(ml100k_prepared.folder)
    for role in ("valid", "test"):
        np.testing.assert_array_equal(
            again.candidates[role].items, ml100k_prepared.candidates[role].items
        )
        assert_leak_free(again.split, again.candidates[role])
    np.testing.assert_array_equal(again.split.role, ml100k_prepared.split.role)
    # prepare() on an existing folder reads it back instead of drawing again.
    reused = prepare("ml-100k", data_dir=data_root, out=ml100k_prepared.folder)
    np.testing.assert_array_equal(
        reused.candidates["test"].items, ml100k_prepared.candidates["test"].items
    )
    cands = ml100k_prepared.candidates["test"]
    cands.save(tmp_path / "c.parquet")
    loaded = Candidates.load(tmp_path / "c.parquet")
    np.testing.assert_array_equal(loaded.items, cands.items)
    assert (loaded.role, loaded.seed) == ("test", 0)


def test_leak_check_catches_a_leaky_candidate_list(ml100k_prepared: Prepared) -> None:
    split = ml100k_prepared.split
    cands = ml100k_prepared.candidates["test"]
    leaky_items = cands.items.copy()
    # The peer-code bug: the user's validation item drawn as a test negative.
    leaky_items[5, 3] = split.dataset.item[split.rows("valid")[5]]
    leaky = dataclasses.replace(cands, items=leaky_items)
    with pytest.raises(LeakageError, match="interacted with"):
        assert_leak_free(split, leaky)
    dup = cands.items.copy()
    dup[0, 2] = dup[0, 1]
    with pytest.raises(LeakageError, match="twice"):
        assert_leak_free(split, dataclasses.replace(cands, items=dup))


def test_training_negatives_never_hit_valid_or_test_items(ml100k: RecDataset) -> None:
    split = leave_one_out(ml100k)
    ds = split.dataset
    users = np.arange(ds.n_users)
    rng = np.random.default_rng(0)
    negatives = NegativeSampler(split).sample(users, 2000, rng)  # (943, 2000)
    held_out = np.full((ds.n_users, 2), -1)
    held_out[ds.user[split.role == VALID], 0] = ds.item[split.role == VALID]
    held_out[ds.user[split.role == TEST], 1] = ds.item[split.role == TEST]
    hits = (negatives[:, :, None] == held_out[:, None, :]).any(axis=(1, 2))
    assert not hits.any()
    train_pairs = split.observed("valid")
    assert not train_pairs.contains(users[:, None], negatives).any()
    # The same draw without excluding held-out items (as in peer code) does hit them:
    # the test above would catch that bug.
    naive = rng.integers(0, ds.n_items, size=(ds.n_users, 2000))
    naive_hits = (naive[:, :, None] == held_out[:, None, :]).any(axis=(1, 2))
    assert naive_hits.sum() > 500
    assert (split.role == TRAIN).sum() == 98_114
