"""Click prediction over exposure sequences (KuaiSAR-R, the MRFF task).

The input at each position is an exposed item plus whether it was clicked;
the state at position t predicts the click on exposure t + 1 through a shared
output MLP over ``[state ; item ; state * item]``. Training is all-position
binary cross-entropy over the training exposures. Evaluation follows MRFF:
chronological leave-one-out (each user's last exposure is test, the one before
it validation), one global AUC and LogLoss over all users' held-out exposures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedllmrec.data.schema import RecDataset
from fedllmrec.data.sequences import left_pad, windows
from fedllmrec.data.split import ROLE_NAMES, TRAIN, Split
from fedllmrec.models.dropout import Dropout
from fedllmrec.models.gru4rec import GRU4Rec
from fedllmrec.models.items import PAD, ItemSource
from fedllmrec.models.mrff import MRFF, Routing
from fedllmrec.models.owners import Owner
from fedllmrec.models.sasrec import SASRec, trim_left_padding
from fedllmrec.models.sequential import Reduction, SequentialRecommender, masked_mean

NO_CLICK, CLICK = 1, 2  # click-label tokens; 0 is padding


class ClickHead(nn.Module):
    """Past click labels in, click logits out."""

    OWNERS: ClassVar[dict[str, Owner]] = {"label_emb.weight": Owner.GLOBAL, "mlp.*": Owner.GLOBAL}

    def __init__(self, dim: int, dropout: float, fast_dropout: bool = False) -> None:
        super().__init__()
        self.label_emb = nn.Embedding(3, dim, padding_idx=PAD)
        self.mlp = nn.Sequential(
            nn.Linear(3 * dim, dim), nn.ReLU(), Dropout(dropout, fast_dropout), nn.Linear(dim, 1)
        )

    def forward(self, state: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Logits (...,) from states and target item vectors, both (..., D)."""
        return self.mlp(torch.cat([state, item, state * item], dim=-1)).squeeze(-1)


def _exposure_tokens(
    ds: RecDataset, rows: list[np.ndarray], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded item tokens and click tokens (N, length) of interaction-row sequences."""
    padded = left_pad(rows, length)  # row + 1, 0 = padding
    real = padded != PAD
    safe = np.where(real, padded - 1, 0)
    clicks = np.where(ds.label[safe] > 0.5, CLICK, NO_CLICK)
    items = np.where(real, ds.item[safe].astype(np.int64) + 1, PAD)
    return torch.from_numpy(items), torch.from_numpy(np.where(real, clicks, PAD))


@dataclass
class ClickRecommender(SequentialRecommender):
    """SASRec or MRFF with a click head, trained on exposures with BCE.

    Defaults follow MRFF's released KuaiSAR-R settings where they exist (2 blocks,
    1 head, dropout 0.5); the item vector is the dataset's categorical ``item_features``
    (MRFF's KuaiSAR-R recipe: 6 features x 8 dimensions), named by the recipe.
    """

    next_item: ClassVar[bool] = False  # predicts clicks on exposures

    max_len: int = 65
    dim: int = 48
    n_heads: int = 1
    dropout: float = 0.5
    item_source: ItemSource = "none"
    item_features: Sequence[str] = ()
    head: ClickHead | None = field(default=None, repr=False)
    _labels: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)

    def _build(self, split: Split) -> SASRec | GRU4Rec | MRFF:
        if self.architecture == "gru4rec":
            raise ValueError("click prediction supports the sasrec and mrff architectures")
        backbone = super()._build(split)
        self.head = ClickHead(self.dim, self.dropout, self.fast_dropout)
        return backbone

    def _load_training_data(self, split: Split) -> None:
        ds = split.dataset
        train = np.flatnonzero(split.role == TRAIN)
        # Windows over row numbers, so items and labels are cut identically.
        per_user = np.split(train, np.searchsorted(ds.user[train], np.arange(1, ds.n_users)))
        chunks, owners = windows(per_user, self.max_len + 1)
        self._data, self._labels = _exposure_tokens(ds, chunks, self.max_len + 1)
        self._users = torch.from_numpy(owners)

    def trained_modules(self) -> dict[str, nn.Module]:
        assert self.model is not None and self.head is not None
        return {"model": self.model, "head": self.head}

    def _states(
        self,
        items: torch.Tensor,
        labels: torch.Tensor,
        users: torch.Tensor,
        vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Routing | None]:
        """States (B, T, D) after exposures ``items`` with click tokens ``labels`` (B, T)."""
        assert self.head is not None
        return self._encode(items, users, self.head.label_emb(labels), vectors)

    def training_tensors(self) -> dict[str, torch.Tensor]:
        """Training windows: exposures ``seq``, click tokens ``label`` (N, T + 1), ``user`` (N,)."""
        return {"seq": self._data, "label": self._labels, "user": self._users}

    def _use_training_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._data, self._labels, self._users = tensors["seq"], tensors["label"], tensors["user"]

    def _task(
        self, batch: Mapping[str, torch.Tensor], reduction: Reduction
    ) -> tuple[torch.Tensor, torch.Tensor, Routing | None]:
        """All-position BCE of the next exposure's click (see the base class)."""
        assert self.model is not None and self.head is not None
        items, marks = batch["seq"], batch["label"]  # (B, T + 1)
        vectors = self.model.items(items)  # (B, T + 1, D): one lookup for inputs and targets
        states, routing = self._states(items[:, :-1], marks[:, :-1], batch["user"], vectors[:, :-1])
        logits = self.head(states, vectors[:, 1:])  # (B, T)
        mask = (items[:, 1:] != PAD) & (items[:, :-1] != PAD)
        target = (marks[:, 1:] == CLICK).to(logits.dtype)
        if reduction == "none":
            task = F.binary_cross_entropy_with_logits(logits[mask], target[mask], reduction="none")
        elif reduction == "mean":
            task = F.binary_cross_entropy_with_logits(logits[mask], target[mask])
        else:
            per_target = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            task = masked_mean(per_target, mask)
        return task, mask, routing

    @torch.no_grad()
    def predict(self, role: str, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Click probabilities and labels of the held-out ``role`` exposures.

        Each exposure is predicted from the user's exposures before it (train
        rows for validation; train and validation rows for test).
        """
        if self.model is None or self.head is None or self.split is None:
            raise RuntimeError("call fit() before predict()")
        self.model.eval()
        self.head.eval()
        split, ds = self.split, self.split.dataset
        code = ROLE_NAMES.index(role)
        targets = split.rows(role)
        seen = np.flatnonzero(split.role < code)
        bounds = np.searchsorted(ds.user[seen], np.arange(ds.n_users + 1))
        probs = np.empty(targets.shape[0], dtype=np.float64)
        # Batches of similar history length hold little padding, which is cut off.
        length = np.diff(bounds)[ds.user[targets]]
        order = np.argsort(length, kind="stable")
        for lo in range(0, targets.shape[0], batch_size):
            index = order[lo : lo + batch_size]
            batch = targets[index]
            users = ds.user[batch].astype(np.int64)
            history = [seen[bounds[u] : bounds[u + 1]] for u in users.tolist()]
            items, marks = _exposure_tokens(ds, history, self.max_len)
            tokens = trim_left_padding({"seq": items, "label": marks})
            target = torch.from_numpy(ds.item[batch].astype(np.int64) + 1)  # (B,)
            states, _ = self._states(tokens["seq"], tokens["label"], torch.from_numpy(users))
            logits = self.head(states[:, -1], self.model.items(target))  # (B,)
            probs[index] = torch.sigmoid(logits).float().numpy()
        return probs, ds.label[targets].astype(np.float64)
