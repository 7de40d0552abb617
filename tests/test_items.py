"""Item representations: ID, frozen text through a projection, categorical features."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from fedllmrec.models.items import ItemEmbedding, ItemEmbeddingConfig, categorical_matrix


def test_text_part_is_frozen_and_padding_is_zero() -> None:
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(30, 384), dim=1)
    emb = ItemEmbedding(ItemEmbeddingConfig(30, 16, source="id+text"), text=text).eval()
    names = {n for n, _ in emb.named_parameters()}
    assert "text" not in names and "text" in dict(emb.named_buffers())
    table = emb.table()
    assert table.shape == (31, 16)
    assert torch.equal(table[0], torch.zeros(16))
    # id+text is the sum of both parts.
    only_text = emb.text_proj(emb.text[1:])  # type: ignore[misc]
    torch.testing.assert_close(table[1:], emb.id_emb.weight[1:] + only_text)  # type: ignore[union-attr]


def test_text_only_items_with_the_same_text_share_a_vector() -> None:
    """A cold item gets its vector from its text alone, the same as a trained twin's."""
    text = torch.randn(5, 384)
    text[4] = text[1]
    emb = ItemEmbedding(ItemEmbeddingConfig(5, 8, source="text"), text=text).eval()
    table = emb.table()
    torch.testing.assert_close(table[2], table[5])
    assert not torch.allclose(table[2], table[3])


def test_text_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="text tensor"):
        ItemEmbedding(ItemEmbeddingConfig(5, 8, source="text"), text=torch.zeros(4, 384))


def test_feature_codes_are_placed_by_id_not_row_position() -> None:
    table = pa.table({"item": [2, 0, 1], "colour": [30, 10, 20], "size": [7, 7, 9]})
    codes, cards = categorical_matrix(table, "item", ("colour", "size"), 3)
    assert cards == (3, 2)
    np.testing.assert_array_equal(codes, [[0, 0], [1, 1], [2, 0]])
    with pytest.raises(ValueError, match="exactly once"):
        categorical_matrix(pa.table({"item": [0, 0], "c": [1, 2]}), "item", ("c",), 2)


def test_feature_part_concatenates_then_projects() -> None:
    features = torch.tensor([[0, 1], [1, 0], [1, 1]])
    emb = ItemEmbedding(
        ItemEmbeddingConfig(3, 12, source="id", feature_cardinalities=(2, 2), feature_dim=4),
        features=features,
    )
    assert emb.feature_proj is not None  # 2 x 4 = 8 columns -> 12
    out = emb(torch.tensor([[0, 1, 3]]))
    assert out.shape == (1, 3, 12) and torch.equal(out[0, 0], torch.zeros(12))
