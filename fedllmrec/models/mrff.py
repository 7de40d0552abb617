"""MRFF: multifaceted user modeling with group-gated Transformer layers (Zhang et al., AAAI 2025).

A SASRec-style stack in which each block's feed-forward part is replaced by

* a **group gating network**: ``pi = softmax(W_g [mean of masked states ; e_u] + b_g)``
  over K groups, hard top-1 ``k* = argmax pi`` with probability ``p = pi[k*]``;
* K **group FFNs**, of which the routed one runs;
* a **private user FFN**, one per user, beside it.

Blocks route independently, so stacking them gives hierarchical grouping. A
balance loss ``alpha * K * sum_l share_l[k*_l] * p_l`` keeps every group used.

Deviations from the authors' released code (see docs/models.md), each a defect fixed:

* the K group FFNs are independent tensors (the release repeats one module
  object, so all groups share one set of weights);
* ``gate="weighted"`` multiplies the group output by ``p`` so routing learns
  from the task; ``gate="balance_only"`` reproduces the release, where the gate
  is trained by the balance loss alone;
* user features are looked up by user id (the release uses row position);
* there are no parameter-name lists at all (the release splits them on ','
  without stripping spaces, so most shared tensors never train).

Two further choices make the model causal for all-position training: the gate
at position t sees the mean of the states up to t (a prefix mean), so the last
position's routing is exactly MRFF's per-user routing of the observed history,
and the residual stream is kept around the feed-forward part (pre-norm, as in
:mod:`fedllmrec.models.sasrec`).

Private state of all users is stored as stacked rows (one row per user of a
sparse embedding table), so a batch of many users runs in one pass and each
user's optimiser step touches only that user's row.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from fedllmrec.models.dropout import Dropout
from fedllmrec.models.items import ItemEmbedding, ItemEmbeddingConfig
from fedllmrec.models.owners import Owner
from fedllmrec.models.sasrec import (
    CausalSelfAttention,
    ItemSequenceModel,
    SASRecConfig,
    attention_bias,
)

GateMode = Literal["weighted", "balance_only"]


@dataclass
class MRFFConfig(SASRecConfig):
    """SASRec's hyper-parameters plus MRFF's groups, gate and private user state."""

    n_users: int = 0
    n_groups: int = 4
    gate: GateMode = "weighted"
    user_hidden: int = 16  # hidden width of each private user FFN
    balance_alpha: float = 0.1
    user_feature_cardinalities: tuple[int, ...] = field(default_factory=tuple)


@dataclass
class Routing:
    """Each user's routing at every layer, read at the last (most recent) position."""

    groups: torch.Tensor  # (L, B) chosen group k*
    probs: torch.Tensor  # (L, B) its gate probability p (differentiable)


