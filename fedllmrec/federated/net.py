"""The trained part of a recommender under one root, as the federated runtime addresses it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedllmrec.models.sequential import BatchLoss, SequentialRecommender


class ClientNet(nn.ModuleDict):
    """The recommender's trained modules under one root, a client's loss as ``forward``.

    Tensor names are the ownership names ("model.…", "head.…"), so a
    ``functional_call`` with per-client tensors runs one client's loss.
    """

    def __init__(self, recommender: SequentialRecommender) -> None:
        super().__init__(recommender.trained_modules())
        object.__setattr__(self, "_recommender", recommender)  # not a submodule
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = False  # functional gradients are dense

    @property
    def recommender(self) -> SequentialRecommender:
        """The wrapped recommender (its hooks: training tensors, losses, model)."""
        rec: SequentialRecommender = self.__dict__["_recommender"]
        return rec

    def forward(self, batch: Mapping[str, torch.Tensor], load: torch.Tensor) -> BatchLoss:
        return self.recommender.client_loss(batch, load)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer by ownership name (live, not copies)."""
        return dict(self.named_parameters()) | dict(self.named_buffers())
