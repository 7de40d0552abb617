"""Chronological leave-one-out: exact held-out items of named users, ties, filters, partitions."""

from __future__ import annotations

import numpy as np
import pytest

from fedllmrec.data import RecDataset
from fedllmrec.data.partition import partition_by_domain, partition_by_user
from fedllmrec.data.split import TEST, TRAIN, VALID, SplitConfig, k_core, leave_one_out


def held_out(ds: RecDataset, role: np.ndarray, user_id: str, domain: str | None = None) -> tuple:
    """(valid item id, test item id) of a raw user id, read through the raw-id tables."""
    user = ds.users.column("user_id").to_pylist().index(user_id)
    mask = ds.user == user
    if domain is not None:
        mask &= ds.domain == ds.domains.index(domain)
    item_ids = ds.items.column("item_id").to_pylist()
    valid = [item_ids[i] for i in ds.item[mask & (role == VALID)]]
    test = [item_ids[i] for i in ds.item[mask & (role == TEST)]]
    return valid[0], test[0]


def test_ml100k_named_users(ml100k: RecDataset) -> None:
    split = leave_one_out(ml100k)
    assert split.summary() == {"train": 98_114, "valid": 943, "test": 943}
    # User 1 rated items 74 and 102 in the same second; user 3 rated 320, 317, 181
    # in one second. u.data's order breaks the ties (the documented rule).
    assert held_out(split.dataset, split.role, "1") == ("74", "102")
    assert held_out(split.dataset, split.role, "2") == ("314", "281")
    assert held_out(split.dataset, split.role, "3") == ("317", "181")
    assert held_out(split.dataset, split.role, "253") == ("685", "192")
    assert held_out(split.dataset, split.role, "943") == ("228", "234")


def test_ml100k_timestamp_ties_are_common(ml100k: RecDataset) -> None:
    split = leave_one_out(ml100k)
    ts = split.dataset.timestamp
    valid_ts = ts[split.rows("valid")]
    test_ts = ts[split.rows("test")]
    # Rows are per user in canonical order, so valid/test rows align by user.
    assert int((valid_ts == test_ts).sum()) == 415
    # Held-out interactions are never older than any training interaction of the user.
    user = split.dataset.user
    for role in ("valid", "test"):
        rows = split.rows(role)
        last_train = np.zeros(split.dataset.n_users, dtype=np.int64)
        np.maximum.at(last_train, user[split.role == TRAIN], ts[split.role == TRAIN])
        assert (ts[rows] >= last_train[user[rows]]).all()


def test_kuaisar_named_users_follow_file_order(kuaisar: RecDataset) -> None:
    split = leave_one_out(kuaisar)
    assert split.summary() == {"train": 114_008, "valid": 1791, "test": 1791}
    assert held_out(split.dataset, split.role, "0") == ("11", "12")
    # Users 8 and 1790 saw their last two videos in the same millisecond.
    assert held_out(split.dataset, split.role, "8") == ("531", "532")
    assert held_out(split.dataset, split.role, "1790") == ("17879", "41063")


def test_art_office_per_domain(art_office: RecDataset) -> None:
    split = leave_one_out(art_office)
    ds = split.dataset
    # User 0: line 1 ends with Office item 22212, line 2 with Arts item 9.
    assert held_out(ds, split.role, "0", "arts") == ("8", "9")
    assert held_out(ds, split.role, "0", "office") == ("21806", "22212")
    # One valid and one test row per (user, domain) with at least 3 interactions.
    for d in range(2):
        counts = np.bincount(ds.user[ds.domain == d], minlength=ds.n_users)
        n_eval = int((counts >= 3).sum())
        assert int(((split.role == TEST) & (ds.domain == d)).sum()) == n_eval
        assert int(((split.role == VALID) & (ds.domain == d)).sum()) == n_eval
    across = leave_one_out(art_office, SplitConfig(per_domain=False))
    assert across.summary()["test"] == 9577
    # Across domains the last interaction is line 2's Arts target.
    assert held_out(across.dataset, across.role, "0")[1] == "9"


def test_k_core_and_max_history(ml100k: RecDataset) -> None:
    keep = k_core(ml100k.user, ml100k.item, 50, 50)
    users = ml100k.user[keep]
    items = ml100k.item[keep]
    assert (np.bincount(users)[np.unique(users)] >= 50).all()
    assert (np.bincount(items)[np.unique(items)] >= 50).all()
    assert 0 < keep.sum() < 100_000
    split = leave_one_out(ml100k, SplitConfig(min_user_interactions=50, min_item_interactions=50))
    assert split.dataset.n_interactions == int(keep.sum())
    short = leave_one_out(ml100k, SplitConfig(max_history=10))
    assert np.bincount(short.dataset.user).max() == 10
    # The most recent interactions are kept: the held-out items do not change.
    full = leave_one_out(ml100k)
    np.testing.assert_array_equal(
        short.dataset.item[short.rows("test")], full.dataset.item[full.rows("test")]
    )


def test_short_histories_are_train_only(kuaisar: RecDataset) -> None:
    split = leave_one_out(kuaisar, SplitConfig(max_history=2))
    assert split.summary() == {"train": 3582, "valid": 0, "test": 0}


def test_partitions_cover_every_interaction_once(art_office: RecDataset) -> None:
    split = leave_one_out(art_office)
    by_user = partition_by_user(split)
    assert len(by_user) == 9577
    rows = np.concatenate([c.rows for c in by_user])
    assert np.array_equal(np.sort(rows), np.arange(split.dataset.n_interactions))
    assert all((split.dataset.user[c.rows] == c.users[0]).all() for c in by_user[:100])
    by_domain = partition_by_domain(split)
    assert [c.client_id for c in by_domain] == ["domain-arts", "domain-office"]
    assert sum(c.rows.shape[0] for c in by_domain) == split.dataset.n_interactions
    for d, client in enumerate(by_domain):
        assert (split.dataset.domain[client.rows] == d).all()
        assert client.users.shape[0] == 9577


@pytest.mark.parametrize("config", [SplitConfig(), SplitConfig(per_domain=False)])
def test_split_is_deterministic(art_office: RecDataset, config: SplitConfig) -> None:
    a = leave_one_out(art_office, config)
    b = leave_one_out(art_office, config)
    np.testing.assert_array_equal(a.role, b.role)


def test_grid_hits_finds_the_pairs_contains_finds(art_office: RecDataset) -> None:
    # The full-ranking evaluator's exclusion: each user's touched items among a domain's
    # catalogue, from the user's own keys, equal to the (B, C) grid of lookups.
    split = leave_one_out(art_office)
    touched = split.touched
    rng = np.random.default_rng(0)
    users = np.concatenate([rng.choice(art_office.n_users, 64, replace=False), [0, 0]])
    for domain in range(len(art_office.domains)):
        catalogue = split.active_items(domain)
        grid = np.zeros((users.shape[0], catalogue.shape[0]), dtype=bool)
        rows, cols = touched.grid_hits(users, catalogue)
        grid[rows, cols] = True
        np.testing.assert_array_equal(grid, touched.contains(users[:, None], catalogue[None, :]))
        assert grid.sum() > users.shape[0]  # every user touched items of each domain
    empty = touched.grid_hits(users, catalogue[:0])
    assert empty[0].shape == empty[1].shape == (0,)
