"""Soft tokens: the recommender's user and item representations, projected into the prompt.

A-LLMRec / LLaRA style: what a trained recommender knows about a user (its sequence state)
and about an item (its ID vector beside the item's protected shared text vector) is mapped
by a small MLP to one input embedding each, written over a placeholder token of the prompt
(:class:`~fedllmrec.models.llm.prompts.EncodedPrompt` marks the places). No token is added
to the vocabulary and the recommender stays frozen; the projectors train with the adapters.

Each projected token is rescaled to the mean norm of the LLM's own token embeddings: an
untrained projector then writes inputs of the size the LLM was trained on, and the loss
moves their direction, not their scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedllmrec.errors import FedLLMRecError
from fedllmrec.models.llm.prompts import USER, EncodedPrompt
from fedllmrec.models.owners import Owner


@runtime_checkable
class SoftSource(Protocol):
    """A trained recommender the soft tokens read (e.g. the cross-domain FKD student)."""

    def user_states(self, seqs: list[np.ndarray], domains: np.ndarray) -> torch.Tensor:
        """(B, D) the state of each in-domain item sequence (oldest first) in its domain."""
        ...

    def item_vectors(self) -> torch.Tensor:
        """(n_items, F) every item's representation (ID vector, shared vector)."""
        ...


@dataclass(frozen=True)
class SoftTokenConfig:
    """The projectors of :class:`SoftTokens`.

    Parameters
    ----------
    hidden : int
        Width of each two-layer MLP (user state -> token, item features -> token).
    """

    hidden: int = 256

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise FedLLMRecError(f"model.soft.hidden must be >= 1, got {self.hidden}")


def _mlp(inputs: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, out))


class SoftTokens(nn.Module):
    """Projects user states and item features to LLM input embeddings.

    Item features are stored per domain (``features[d]`` holds domain ``d``'s items at
    their local rows): a domain's rows are its own recommender's private vectors, so they
    are private state of that domain's client, one slot per domain, never uploaded.

    Parameters
    ----------
    features : torch.Tensor
        (n_items, F) every item's features (:meth:`SoftSource.item_vectors`).
    item_domain : np.ndarray
        (n_items,) each item's domain.
    user_dim : int
        D, the width of the source's user states.
    llm_dim : int
        H, the LLM's input embedding width.
    token_norm : float
        Norm every projected token is scaled to (the LLM's mean token-embedding norm).
    config : SoftTokenConfig
        The projectors' width.
    """

    OWNERS: ClassVar[dict[str, Owner]] = {
        "features": Owner.PRIVATE,  # (S, W, F): a domain's item vectors, its slot
        "local_index": Owner.FROZEN,
        "slot": Owner.FROZEN,
        "user_proj.*": Owner.GLOBAL,
        "item_proj.*": Owner.GLOBAL,
    }

    features: torch.Tensor
    local_index: torch.Tensor
    slot: torch.Tensor

    def __init__(
        self,
        features: torch.Tensor,
        item_domain: np.ndarray,
        user_dim: int,
        llm_dim: int,
        token_norm: float,
        config: SoftTokenConfig | None = None,
    ) -> None:
        super().__init__()
        config = config or SoftTokenConfig()
        if features.shape[0] != item_domain.shape[0]:
            raise FedLLMRecError(
                f"soft tokens: {features.shape[0]} item feature rows for {item_domain.shape[0]} "
                "items (the source was trained on another split?)"
            )
        item_domain = np.asarray(item_domain, dtype=np.int64)
        n_domains = int(item_domain.max(initial=0)) + 1
        local = np.zeros(item_domain.shape[0], dtype=np.int64)
        for d in range(n_domains):
            ids = np.flatnonzero(item_domain == d)
            local[ids] = np.arange(ids.shape[0])
        width = int(np.bincount(item_domain, minlength=n_domains).max())
        table = features.new_zeros(n_domains, width, features.shape[1])
        table[torch.from_numpy(item_domain), torch.from_numpy(local)] = features.float()
        self.register_buffer("features", table)  # (S, W, F)
        self.register_buffer("local_index", torch.from_numpy(local))
        self.register_buffer("slot", torch.from_numpy(item_domain))
        self.user_proj = _mlp(user_dim, config.hidden, llm_dim)
        self.item_proj = _mlp(features.shape[1], config.hidden, llm_dim)
        self.token_norm = float(token_norm)

    def _scaled(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(tokens, dim=-1) * self.token_norm

    def items(self, items: torch.Tensor) -> torch.Tensor:
        """Tokens (..., H) of item ids ``items`` (unshifted)."""
        return self._scaled(
            self.item_proj(self.features[self.slot[items], self.local_index[items]])
        )

    def users(self, states: torch.Tensor) -> torch.Tensor:
        """Tokens (B, H) of user states (B, D)."""
        return self._scaled(self.user_proj(states))

    def inject(
        self, embeds: torch.Tensor, prompt: EncodedPrompt, user_state: torch.Tensor
    ) -> torch.Tensor:
        """``embeds`` (P, H) with every soft place of ``prompt`` overwritten (not in place:
        gradients reach the projectors); ``user_state`` (D,) feeds the user token."""
        device = embeds.device  # the prompt's tensors and the source's state may be on the CPU
        items = prompt.soft_items.to(device)
        is_user = items == USER
        tokens = torch.empty(items.shape[0], embeds.shape[1], dtype=embeds.dtype, device=device)
        if bool(is_user.any()):
            user = self.users(user_state.to(device)[None]).to(embeds.dtype)
            tokens = tokens.index_put((is_user,), user)
        if bool((~is_user).any()):
            item_tokens = self.items(items[~is_user]).to(embeds.dtype)
            tokens = tokens.index_put((~is_user,), item_tokens)
        return embeds.index_put((prompt.soft_positions.to(device),), tokens)


def token_norm(embedding: torch.Tensor) -> float:
    """The mean L2 norm of the rows of an embedding matrix (V, H)."""
    return float(embedding.detach().float().norm(dim=1).mean())
