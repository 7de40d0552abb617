"""The frozen item encoder on real item text: determinism, semantics, cache behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedllmrec.data import RecDataset
from fedllmrec.errors import FedLLMRecError
from fedllmrec.semantics import EncoderConfig, ItemEncoder, embed_items, item_texts, load_template
from fedllmrec.semantics.cache import EmbeddingCache


@pytest.fixture(scope="module")
def titles(ml100k: RecDataset) -> dict[str, str]:
    return dict(
        zip(ml100k.items.column("item_id").to_pylist(), ml100k.items.column("title").to_pylist(),
            strict=True)
    )  # fmt: skip


def test_top_level_api_shape_norm_order(ml100k: RecDataset) -> None:
    from fedllmrec import embed_items as top_level

    texts = item_texts(ml100k)[:40]
    vectors = top_level(texts)
    assert vectors.shape == (40, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Order given is order returned, even though encoding sorts texts by length.
    reversed_vectors = embed_items(texts[::-1], use_cache=False)
    np.testing.assert_allclose(reversed_vectors[::-1], vectors, atol=1e-5)


def test_deterministic_and_cache_hit_equals_fresh(ml100k: RecDataset) -> None:
    texts = item_texts(ml100k)[:64]
    fresh = embed_items(texts, use_cache=False)
    again = embed_items(texts, use_cache=False)
    np.testing.assert_array_equal(fresh, again)
    encoder = ItemEncoder()
    first = encoder.encode(texts)
    cached = encoder.encode(texts)
    assert encoder.last_stats["cached"] == 64 and encoder.last_stats["embedded"] == 0
    np.testing.assert_array_equal(first, cached)
    np.testing.assert_allclose(first, fresh, atol=1e-5)


def test_similar_titles_score_higher(titles: dict[str, str]) -> None:
    # Real ml-100k titles: sequels versus an unrelated film.
    star_wars, empire, jedi = titles["50"], titles["172"], titles["181"]
    assert (star_wars, empire, jedi) == (
        "Star Wars (1977)", "Empire Strikes Back, The (1980)", "Return of the Jedi (1983)"
    )  # fmt: skip
    godfather, godfather2 = titles["127"], titles["187"]
    sense = titles["275"]  # Sense and Sensibility (1995)
    vectors = embed_items([star_wars, empire, jedi, godfather, godfather2, sense])
    sim = vectors @ vectors.T
    assert sim[3, 4] > sim[3, 5] and sim[3, 4] > sim[3, 0]
    assert sim[0, 2] > sim[0, 5]
    assert sim[0, 1] > sim[0, 5]


def test_changed_text_reembeds_only_that_item(ml100k: RecDataset) -> None:
    texts = item_texts(ml100k)[100:130]
    encoder = ItemEncoder()
    before = encoder.encode(texts)
    changed = list(texts)
    changed[7] = changed[7] + " Director's cut."
    after = encoder.encode(changed)
    assert encoder.last_stats["embedded"] == 1 and encoder.last_stats["cached"] == 29
    assert not np.allclose(after[7], before[7])
    np.testing.assert_array_equal(np.delete(after, 7, 0), np.delete(before, 7, 0))


def test_corrupted_cache_is_detected_and_rebuilt(ml100k: RecDataset) -> None:
    texts = item_texts(ml100k)[200:210]
    encoder = ItemEncoder()
    good = encoder.encode(texts)
    path = encoder.cache_file()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the stored vectors
    path.write_bytes(bytes(raw))
    again = encoder.encode(texts)
    assert encoder.last_stats["cache_rebuilt"] is True
    assert encoder.last_stats["embedded"] == 10
    np.testing.assert_allclose(again, good, atol=1e-6)
    path.write_bytes(b"not a zip file")
    assert len(EmbeddingCache(path, 384)) == 0 and not path.exists()


def test_templates_from_prompts_folder(tmp_path: Path, ml100k: RecDataset) -> None:
    assert item_texts(ml100k)[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    custom = tmp_path / "t.toml"
    custom.write_text('[ml-100k]\nsegments = ["{title}", "Brand: {brand}"]\n')
    # brand is empty for movies, so its segment is dropped.
    assert item_texts(ml100k, custom)[0] == "Toy Story (1995)"
    custom.write_text('[default]\nsegments = ["{nope}"]\n')
    with pytest.raises(FedLLMRecError, match="nope"):
        item_texts(ml100k, custom)
    with pytest.raises(FedLLMRecError, match="not found"):
        load_template("ml-100k", tmp_path / "missing.toml")


def test_every_dataset_has_nonempty_texts(kuaisar: RecDataset, art_office: RecDataset) -> None:
    for ds in (kuaisar, art_office):
        texts = item_texts(ds)
        assert len(texts) == ds.n_items
        assert all(texts)
    assert item_texts(kuaisar)[0].startswith("Short video of type")


def test_custom_model_path_and_bad_path(tmp_path: Path) -> None:
    with pytest.raises(FedLLMRecError, match="not a sentence-transformers model"):
        ItemEncoder(EncoderConfig(model=str(tmp_path)))
    default = ItemEncoder()
    by_path = ItemEncoder(EncoderConfig(model=str(default.model_path)))
    assert by_path.identity == default.identity
    assert json.loads((default.model_path / "config.json").read_text())["hidden_size"] == 384


def test_items_without_text_are_reported(
    tmp_path: Path, ml100k: RecDataset, caplog: pytest.LogCaptureFixture
) -> None:
    from fedllmrec.data.generic import load_generic

    folder = tmp_path / "shop"
    folder.mkdir()
    titles = ["Red kettle", "", "", "Blue mug", "", "", "", ""]
    (folder / "items.csv").write_text(
        "item_id,title\n" + "".join(f"p{i},{t}\n" for i, t in enumerate(titles))
    )
    (folder / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{i % 2},p{i},{i}\n" for i in range(8))
    )
    dataset = load_generic(folder)
    with caplog.at_level("WARNING", logger="fedllmrec.semantics"):
        texts = item_texts(dataset)
    assert texts[0] == "Red kettle" and texts[1] == ""
    [record] = caplog.records
    msg = record.getMessage()
    assert record.levelname == "WARNING" and "\n" not in msg
    assert "6 of 8 items have an empty text" in msg
    # The first five empty items are named, and the list says it goes on.
    assert "item_id 'p1', 'p2', 'p4', 'p5', 'p6', ..." in msg and "'p7'" not in msg
    assert "same embedding" in msg and "shop" in msg

    caplog.clear()
    with caplog.at_level("WARNING", logger="fedllmrec.semantics"):
        item_texts(ml100k)
    assert caplog.records == []  # every real movie has a title