def balance_loss(
    routing: Routing,
    n_groups: int,
    alpha: float,
    load: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """MRFF's balance loss, averaged over the users of a batch.

    Parameters
    ----------
    routing : Routing
        Chosen groups and their probabilities, (L, B) each.
    n_groups, alpha : int, float
        K and the loss weight.
    load : torch.Tensor, optional
        (L, K) share of participants routed to each group. In federated rounds
        this comes from the previous round's routing counts; by default the
        batch's own routing is used (a constant: no gradient flows through it).
    weight : torch.Tensor, optional
        (B,) weights of the users: the weighted sum replaces the mean.

    Returns
    -------
    torch.Tensor
        ``alpha * K * mean_b sum_l load[l, k*_lb] * p_lb``.
    """
    groups, probs = routing.groups, routing.probs
    if load is None:
        counts = F.one_hot(groups, n_groups).sum(dim=1).to(probs.dtype)  # (L, K)
        load = counts / groups.shape[1]
    chosen_load = load.detach().gather(1, groups)  # (L, B)
    per_user = (chosen_load * probs).sum(dim=0)  # (B,)
    total = per_user.mean() if weight is None else (per_user * weight).sum()
    return alpha * n_groups * total


class GroupFFN(nn.Module):
    """K independent feed-forward networks stored as stacked tensors (K, D, H).

    ``dense=True`` runs every group on every position and keeps the routed
    one: K times the arithmetic, but no data-dependent shapes, so it works
    under ``torch.func.vmap`` (the federated simulator batches clients so).
    """

    # Group k of every tensor is averaged over the users routed to k at this layer.
    OWNERS: ClassVar[dict[str, Owner]] = {"*": Owner.GROUP}

    def __init__(self, config: MRFFConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer  # routing layer, for group-wise aggregation
        self.dense = False
        # Row -> the row whose last position routes its client (the federated linear engine):
        # group tensors then learn only from positions routed as their client is.
        self.route_rows: torch.Tensor | None = None
        k, d, h = config.n_groups, config.dim, config.ffn_mult * config.dim
        # Each group is drawn independently: the release's groups were one shared module.
        self.w1 = nn.Parameter(torch.randn(k, d, h) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(k, h))
        self.w2 = nn.Parameter(torch.randn(k, h, d) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(k, d))
        self.dropout = Dropout(config.dropout, config.fast_dropout)

    def forward(self, z: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Output of group ``groups[b, t]`` at each real position: z (B, T, D) -> (B, T, D).

        Each group runs only on the positions routed to it (padding is skipped),
        so K groups cost one FFN, not K.
        """
        if self.dense:
            k = self.w1.shape[0]
            # Comparison, not F.one_hot: one_hot checks its values, which vmap cannot.
            chosen = (groups[..., None] == torch.arange(k)).to(z.dtype) * mask[..., None]
            h = F.relu(torch.einsum("btd,kdh->btkh", z, self.w1) + self.b1)  # (B, T, K, H)
            # One dropout mask per position serves all K (only the routed group survives).
            keep = self.dropout(torch.ones_like(h[:, :, 0]))  # (B, T, H)
            h = h * (keep[:, :, None] * chosen[..., None])
            return torch.einsum("btkh,khd->btd", h, self.w2) + chosen @ self.b2
        flat = z.reshape(-1, z.shape[-1])  # (N, D)
        k = self.w1.shape[0]
        # Part of each position: its group (0..K-1); with route_rows, K..2K-1 for positions
        # routed unlike their client (frozen weights there); 2K for padding (skipped).
        part = torch.where(mask.reshape(-1), groups.reshape(-1), 2 * k)  # (N,)
        if self.route_rows is not None:
            client_group = groups[self.route_rows, -1]  # (B,)
            own = (groups == client_group[:, None]).reshape(-1)  # (N,)
            part = torch.where(own | (part == 2 * k), part, part + k)
        # Positions sorted by part (stable: each part keeps position order): one gather,
        # contiguous slices per part, one scatter back, whatever K is.
        order = torch.argsort(part, stable=True)
        sizes = torch.bincount(part, minlength=2 * k + 1).tolist()
        real = order[: sum(sizes[: 2 * k])]
        slices = flat.index_select(0, real).split(sizes[: 2 * k])
        weights = (self.w1, self.b1, self.w2, self.b2)
        frozen = tuple(w.detach() for w in weights)
        outputs = []
        for index, x in enumerate(slices):
            if x.shape[0]:
                w1, b1, w2, b2 = weights if index < k else frozen
                g = index % k
                h = F.relu(torch.addmm(b1[g], x, w1[g]))  # (n_g, H)
                outputs.append(torch.addmm(b2[g], self.dropout(h), w2[g]))  # (n_g, D)
        out = torch.zeros_like(flat)
        if outputs:  # in place: the out-of-place copy would clone the zeros first
            out.index_copy_(0, real, torch.cat(outputs))
        return out.reshape(z.shape)


@contextlib.contextmanager
def group_ffn_mode(net: nn.Module, **settings: object) -> Iterator[None]:
    """Set attributes of every :class:`GroupFFN` in ``net`` meanwhile, then restore them.

    ``dense=True``: the vmap-able dense form; ``route_rows``: learn only from positions
    routed as their row's client is (the federated simulator's engines).
    """
    ffns = [m for m in net.modules() if isinstance(m, GroupFFN)]
    saved = [{name: getattr(ffn, name) for name in settings} for ffn in ffns]
    for ffn in ffns:
        for name, value in settings.items():
            setattr(ffn, name, value)
    try:
        yield
    finally:
        for ffn, values in zip(ffns, saved, strict=True):
            for name, value in values.items():
                setattr(ffn, name, value)


class UserRows(nn.Embedding):
    """A private table: one row per user, looked up by user id.

    ``aligned`` (set meanwhile by the federated ``linear`` engine, whose chunk puts the
    batch's own rows in the table, one per batch row and in batch order): a lookup is the
    table itself, not a gather whose backward fills and scatters a gradient as large.
    """

    aligned = False

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        if self.aligned:
            if self.weight.shape[0] != users.shape[0]:
                raise ValueError("an aligned table holds exactly one row per batch row")
            return self.weight
        return super().forward(users)


class UserFFN(nn.Module):
    """One private FFN per user, each user's weights packed into one row of a sparse table."""

    OWNERS: ClassVar[dict[str, Owner]] = {"rows.weight": Owner.PRIVATE}

    def __init__(self, config: MRFFConfig) -> None:
        super().__init__()
        d, h = config.dim, config.user_hidden
        self.shapes = {"w1": (d, h), "b1": (h,), "w2": (h, d), "b2": (d,)}
        width = sum(math.prod(s) for s in self.shapes.values())
        self.rows = UserRows(config.n_users, width, sparse=True)
        with torch.no_grad():
            self.rows.weight.zero_()
            offset = 0
            for name, shape in self.shapes.items():
                size = math.prod(shape)
                if name.startswith("w"):
                    self.rows.weight[:, offset : offset + size].normal_(std=0.02)
                offset += size
        self.dropout = Dropout(config.dropout, config.fast_dropout)

    def unpack(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-user weights of ``users`` (B,): w1 (B, D, H), b1 (B, H), w2 (B, H, D), b2 (B, D)."""
        flat = self.rows(users)  # (B, P)
        # One split, not four slices: each slice's backward writes a whole (B, P) gradient.
        parts = flat.split([math.prod(shape) for shape in self.shapes.values()], dim=1)
        return {
            name: part.reshape(-1, *shape)
            for (name, shape), part in zip(self.shapes.items(), parts, strict=True)
        }

    def forward(self, z: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        w = self.unpack(users)
        h = F.relu(torch.einsum("btd,bdh->bth", z, w["w1"]) + w["b1"][:, None])  # (B, T, H)
        return torch.einsum("bth,bhd->btd", self.dropout(h), w["w2"]) + w["b2"][:, None]


class MRFFBlock(nn.Module):
    """Causal attention, then the gated group FFN plus the user's private FFN."""

    # group_ffn and user_ffn declare their own owners.
    OWNERS: ClassVar[dict[str, Owner]] = {
        "ln_*": Owner.GLOBAL,
        "att.*": Owner.GLOBAL,
        "gate.*": Owner.GLOBAL,
    }

    def __init__(self, config: MRFFConfig, layer: int = 0) -> None:
        super().__init__()
        self.config = config
        self.ln_att = nn.LayerNorm(config.dim)
        self.att = CausalSelfAttention(config)
        self.ln_ffn = nn.LayerNorm(config.dim)
        self.gate = nn.Linear(2 * config.dim, config.n_groups)
        self.group_ffn = GroupFFN(config, layer)
        self.user_ffn = UserFFN(config)

    def forward(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor,
        bias: torch.Tensor,
        user_vec: torch.Tensor,
        users: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (next x (B, T, D), groups (B, T), gate probabilities (B, T)).

        ``bias`` (B, 1, T, T) is the attention mask of ``pad_mask`` (B, T), see
        :func:`~fedllmrec.models.sasrec.attention_bias`.
        """
        x = x + self.att(self.ln_att(x), bias)
        z = self.ln_ffn(x)  # (B, T, D)
        m = pad_mask[..., None].to(z.dtype)  # (B, T, 1)
        prefix_mean = (z * m).cumsum(1) / m.cumsum(1).clamp(min=1.0)  # (B, T, D)
        # gate([prefix_mean ; e_u]) without the (B, T, 2D) concatenation: e_u's half once per user.
        d = z.shape[-1]
        user_logits = F.linear(user_vec, self.gate.weight[:, d:], self.gate.bias)  # (B, K)
        logits = F.linear(prefix_mean, self.gate.weight[:, :d]) + user_logits[:, None]
        probs, groups = F.softmax(logits, dim=-1).max(dim=-1)  # (B, T)
        group_out = self.group_ffn(z, groups, pad_mask)
        if self.config.gate == "weighted":
            group_out = group_out * probs[..., None]
        x = x + group_out + self.user_ffn(z, users)
        return x, groups, probs  # padded positions unmasked (see ItemSequenceModel.embed)


class MRFF(ItemSequenceModel):
    """Item sequences (B, T) of users (B,) -> states (B, T, D) and each user's routing.

    Inputs and scoring are SASRec's; only the blocks differ.
    """

    config: MRFFConfig
    user_features: torch.Tensor  # (n_users, F) codes, row = user id
    # Global tensors whose delta shows a private attribute: a user's update of a feature
    # table touches exactly the row of its own feature value (docs/privacy.md).
    ATTRIBUTE_TENSORS: ClassVar[tuple[str, ...]] = ("user_feature_embs.*",)

    @property
    def OWNERS(self) -> dict[str, Owner]:
        """Shared sequence encoder; the user embedding and the user's features stay private."""
        owners = {"pos_emb.weight": Owner.GLOBAL, "ln_out.*": Owner.GLOBAL}
        owners["user_emb.weight"] = Owner.PRIVATE
        if len(self.user_feature_embs):
            # The feature *embeddings* are shared; each user's feature *values* are private.
            owners |= {"user_feature_embs.*": Owner.GLOBAL, "user_features": Owner.PRIVATE}
        return owners

    def __init__(
        self,
        config: MRFFConfig,
        items: ItemEmbedding | None = None,
        user_features: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if config.n_users <= 0:
            raise ValueError("MRFF needs n_users (one private state per user)")
        if config.gate not in ("weighted", "balance_only"):
            raise ValueError(f"gate must be 'weighted' or 'balance_only', not {config.gate!r}")
        self.config = config
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.dropout = Dropout(config.dropout, config.fast_dropout)
        self.blocks = nn.ModuleList(MRFFBlock(config, layer) for layer in range(config.n_layers))
        self.ln_out = nn.LayerNorm(config.dim)
        # Shared embeddings of the users' categorical features, looked up by user id.
        self.user_feature_embs = nn.ModuleList(
            nn.Embedding(c, config.dim) for c in config.user_feature_cardinalities
        )
        self.apply(self._init)
        self.user_emb = UserRows(config.n_users, config.dim, sparse=True)  # private
        nn.init.normal_(self.user_emb.weight, std=0.02)
        if config.user_feature_cardinalities:
            shape = (config.n_users, len(config.user_feature_cardinalities))
            if user_features is None or tuple(user_features.shape) != shape:
                raise ValueError(f"user features must be an integer tensor of shape {shape}")
            self.register_buffer("user_features", user_features.long())
        self.items = items or ItemEmbedding(ItemEmbeddingConfig(config.n_items, config.dim))

    def user_vector(self, users: torch.Tensor) -> torch.Tensor:
        """e_u: the private user embedding plus the user's feature embeddings, (B, D)."""
        vec = self.user_emb(users)
        for f, emb in enumerate(self.user_feature_embs):
            vec = vec + emb(self.user_features[users, f])
        return vec

    def forward(
        self,
        seq: torch.Tensor,
        users: torch.Tensor,
        extra: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Routing]:
        """States (B, T, D) and routing; ``extra`` (B, T, D) is added to the inputs, and
        ``vectors`` are the items' vectors if already looked up (see ``embed``)."""
        x, pad_mask = self.embed(seq, extra, vectors)
        user_vec = self.user_vector(users)  # (B, D)
        bias = attention_bias(pad_mask)
        groups, probs = [], []
        for block in self.blocks:
            x, g, p = block(x, pad_mask, bias, user_vec, users)
            groups.append(g[:, -1])  # left padding: the last position is the newest item
            probs.append(p[:, -1])
        states = self.ln_out(x * pad_mask[..., None])
        return states, Routing(torch.stack(groups), torch.stack(probs))
