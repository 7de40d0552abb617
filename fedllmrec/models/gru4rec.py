"""GRU4Rec: recurrent session/sequential recommendation (Hidasi et al., 2016).

The second sequential baseline: a GRU over item embeddings, scored like SASRec
by inner products with the shared item embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedllmrec.models.items import ItemEmbedding, ItemEmbeddingConfig
from fedllmrec.models.owners import Owner


@dataclass
class GRU4RecConfig:
    """Hyper-parameters of :class:`GRU4Rec`."""

    n_items: int
    dim: int = 64
    n_layers: int = 1
    dropout: float = 0.2


class GRU4Rec(nn.Module):
    """Sequence of item indices (left-padded with 0) -> a state per position."""

    OWNERS: ClassVar[dict[str, Owner]] = {"gru.*": Owner.GLOBAL, "out.*": Owner.GLOBAL}

    def __init__(self, config: GRU4RecConfig, items: ItemEmbedding | None = None) -> None:
        super().__init__()
        self.config = config
        self.items = items or ItemEmbedding(ItemEmbeddingConfig(config.n_items, config.dim))
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.dim, config.dim, config.n_layers, batch_first=True)
        self.out = nn.Linear(config.dim, config.dim)

    def forward(
        self,
        seq: torch.Tensor,
        extra: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """States (B, T, D); left padding means every real item follows the pads.

        ``vectors`` (B, T, D) are the items' vectors if already looked up (as SASRec's);
        GRU4Rec takes no ``extra`` inputs.
        """
        if extra is not None:
            raise ValueError("GRU4Rec takes no extra inputs")
        x = self.dropout(self.items(seq) if vectors is None else vectors)  # (B, T, D)
        h, _ = self.gru(x)  # (B, T, D); causal by construction
        return self.out(h)
