"""Sequential recommenders behind the common ``fit`` / ``score`` interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import torch
from torch.nn import functional as F

from fedllmrec.data.sequences import left_pad, observed_sequences, user_sequences
from fedllmrec.data.split import TRAIN, Split, UserItemSet
from fedllmrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from fedllmrec.models.sasrec import PAD, SASRec, SASRecConfig


@dataclass
class SequentialTrainConfig:
    """How :class:`SASRecRecommender` trains: all-position next-item cross-entropy."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


@dataclass
class SequentialRecommender:
    """A sequential model (SASRec or GRU4Rec) trained on users' chronological training items.

    Every position of a training sequence predicts the next item, with a softmax
    over all items (no sampled negatives, so no negative can leak).
    """

    architecture: Literal["sasrec", "gru4rec"] = "sasrec"
    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    train: SequentialTrainConfig = field(default_factory=SequentialTrainConfig)
    model: SASRec | GRU4Rec | None = None
    split: Split | None = None
    losses: list[float] = field(default_factory=list)
    _rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)
    _data: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    _optim: torch.optim.Optimizer | None = field(default=None, repr=False)

    def fit(self, split: Split) -> Self:
        """Build a fresh model and train it for ``train.epochs`` epochs."""
        return self.setup(split).resume(self.train.epochs)

    def setup(self, split: Split) -> Self:
        """Build a fresh, seeded model, its optimiser and training sequences (no training)."""
        cfg = self.train
        torch.manual_seed(cfg.seed)
        self._rng = np.random.default_rng(cfg.seed)
        self.split = split
        self.losses = []
        self.model = self._build(split.dataset.n_items)
        # One extra step of history: inputs are items [:-1], targets items [1:].
        seqs = left_pad(user_sequences(split, split.role == TRAIN), self.max_len + 1)
        self._data = torch.from_numpy(seqs[(seqs != PAD).sum(axis=1) >= 2])
        self._optim = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        return self

    def _build(self, n_items: int) -> SASRec | GRU4Rec:
        if self.architecture == "sasrec":
            return SASRec(
                SASRecConfig(
                    n_items, self.max_len, self.dim, self.n_layers, self.n_heads, self.dropout
                )
            )
        if self.architecture == "gru4rec":
            return GRU4Rec(GRU4RecConfig(n_items, self.dim, self.n_layers, self.dropout))
        raise ValueError(f"unknown architecture {self.architecture!r}")

    def resume(self, epochs: int) -> Self:
        """Train ``epochs`` more epochs, continuing the optimiser and data order."""
        for _ in range(epochs):
            self.train_epoch()
        return self

    def train_epoch(self) -> float:
        """One pass over the training sequences; returns the mean per-target loss."""
        if self.model is None or self._optim is None:
            raise RuntimeError("call fit() or setup() first")
        data, optim, batch_size = self._data, self._optim, self.train.batch_size
        self.model.train()
        order = torch.from_numpy(self._rng.permutation(data.shape[0]))
        total, count = 0.0, 0
        for lo in range(0, data.shape[0], batch_size):
            batch = data[order[lo : lo + batch_size]]
            inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T)
            states = self.model(inputs)  # (B, T, D)
            logits = states @ self.model.item_emb.weight[1:].T  # (B, T, I)
            mask = (targets != PAD) & (inputs != PAD)
            loss = F.cross_entropy(logits[mask], targets[mask] - 1)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += float(loss.detach()) * int(mask.sum())
            count += int(mask.sum())
        self.model.eval()
        self.losses.append(total / max(count, 1))
        return self.losses[-1]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training bit-for-bit: weights, optimiser, RNGs."""
        if self.model is None or self._optim is None:
            raise RuntimeError("call fit() or setup() first")
        return {
            "model": self.model.state_dict(),
            "optim": self._optim.state_dict(),
            "numpy_rng": self._rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "losses": list(self.losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a model built by :meth:`setup` on the same split."""
        if self.model is None or self._optim is None:
            raise RuntimeError("call setup() before load_state_dict()")
        self.model.load_state_dict(state["model"])
        self._optim.load_state_dict(state["optim"])
        self._rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.losses = list(state["losses"])

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        if self.model is None or self.split is None:
            raise RuntimeError("call fit() before score()")
        seqs = left_pad(observed_sequences(self.split, history, users), self.max_len)
        state = self.model(torch.from_numpy(seqs))[:, -1]  # (B, D)
        emb = self.model.item_emb.weight[1:]  # (I, D)
        scores = (state @ emb.T).numpy()  # (B, I)
        return np.take_along_axis(scores, np.asarray(items, dtype=np.int64), axis=1)
