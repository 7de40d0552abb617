"""Sequential recommenders (SASRec, GRU4Rec, MRFF) behind the ``fit`` / ``score`` interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Literal, Self, get_args

import numpy as np
import torch
from torch.nn import functional as F

from fedllmrec.data.sequences import (
    left_pad,
    observed_sequences,
    sort_runs_by_length,
    user_sequences,
    windows,
)
from fedllmrec.data.split import TRAIN, VALID, Split, UserItemSet
from fedllmrec.errors import check_option
from fedllmrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from fedllmrec.models.items import (
    ItemEmbedding,
    ItemEmbeddingConfig,
    ItemSource,
    categorical_matrix,
    item_inputs,
)
from fedllmrec.models.mrff import MRFF, GateMode, MRFFConfig, Routing, balance_loss
from fedllmrec.models.negatives import PopularityProposal
from fedllmrec.models.sasrec import PAD, SASRec, SASRecConfig, trim_left_padding

Architecture = Literal["sasrec", "gru4rec", "mrff"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
ITEM_SOURCES: tuple[str, ...] = get_args(ItemSource)
Reduction = Literal["mean", "masked", "none"]  # of a batch's task loss, see ``_task``
ENGINES: tuple[str, ...] = ("vmap", "loop", "linear")  # the federated client engines


@dataclass
class BatchLoss:
    """What one batch contributes to training."""

    task: torch.Tensor  # mean loss per target (), or the row-weighted sum (see row_weight)
    aux: torch.Tensor  # auxiliary loss (MRFF's balance loss; 0 otherwise) ()
    n_targets: torch.Tensor  # number of targets () int
    routing: Routing | None  # MRFF: groups and gate probabilities (L, B)
    row_loss: torch.Tensor | None = None  # with row_weight: each row's summed target loss (B,)


def reduce_targets(
    per_target: torch.Tensor, rows: torch.Tensor, row_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-weighted task loss of per-target losses (N,) that belong to rows ``rows`` (N,).

    Returns ``sum_b row_weight[b] * (sum of row b's target losses)`` and those row sums
    (B,), detached: one pass can so weigh every client's mean loss (the federated
    ``linear`` engine).
    """
    row_sum = per_target.new_zeros(row_weight.shape[0]).index_add(0, rows, per_target)  # (B,)
    return (row_sum * row_weight).sum(), row_sum.detach()


