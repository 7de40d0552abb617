"""Item representations shared by every sequential model: ID, frozen text, categorical features.

An item's vector is the sum of the enabled parts:

``id``
    a learned embedding per item (cold items, never trained as positives, stay
    near their initialisation);
``text``
    the frozen foundation-model embedding of the item's text through a learned
    projection (a UniSRec-style adaptor: dropout then a linear map), so items
    that were never trained still get a meaningful vector;
``features``
    learned embeddings of categorical item features, concatenated (MRFF's item
    vector on KuaiSAR-R: 6 features x 8 dimensions) and projected to ``dim``
    when the concatenation has another width.

Index 0 is padding and always maps to the zero vector; real item ``i`` is ``i + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from fedllmrec.data.schema import RecDataset
from fedllmrec.models.dropout import Dropout
from fedllmrec.models.owners import Owner

ItemSource = Literal["id", "text", "id+text", "none"]  # "none": categorical features only
PAD = 0


@dataclass
class ItemEmbeddingConfig:
    """Which parts make up an item vector and their sizes."""

    n_items: int
    dim: int
    source: ItemSource = "id"
    text_dim: int = 384
    feature_cardinalities: tuple[int, ...] = ()  # per categorical feature, values 0..c-1
    feature_dim: int = 8
    text_dropout: float = 0.2
    fast_dropout: bool = False  # the adaptor's dropout masks from random bytes (:mod:`.dropout`)

    @property
    def uses_id(self) -> bool:
        return self.source in ("id", "id+text")

    @property
    def uses_text(self) -> bool:
        return self.source in ("text", "id+text")


class ItemEmbedding(nn.Module):
    """Item indices (any shape, 0 = pad) -> item vectors (..., D)."""

    text: torch.Tensor  # (n_items + 1, text_dim) frozen buffer, when the text part is on
    # (n_items + 1, F) when features are on: the row of each item's value of each feature in
    # the feature tables stacked in order; a table's row 0 is the padding item's.
    feature_rows: torch.Tensor

    def __init__(
        self,
        config: ItemEmbeddingConfig,
        text: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        n = config.n_items + 1
        self.id_emb = nn.Embedding(n, config.dim, padding_idx=PAD) if config.uses_id else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)
            with torch.no_grad():
                self.id_emb.weight[PAD].zero_()
        self.text_proj: nn.Module | None = None
        if config.uses_text:
            if text is None or tuple(text.shape) != (config.n_items, config.text_dim):
                raise ValueError(
                    f"text source needs a ({config.n_items}, {config.text_dim}) text tensor"
                )
            # Frozen: a buffer, never a parameter, so it is neither trained nor sent.
            self.register_buffer("text", torch.cat([text.new_zeros(1, text.shape[1]), text]))
            self.text_proj = nn.Sequential(
                Dropout(config.text_dropout, config.fast_dropout),
                nn.Linear(config.text_dim, config.dim),
            )
        self.feature_embs = nn.ModuleList(
            nn.Embedding(c + 1, config.feature_dim, padding_idx=PAD)
            for c in config.feature_cardinalities
        )
        self.feature_proj: nn.Module | None = None
        if config.feature_cardinalities:
            if features is None or tuple(features.shape) != (
                config.n_items,
                len(config.feature_cardinalities),
            ):
                raise ValueError("feature source needs an (n_items, n_features) integer tensor")
            # Values shift by one so that the padding item's features are all padding.
            pad_row = features.new_full((1, features.shape[1]), -1)
            sizes = [0, *(c + 1 for c in config.feature_cardinalities[:-1])]
            offsets = torch.tensor(sizes, dtype=features.dtype).cumsum(0)
            self.register_buffer("feature_rows", torch.cat([pad_row, features]) + 1 + offsets)
            width = config.feature_dim * len(config.feature_cardinalities)
            if width != config.dim:
                self.feature_proj = nn.Linear(width, config.dim)
        if not (config.uses_id or config.uses_text or config.feature_cardinalities):
            raise ValueError("an item representation needs at least one part")
        for module in self.modules():
            if isinstance(module, nn.Embedding) and module is not self.id_emb:
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def OWNERS(self) -> dict[str, Owner]:
        """Item vectors are learned by all clients; the text and feature codes are frozen data."""
        owners = {"feature_embs.*": Owner.GLOBAL} if len(self.feature_embs) else {}
        if self.id_emb is not None:
            owners["id_emb.weight"] = Owner.GLOBAL
        if self.text_proj is not None:
            owners |= {"text": Owner.FROZEN, "text_proj.*": Owner.GLOBAL}
        if len(self.feature_embs):
            owners["feature_rows"] = Owner.FROZEN
        if self.feature_proj is not None:
            owners["feature_proj.*"] = Owner.GLOBAL
        return owners

    @property
    def text_weight(self) -> tuple[str, torch.Tensor] | None:
        """The text adaptor's weight name (relative to this module) and the frozen text
        matrix (n_items + 1, text_dim) it multiplies, or None without a text part: what an
        audit projects the adaptor's uploaded delta onto."""
        if self.text_proj is None:
            return None
        return "text_proj.1.weight", self.text

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        out = self.id_emb(items) if self.id_emb is not None else None  # (..., D)
        if self.text_proj is not None:
            text = self.text_proj(self.text[items])  # (..., D)
            out = text if out is None else out + text
        if len(self.feature_embs):
            # One lookup in the stacked tables, not one per feature. index_select's backward
            # (a scatter-add) is 3-4x faster on CPU than embedding's sort-based one for tables
            # this small, and gives the same sums in the same order. The padding item's codes
            # (row 0 of each table) get zero gradient from the mask below, as padding_idx would.
            weights = [cast(nn.Embedding, emb).weight for emb in self.feature_embs]
            tables = torch.cat(weights)  # (sum C_f + F, d)
            rows = self.feature_rows[items]  # (..., F)
            feats = tables.index_select(0, rows.flatten()).view(*items.shape, -1)  # (..., F * d)
            if self.feature_proj is not None:
                feats = self.feature_proj(feats)
            out = feats if out is None else out + feats
        assert out is not None
        # The padding item is exactly zero whatever the projections' biases are.
        return out * (items != PAD).unsqueeze(-1)

    def table(self) -> torch.Tensor:
        """Vectors of every item, padding row included: (n_items + 1, D)."""
        device = next(self.parameters()).device
        return self(torch.arange(self.config.n_items + 1, device=device))


