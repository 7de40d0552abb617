"""The three real datasets load into the canonical schema with their exact published counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from fedllmrec.data import RecDataset, load_dataset
from fedllmrec.data.generic import load_generic


def test_ml100k_counts_and_fields(ml100k: RecDataset) -> None:
    stats = ml100k.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert stats["domains"] == {
        "movies": {"users": 943, "items": 1682, "items_interacted": 1682, "interactions": 100_000}
    }
    items = ml100k.items.to_pylist()
    # u.item is latin-1: this title has an accented character that UTF-8 decoding would break.
    titles = {row["item_id"]: row["title"] for row in items}
    assert titles["1"] == "Toy Story (1995)"
    assert any("é" in t for t in titles.values())
    assert items[0]["category"] == "Animation, Children's, Comedy"
    assert set(np.unique(ml100k.label)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ml100k.private_attributes == ("age", "gender", "occupation", "zip")
    user1 = ml100k.users.to_pylist()[0]
    assert (user1["user_id"], user1["age"], user1["gender"], user1["occupation"]) == (
        "1",
        24,
        "M",
        "technician",
    )


def test_kuaisar_counts_and_user_features_by_id(kuaisar: RecDataset) -> None:
    stats = kuaisar.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (1791, 69_704, 117_590)
    assert stats["clicks"] == 60_451
    assert stats["domains"]["videos"]["clicks"] == 60_451
    # user_features.csv is shuffled (its first row is user 660); MRFF's released code
    # looks features up by row position. Here row u of the users table is user id u.
    users = kuaisar.users.to_pylist()
    assert [u["user_id"] for u in users[:3]] == ["0", "1", "2"]
    user660 = users[660]
    assert user660["user_id"] == "660"
    assert (user660["onehot_feat1"], user660["onehot_feat2"]) == (4, 1)
    assert (user660["search_active_level"], user660["reco_active_level"]) == (0, 1)
    video = kuaisar.items.to_pylist()[7096]
    assert video["item_id"] == "7096"
    assert (video["item_type"], video["upload_type"], video["first_level_category_name"]) == (
        0, 14, 25
    )  # fmt: skip
    assert kuaisar.time_unit == "ms"
    assert kuaisar.timestamp.min() > 1_684_000_000_000  # milliseconds of 2023-05


def test_art_office_counts_domains_and_offset(art_office: RecDataset) -> None:
    stats = art_office.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (9577, 38_396, 208_541)
    assert stats["users_in_all_domains"] == 9577
    assert stats["domains"]["arts"]["items"] == 18_639
    assert stats["domains"]["office"]["items"] == 19_757
    assert stats["domains"]["office"]["items_interacted"] == 15_780
    items = art_office.items.to_pylist()
    # The item id of the canonical table is the sequences' id: Office ids start at 18,639.
    assert items[18_639]["item_id"] == "18639" and items[18_639]["domain"] == "office"
    assert items[18_638]["domain"] == "arts"
    assert items[0]["title"].startswith("fletcher terry co framers")
    assert art_office.time_unit == "position"


def test_save_load_round_trip_and_hf_view(ml100k: RecDataset, tmp_path: Path) -> None:
    ml100k.save(tmp_path / "ds")
    again = RecDataset.load(tmp_path / "ds")
    assert again.interactions.equals(ml100k.interactions)
    assert again.items.equals(ml100k.items)
    assert again.stats() == ml100k.stats()
    hf = ml100k.to_hf()
    assert hf["interactions"].num_rows == 100_000
    assert hf["items"][0]["title"] == "Toy Story (1995)"


def test_generic_format_round_trip(kuaisar: RecDataset, tmp_path: Path) -> None:
    """A dataset written in the documented generic format loads back to the same counts."""
    folder = tmp_path / "mine"
    folder.mkdir()
    inter = kuaisar.interactions
    users = kuaisar.users.column("user_id").to_numpy(zero_copy_only=False)
    items = kuaisar.items.column("item_id").to_numpy(zero_copy_only=False)
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "user_id": users[inter.column("user").to_numpy()],
                "item_id": items[inter.column("item").to_numpy()],
                "timestamp": inter.column("timestamp"),
                "label": inter.column("label"),
            }
        ),
        folder / "interactions.parquet",
    )
    (folder / "items.csv").write_text(
        "item_id,domain,title\n" + "".join(f"{i},videos,video {i}\n" for i in items)
    )
    (folder / "dataset.json").write_text(
        json.dumps({"name": "mine", "time_unit": "ms", "label_kind": "click"})
    )
    mine = load_generic(folder)
    assert mine.stats()["interactions"] == 117_590
    assert mine.stats()["clicks"] == 60_451
    assert mine.n_users == 1791 and mine.n_items == 69_704
    # Same canonical order, so the same per-user sequences.
    np.testing.assert_array_equal(items[mine.item][:50], items[kuaisar.item][:50])
    assert load_dataset(folder).name == "mine"


def test_cli_stats_json(data_root: Path) -> None:
    exe = Path(sys.executable).parent / "fedllmrec"
    out = subprocess.run(
        [str(exe), "data", "stats", "art-office", "--json", "--data-dir", str(data_root)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    stats = json.loads(out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (9577, 38_396, 208_541)
    assert set(stats["domains"]) == {"arts", "office"}
    assert all(d["users"] == 9577 for d in stats["domains"].values())