@dataclass
class SequentialTrainConfig:
    """How :class:`SequentialRecommender` trains: all-position next-item cross-entropy.

    ``loss="full"`` is a softmax over every item; ``loss="sampled"`` a softmax over
    the target and ``n_negatives`` items drawn uniformly from the catalogue for
    each batch (shared by its positions; a draw equal to a position's target is
    masked), which makes large catalogues (Art-Office: 38k items) affordable.
    Training negatives are drawn afresh and never taken from the saved
    evaluation candidates, and never consult held-out interactions. A draw may be
    another item the row's user touched in training (a false negative: on Art-Office
    0.72 per position of 1,000 draws); ``negatives_exclude="history"`` masks those
    too, reading the training interactions only (centralized training; on Art-Office
    +0.0007 full NDCG@10 in each of 3 seeds, 1+99 metrics unchanged, docs/benchmarks.md).

    ``sampler="popularity"`` draws ``n_negatives`` items *per domain* from that domain's
    training-target counts to the power ``sampler_alpha``, mixed with ``uniform_share``
    of uniform draws over the domain's catalogue; a position is scored against its own
    domain's draws only, and every logit, the target's included, is logQ-corrected
    (:mod:`fedllmrec.models.negatives`).

    ``length_buckets = B`` (0: off) batches windows of similar length, B batches at a
    time (see ``_epoch_batches``), and cuts each batch's all-padding columns: on
    short-sequence data most of a 50-column window is padding.
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    loss: Literal["full", "sampled"] = "full"
    n_negatives: int = 1000
    negatives_exclude: Literal["target", "history"] = "target"
    sampler: Literal["uniform", "popularity"] = "uniform"
    sampler_alpha: float = 1.0
    uniform_share: float = 0.0
    length_buckets: int = 0

    def __post_init__(self) -> None:
        check = partial(check_option, "SequentialTrainConfig")
        check("epochs", self.epochs >= 0, ">= 0", self.epochs)
        check("batch_size", self.batch_size >= 1, ">= 1", self.batch_size)
        check("lr", self.lr > 0.0, "> 0", self.lr)
        check("weight_decay", self.weight_decay >= 0.0, ">= 0", self.weight_decay)
        check("loss", self.loss in ("full", "sampled"), "'full' or 'sampled'", self.loss)
        check("n_negatives", self.n_negatives >= 1, ">= 1", self.n_negatives)
        check("negatives_exclude", self.negatives_exclude in ("target", "history"),
              "'target' or 'history'", self.negatives_exclude)  # fmt: skip
        check("sampler", self.sampler in ("uniform", "popularity"), "'uniform' or 'popularity'",
              self.sampler)  # fmt: skip
        check("sampler_alpha", self.sampler_alpha >= 0.0, ">= 0", self.sampler_alpha)
        check("uniform_share", 0.0 <= self.uniform_share <= 1.0, "in [0, 1]", self.uniform_share)
        check("length_buckets", self.length_buckets >= 0, ">= 0", self.length_buckets)


@dataclass
class SequentialRecommender:
    """A sequential model trained on users' chronological training items.

    Every position of a training sequence predicts the next item, with a softmax
    over all items (no sampled negatives, so no negative can leak). Items are
    represented by ID, frozen text through a learned projection, or both
    (``item_source``); MRFF adds group-gated layers and private user state.
    """

    architecture: Architecture = "sasrec"
    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    ffn_mult: int = 4  # feed-forward hidden width = ffn_mult * dim (MRFF's release: 1)
    fast_dropout: bool = False  # SASRec/MRFF masks from random bytes (models/dropout.py)
    item_source: ItemSource = "id"
    item_features: Sequence[str] = ()
    # MRFF only
    n_groups: int = 4
    gate: GateMode = "weighted"
    user_hidden: int = 16
    balance_alpha: float = 0.1
    user_features: Sequence[str] = ()
    train: SequentialTrainConfig = field(default_factory=SequentialTrainConfig)
    text_embeddings: np.ndarray | None = field(default=None, repr=False)
    model: SASRec | GRU4Rec | MRFF | None = None
    split: Split | None = None
    losses: list[float] = field(default_factory=list)
    _rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)
    _data: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    _users: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    _train_history: UserItemSet | None = field(default=None, repr=False)  # negatives_exclude
    _proposal: PopularityProposal | None = field(default=None, repr=False)  # sampler
    _optims: list[torch.optim.Optimizer] = field(default_factory=list, repr=False)
    # Hooks of the federated runtime: which client engines can run client_loss (vmap needs
    # shape-static losses, linear row_weighted_loss), and whether it predicts next items.
    client_engines: ClassVar[tuple[str, ...]] = ENGINES
    next_item: ClassVar[bool] = True
    # True: the loop engine calls seed_client before each client's step (see there).
    seeds_clients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check = partial(check_option, type(self).__name__)
        check("architecture", self.architecture in ARCHITECTURES, f"one of {ARCHITECTURES}",
              self.architecture)  # fmt: skip
        check("max_len", self.max_len >= 1, ">= 1", self.max_len)
        check("dim", self.dim >= 1, ">= 1", self.dim)
        check("n_layers", self.n_layers >= 1, ">= 1", self.n_layers)
        check("n_heads", self.n_heads >= 1, ">= 1", self.n_heads)
        if self.architecture != "gru4rec":
            check("dim", self.dim % self.n_heads == 0, f"a multiple of n_heads={self.n_heads}",
                  self.dim)  # fmt: skip
        check("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)", self.dropout)
        check("ffn_mult", self.ffn_mult >= 1, ">= 1", self.ffn_mult)
        check("item_source", self.item_source in ITEM_SOURCES, f"one of {ITEM_SOURCES}",
              self.item_source)  # fmt: skip
        check("item_features", self.item_source != "none" or bool(self.item_features),
              "a non-empty list when item_source is 'none' (the item vector is its features)",
              list(self.item_features))  # fmt: skip
        check("n_groups", self.n_groups >= 1, ">= 1", self.n_groups)
        check("user_hidden", self.user_hidden >= 1, ">= 1", self.user_hidden)
        check("balance_alpha", self.balance_alpha >= 0.0, ">= 0", self.balance_alpha)

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
        self.model = self._build(split)
        self._load_training_data(split)
        # Training pairs only (observable at validation time): never a held-out item.
        history = cfg.loss == "sampled" and cfg.negatives_exclude == "history"
        self._train_history = split.observed(VALID) if history else None
        self._optims = self._make_optimizers()
        return self

    def _load_training_data(self, split: Split) -> None:
        # Windows one item longer than max_len: inputs are items [:-1], targets items [1:].
        chunks, owners = windows(user_sequences(split, split.role == TRAIN), self.max_len + 1)
        self._data = torch.from_numpy(left_pad(chunks, self.max_len + 1))
        self._users = torch.from_numpy(owners)
        self._proposal = self._make_proposal()

    def _make_proposal(self) -> PopularityProposal | None:
        """The popularity proposal of the current training windows' targets (or None)."""
        cfg = self.train
        if cfg.loss != "sampled" or cfg.sampler != "popularity":
            return None
        assert self.split is not None
        seq = self._data
        targets = seq[:, 1:][(seq[:, 1:] != PAD) & (seq[:, :-1] != PAD)].numpy()
        ds = self.split.dataset
        return PopularityProposal.from_targets(
            targets,
            ds.item_domain,
            alpha=cfg.sampler_alpha,
            uniform_share=cfg.uniform_share,
            catalogue=np.isin(np.arange(ds.n_items), ds.item),  # items that occur in the split
        )

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        """Every module whose parameters train (subclasses add heads)."""
        assert self.model is not None
        return {"model": self.model}

    def _make_optimizers(self) -> list[torch.optim.Optimizer]:
        # Private per-user rows are sparse tables: each step updates only its users' rows.
        cfg = self.train
        dense: list[torch.nn.Parameter] = []
        sparse: list[torch.nn.Parameter] = []
        for module in self.trained_modules().values():
            for name, param in module.named_parameters():
                (sparse if _is_sparse(module, name) else dense).append(param)
        optims: list[torch.optim.Optimizer] = [
            torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ]
        if sparse:
            optims.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
        return optims

    def _build(self, split: Split) -> SASRec | GRU4Rec | MRFF:
        ds = split.dataset
        inputs = item_inputs(ds, self.item_source, tuple(self.item_features), self.text_embeddings)
        items = ItemEmbedding(
            ItemEmbeddingConfig(
                ds.n_items,
                self.dim,
                source=self.item_source,
                feature_cardinalities=inputs.feature_cardinalities,
                text_dropout=self.dropout,
                fast_dropout=self.fast_dropout,
            ),
            text=inputs.text,
            features=inputs.features,
        )
        if self.architecture == "sasrec":
            config = SASRecConfig(
                ds.n_items, self.max_len, self.dim, self.n_layers, self.n_heads, self.dropout,
                self.ffn_mult, self.fast_dropout,
            )  # fmt: skip
            return SASRec(config, items)
        if self.architecture == "gru4rec":
            return GRU4Rec(GRU4RecConfig(ds.n_items, self.dim, self.n_layers, self.dropout), items)
        if self.architecture == "mrff":
            user_codes, cards = None, tuple[int, ...]()
            if self.user_features:
                codes, cards = categorical_matrix(
                    ds.users, "user", tuple(self.user_features), ds.n_users
                )
                user_codes = torch.from_numpy(codes)
            mrff = MRFFConfig(
                ds.n_items, self.max_len, self.dim, self.n_layers, self.n_heads, self.dropout,
                self.ffn_mult, self.fast_dropout, n_users=ds.n_users, n_groups=self.n_groups,
                gate=self.gate, user_hidden=self.user_hidden, balance_alpha=self.balance_alpha,
                user_feature_cardinalities=cards,
            )  # fmt: skip
            return MRFF(mrff, items, user_codes)
        raise ValueError(f"unknown architecture {self.architecture!r}")

    def _encode(
        self,
        seqs: torch.Tensor,
        users: torch.Tensor,
        extra: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Routing | None]:
        """States (B, T, D) and, for MRFF, each sequence's routing (``vectors``: see embed)."""
        assert self.model is not None
        if isinstance(self.model, MRFF):
            return self.model(seqs, users, extra, vectors)
        if isinstance(self.model, SASRec):
            return self.model(seqs, extra, vectors), None
        if extra is not None or vectors is not None:
            raise ValueError(f"{self.architecture} takes no extra inputs")
        return self.model(seqs), None

    def _balance(
        self, routing: Routing | None, load: torch.Tensor | None, newest_only: bool
    ) -> torch.Tensor:
        """MRFF's balance loss (0 for other models).

        Centralized training uses the batch's own routing of every window. A
        federated client passes ``newest_only`` (its user-level routing is that of
        its newest window, row 0) and the previous round's ``load`` (L, K).
        """
        if routing is None or not isinstance(self.model, MRFF):
            return torch.zeros(())
        if newest_only:
            routing = Routing(routing.groups[:, :1], routing.probs[:, :1])
        cfg = self.model.config
        return balance_loss(routing, cfg.n_groups, cfg.balance_alpha, load)

    def training_tensors(self) -> dict[str, torch.Tensor]:
        """Training windows, one row each: items ``seq`` (N, T + 1) and owner ``user`` (N,)."""
        return {"seq": self._data, "user": self._users}

    def set_training_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Train on other windows (same keys as :meth:`training_tensors`, one row each):
        e.g. per-domain windows for domain clients, or a subset for a quick run."""
        keys = set(self.training_tensors())
        if set(tensors) != keys:
            raise ValueError(
                f"training tensors need the keys {sorted(keys)}, got {sorted(tensors)}"
            )
        rows = {int(t.shape[0]) for t in tensors.values()}
        if len(rows) != 1:
            raise ValueError(f"training tensors must have one row count, got {sorted(rows)}")
        self._use_training_tensors(tensors)

    def _use_training_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._data, self._users = tensors["seq"], tensors["user"]
        self._proposal = self._make_proposal()

    def seed_client(self, seed: tuple[int, ...]) -> None:
        """Reseed the draws of one client's local step (``(federation seed, round, client,
        step)``): its negatives and torch's dropout and swaps, so they do not depend on which
        clients trained before it in this process."""
        self._rng = np.random.default_rng(list(seed))
        torch.manual_seed(int(np.random.default_rng(list(seed)).integers(2**62)))

    @property
    def rng(self) -> np.random.Generator:
        """The generator of batch order and sampled-softmax negatives (checkpointed)."""
        return self._rng

    def batch_loss(self, batch: Mapping[str, torch.Tensor]) -> BatchLoss:
        """Centralized training loss of a batch of :meth:`training_tensors` rows: the mean
        over its targets, and MRFF's balance loss over the batch's own routing."""
        task, mask, routing = self._task(batch, "mean")
        return BatchLoss(task, self._balance(routing, None, newest_only=False), mask.sum(), routing)

    def client_loss(self, batch: Mapping[str, torch.Tensor], load: torch.Tensor) -> BatchLoss:
        """One federated client's loss on its windows (row 0 its newest), shape-static.

        Padding is masked by weights instead of indexed away: same value, no
        data-dependent shapes, so it runs under ``torch.func.vmap``. MRFF's balance loss
        uses the client's user-level routing (its newest window's) and ``load`` (L, K),
        the previous round's routing shares.
        """
        task, mask, routing = self._task(batch, "masked")
        return BatchLoss(task, self._balance(routing, load, newest_only=True), mask.sum(), routing)

    def row_weighted_loss(
        self, batch: Mapping[str, torch.Tensor], row_weight: torch.Tensor
    ) -> BatchLoss:
        """``sum_b row_weight[b] * (row b's summed target losses)`` and those row sums.

        One pass can so weigh every client's mean loss (the federated ``linear`` engine,
        which adds the balance loss itself from each client's routing: ``aux`` is 0).
        """
        per_target, mask, routing = self._task(batch, "none")
        rows = mask.nonzero()[:, 0]
        task, row_loss = reduce_targets(per_target, rows, row_weight)
        return BatchLoss(task, torch.zeros(()), mask.sum(), routing, row_loss)

    def _task(
        self, batch: Mapping[str, torch.Tensor], reduction: Reduction
    ) -> tuple[torch.Tensor, torch.Tensor, Routing | None]:
        """The next-item task loss, the target mask (B, T) and the routing of a batch.

        ``reduction``: "mean" over the targets, "masked" the same shape-statically (for
        vmap), "none" each target's loss (N,) row-major.
        """
        seq = batch["seq"]
        inputs, targets = seq[:, :-1], seq[:, 1:]  # (B, T)
        states, routing = self._encode(inputs, batch["user"])  # (B, T, D)
        mask = (targets != PAD) & (inputs != PAD)
        users = batch["user"]
        if reduction == "none":
            return self._next_item_loss(states, targets, mask, True, "none", users), mask, routing
        loss = self._next_item_loss(states, targets, mask, reduction == "mean", users=users)
        return loss, mask, routing

    def resume(self, epochs: int) -> Self:
        """Train ``epochs`` more epochs, continuing the optimiser and data order."""
        for _ in range(epochs):
            self.train_epoch()
        return self

    def train_epoch(self) -> float:
        """One pass over the training windows; returns the mean per-target loss."""
        if self.model is None or not self._optims:
            raise RuntimeError("call fit() or setup() first")
        tensors = self.training_tensors()
        modules = list(self.trained_modules().values())
        for module in modules:
            module.train()
        total, count = 0.0, 0
        for rows in self._epoch_batches(tensors["seq"]):
            batch = {key: value[rows] for key, value in tensors.items()}
            if self.train.length_buckets:
                batch = trim_left_padding(batch)  # same states on fewer columns
            out = self.train_step(batch)
            total += float(out.task.detach()) * int(out.n_targets)
            count += int(out.n_targets)
        for module in modules:
            module.eval()
        self.losses.append(total / max(count, 1))
        return self.losses[-1]

    def _epoch_batches(self, seq: torch.Tensor) -> list[torch.Tensor]:
        """The rows of each batch of an epoch, from a fresh random order.

        With ``length_buckets = B`` the order is cut into runs of B batches, each run sorted
        by window length (so a batch holds windows of similar length), and the batches are
        then shuffled.
        """
        batch_size, buckets = self.train.batch_size, self.train.length_buckets
        order = self._rng.permutation(seq.shape[0])
        if buckets:
            order = sort_runs_by_length(order, (seq != PAD).sum(1).numpy(), buckets * batch_size)
        batches = [torch.from_numpy(order[lo : lo + batch_size])
                   for lo in range(0, order.shape[0], batch_size)]  # fmt: skip
        if buckets:
            batches = [batches[i] for i in self._rng.permutation(len(batches))]
        return batches

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> BatchLoss:
        """One optimiser step on a batch of :meth:`training_tensors` rows; returns its loss."""
        out = self.batch_loss(batch)
        self._step(out.task + out.aux)
        return out

    def _step(self, loss: torch.Tensor) -> None:
        """One optimiser step on every optimiser (dense Adam, and SparseAdam for private rows)."""
        for optim in self._optims:
            optim.zero_grad(set_to_none=True)
        loss.backward()
        for optim in self._optims:
            optim.step()

    def _next_item_loss(
        self,
        states: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        gather: bool,
        reduction: Literal["mean", "none"] = "mean",
        users: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the masked targets (B, T) (shifted ids) given states (B, T, D).

        ``reduction="none"`` (with ``gather``): each masked target's loss (N,), row-major.
        ``users`` (B,): each row's user (``negatives_exclude="history"`` masks their items).
        """
        assert self.model is not None
        cfg = self.train
        flat_mask = None
        proposal = self._proposal if cfg.loss == "sampled" else None
        domains = proposal.domains_of(targets, mask) if proposal is not None else None
        if gather:
            states, targets = states[mask], targets[mask]  # (N, D), (N,)
        else:
            states, flat_mask = states.reshape(-1, states.shape[-1]), mask.reshape(-1)
            targets = targets.reshape(-1).clamp(min=1)  # padding: any valid id, weight 0
        if cfg.loss == "full":
            logits = states @ self.model.items.table()[1:].T  # (N, I)
            target_index = targets - 1
        else:
            n_items = self.model.items.config.n_items
            if proposal is None or domains is None:
                negatives = torch.from_numpy(self._rng.integers(1, n_items + 1, cfg.n_negatives))
            else:
                negatives = proposal.draw(self._rng, cfg.n_negatives, domains)  # (M,)
            positive = (states * self.model.items(targets)).sum(-1, keepdim=True)  # (N, 1)
            negative = states @ self.model.items(negatives).T  # (N, M)
            excluded = negatives[None] == targets[:, None]  # (N, M)
            if proposal is not None:
                # logQ correction; a position sees only its own domain's draws.
                positive = positive - proposal.log_q[targets][:, None]
                negative = negative - proposal.log_q[negatives][None]
                if domains is not None and domains.shape[0] > 1:
                    own = proposal.item_domain[targets][:, None]
                    excluded = excluded | (proposal.item_domain[negatives][None] != own)
            if self._train_history is not None:
                if users is None:
                    raise ValueError("negatives_exclude='history' needs each row's user")
                hits = history_mask(self._train_history, users, negatives)  # (B, M)
                per_position = hits[:, None].expand(*mask.shape, -1)  # (B, T, M)
                flat = per_position[mask] if gather else per_position.reshape(excluded.shape)
                excluded = excluded | flat
            negative = negative.masked_fill(excluded, float("-inf"))
            logits = torch.cat([positive, negative], dim=1)
            target_index = torch.zeros_like(targets)
        if flat_mask is None:
            return F.cross_entropy(logits, target_index, reduction=reduction)
        return masked_mean(F.cross_entropy(logits, target_index, reduction="none"), flat_mask)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training bit-for-bit: weights, optimiser, RNGs."""
        if self.model is None or not self._optims:
            raise RuntimeError("call fit() or setup() first")
        return {
            **{name: m.state_dict() for name, m in self.trained_modules().items()},
            "optims": [optim.state_dict() for optim in self._optims],
            "numpy_rng": self._rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "losses": list(self.losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into a model built by :meth:`setup` on the same split."""
        if self.model is None or not self._optims:
            raise RuntimeError("call setup() before load_state_dict()")
        for name, module in self.trained_modules().items():
            module.load_state_dict(state[name])
        for optim, optim_state in zip(self._optims, state["optims"], strict=True):
            optim.load_state_dict(optim_state)
        self._rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.losses = list(state["losses"])

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        if self.model is None or self.split is None:
            raise RuntimeError("call fit() before score()")
        seqs = left_pad(observed_sequences(self.split, history, users), self.max_len)
        users_t = torch.from_numpy(np.asarray(users, dtype=np.int64))
        self.model.eval()
        state = self._encode(torch.from_numpy(seqs), users_t)[0][:, -1]  # (B, D)
        emb = self.model.items.table()[1:]  # (I, D)
        scores = (state @ emb.T).numpy()  # (B, I)
        return np.take_along_axis(scores, np.asarray(items, dtype=np.int64), axis=1)


def history_mask(history: UserItemSet, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: whether item ``items[m]`` (shifted ids, 0 = padding) is in the history
    of user ``users[b]``."""
    hits = history.contains(users.numpy()[:, None], items.numpy()[None] - 1)
    return torch.from_numpy(np.asarray(hits, dtype=bool))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set (0 if none): shape-static, so vmap-able."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _is_sparse(model: torch.nn.Module, name: str) -> bool:
    """Whether parameter ``name`` belongs to a sparse-gradient embedding table."""
    module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(module, torch.nn.Embedding) and module.sparse
