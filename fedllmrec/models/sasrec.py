"""SASRec: self-attentive sequential recommendation (Kang & McAuley, 2018).

One readable file in the style of nanoGPT: a config dataclass passed to every
module, causal self-attention blocks over the item sequence with learned
positions, and scores as inner products with the shared item embeddings.
Attention is written as plain matmuls (not ``scaled_dot_product_attention``) so
that the federated simulator can ``torch.func.vmap`` it over clients on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedllmrec.models.dropout import Dropout
from fedllmrec.models.items import PAD, ItemEmbedding, ItemEmbeddingConfig
from fedllmrec.models.owners import Owner

# PAD: item 0 is padding, item i is stored as i + 1
__all__ = ["PAD", "SASRec", "SASRecConfig", "trim_left_padding"]


@dataclass
class SASRecConfig:
    """Hyper-parameters of :class:`SASRec` (RecBole's defaults where they exist)."""

    n_items: int
    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    ffn_mult: int = 4
    fast_dropout: bool = False  # masks from random bytes (:mod:`.dropout`)


def attention_bias(pad_mask: torch.Tensor) -> torch.Tensor:
    """Additive causal mask (B, 1, T, T) of left-padded sequences with mask ``pad_mask`` (B, T).

    Query t sees real keys s <= t (0), nothing else (-inf). A padded query sees itself
    only, so no row is empty (no NaN to repair); its output is garbage that the model masks
    before its output norm, and no real position attends to it. Built once per forward.
    """
    t = pad_mask.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=pad_mask.device).tril()
    itself = torch.eye(t, dtype=torch.bool, device=pad_mask.device)
    allowed = (causal[None, None] & pad_mask[:, None, None, :]) | itself  # (B, 1, T, T)
    zeros = torch.zeros(allowed.shape, device=pad_mask.device)
    return zeros.masked_fill(~allowed, float("-inf"))