@dataclass
class ItemInputs:
    """What an item representation needs from a dataset, computed once per dataset."""

    text: torch.Tensor | None = None
    features: torch.Tensor | None = None
    feature_cardinalities: tuple[int, ...] = field(default_factory=tuple)


def categorical_matrix(
    table: pa.Table, key: str, columns: tuple[str, ...], n_rows: int
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Integer codes of ``columns`` placed at row ``table[key]`` (an id), not at row position.

    Looking features up by row position is the MRFF release's defect that gave
    every user another user's features; here each row is addressed by its id.
    Codes are re-indexed densely per column, so cardinalities are exact.
    """
    ids = table.column(key).to_numpy()
    if ids.shape[0] != n_rows or np.unique(ids).shape[0] != n_rows:
        raise ValueError(f"{key!r} must hold each of the {n_rows} ids exactly once")
    out = np.zeros((n_rows, len(columns)), dtype=np.int64)
    cardinalities = []
    for c, name in enumerate(columns):
        values = table.column(name).to_numpy()
        uniques, codes = np.unique(values, return_inverse=True)
        out[ids, c] = codes
        cardinalities.append(int(uniques.shape[0]))
    return out, tuple(cardinalities)


def item_inputs(
    dataset: RecDataset,
    source: ItemSource,
    features: tuple[str, ...] = (),
    text: np.ndarray | None = None,
) -> ItemInputs:
    """Frozen text vectors (embedded with the cached encoder) and feature codes of ``dataset``."""
    inputs = ItemInputs()
    if source in ("text", "id+text"):
        if text is None:
            from fedllmrec.semantics import embed_items

            text = embed_items(dataset)
        inputs.text = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
    if features:
        codes, cards = categorical_matrix(dataset.items, "item", features, dataset.n_items)
        inputs.features = torch.from_numpy(codes)
        inputs.feature_cardinalities = cards
    return inputs