class _Scores(torch.autograd.Function):
    """``alpha * q @ k^T + bias`` (B, T, T) of q, k (B, T, Dh), with k's gradient contiguous.

    Autograd's own backward leaves k's gradient transposed (the gradient of ``k^T``), and
    concatenating it with q's and v's for the ``qkv`` projection is then a slow strided copy.
    """

    generate_vmap_rule = True  # plain tensor ops only: torch.func derives the batching

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.baddbmm(bias, q, k.transpose(-2, -1), alpha=alpha)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        q, k, _, alpha = inputs
        ctx.save_for_backward(q, k)
        ctx.alpha = alpha

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k = ctx.saved_tensors
        grad_q = (grad @ k).mul_(ctx.alpha)  # (B, T, Dh)
        grad_k = (grad.transpose(-2, -1) @ q).mul_(ctx.alpha)  # (B, T, Dh), contiguous
        return grad_q, grad_k, None, None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        if config.dim % config.n_heads:
            raise ValueError("dim must be divisible by n_heads")
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = Dropout(config.dropout, config.fast_dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D); keys masked by ``bias`` (B, 1, T, T), see attention_bias."""
        b, t, d = x.shape  # (B, T, D)
        h = self.n_heads
        q, k, v = self.qkv(x).split(d, dim=2)
        q = q.view(b, t, h, d // h).transpose(1, 2).reshape(b * h, t, d // h)  # (B * H, T, Dh)
        k = k.view(b, t, h, d // h).transpose(1, 2).reshape(b * h, t, d // h)
        v = v.view(b, t, h, d // h).transpose(1, 2).reshape(b * h, t, d // h)
        bias = bias.to(q.dtype).expand(b, h, t, t).reshape(b * h, t, t)
        # One fused pass for scale, product and mask: the (T, T) scores are the largest tensor.
        att = _Scores.apply(q, k, bias, 1 / math.sqrt(d // h))
        y = self.dropout(F.softmax(att, dim=-1)) @ v  # (B * H, T, Dh)
        return self.proj(y.view(b, h, t, d // h).transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.dim, config.ffn_mult * config.dim),
            nn.GELU(),
            nn.Linear(config.ffn_mult * config.dim, config.dim),
            Dropout(config.dropout, config.fast_dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm Transformer block: attention then feed-forward, each residual."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.ln_att = nn.LayerNorm(config.dim)
        self.att = CausalSelfAttention(config)
        self.ln_ffn = nn.LayerNorm(config.dim)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.att(self.ln_att(x), bias)
        return x + self.ffn(self.ln_ffn(x))  # padded positions unmasked (see embed)


def trim_left_padding(batch: dict[str, torch.Tensor], key: str = "seq") -> dict[str, torch.Tensor]:
    """Drop the leading columns that are padding in every row of ``batch[key]`` (..., T).

    Every tensor shaped like ``batch[key]`` loses the same columns; others are kept.
    Positions count back from the newest item (:meth:`ItemSequenceModel.embed`),
    so the model gives the same states on fewer positions.
    """
    seq = batch[key]
    used = (seq != PAD).reshape(-1, seq.shape[-1]).any(0)  # (T,)
    first = int(used.to(torch.uint8).argmax())  # 0 when nothing is used: kept whole
    if first == 0:
        return batch
    return {k: v[..., first:] if v.shape == seq.shape else v for k, v in batch.items()}


class ItemSequenceModel(nn.Module):
    """Input embedding and scoring shared by SASRec-style models (SASRec, MRFF)."""

    config: SASRecConfig
    items: ItemEmbedding
    pos_emb: nn.Embedding
    dropout: nn.Dropout

    @staticmethod
    def _init(module: nn.Module) -> None:
        """Normal(0, 0.02) weights and zero biases, applied to every Linear and Embedding."""
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(
        self,
        seq: torch.Tensor,
        extra: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled item vectors plus positions (B, T, D), and the mask (B, T) of real items.

        Padded positions are left unmasked until the last block: no real position sees them
        (attention masks their keys; a padded query sees only itself), their gradient is
        exactly zero, and the model zeroes them once before the output norm. So states are
        those of masking after every block, without a pass per block.

        Positions count back from the newest item, which is always ``max_len - 1``, so a
        left-padded batch gives the same states with its all-padding columns cut off.
        ``vectors`` (B, T, D) are ``self.items(seq)`` when the caller has looked them up.
        """
        t, max_len = seq.shape[1], self.config.max_len  # (B, T)
        if t > max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {max_len}")
        pad_mask = seq != PAD  # (B, T)
        pos = torch.arange(max_len - t, max_len, device=seq.device)
        vectors = self.items(seq) if vectors is None else vectors
        x = vectors * math.sqrt(self.config.dim) + self.pos_emb(pos)[None]
        if extra is not None:
            x = x + extra
        return self.dropout(x), pad_mask

    def score(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Inner products of states (B, D) with candidate items (B, C) or all items (C,)."""
        emb = self.items(items)  # (B, C, D) or (C, D)
        if emb.dim() == 2:
            return state @ emb.T  # (B, C)
        return torch.einsum("bd,bcd->bc", state, emb)


class SASRec(ItemSequenceModel):
    """Sequence of item indices (left-padded with 0) -> a state per position."""

    # Item vectors are declared by ItemEmbedding; everything else is shared by all clients.
    OWNERS: ClassVar[dict[str, Owner]] = {
        "pos_emb.weight": Owner.GLOBAL,
        "blocks.*": Owner.GLOBAL,
        "ln_out.*": Owner.GLOBAL,
    }

    def __init__(self, config: SASRecConfig, items: ItemEmbedding | None = None) -> None:
        super().__init__()
        self.config = config
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.dropout = Dropout(config.dropout, config.fast_dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_out = nn.LayerNorm(config.dim)
        self.apply(self._init)
        self.items = items or ItemEmbedding(ItemEmbeddingConfig(config.n_items, config.dim))

    def forward(
        self,
        seq: torch.Tensor,
        extra: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """States (B, T, D) for item sequences ``seq`` (B, T); position t sees items <= t.

        ``extra`` (B, T, D) is added to the input embeddings (e.g. past click labels);
        ``vectors`` are the items' vectors if already looked up (see :meth:`embed`).
        """
        x, pad_mask = self.embed(seq, extra, vectors)
        bias = attention_bias(pad_mask)
        for block in self.blocks:
            x = block(x, pad_mask, bias)
        return self.ln_out(x * pad_mask[..., None])  # (B, T, D)
