"""The LLM recommender: each candidate scored by the LLM's likelihood of its title.

For a row (a user and its candidates, all of one domain) the prompt shows the user's recent
in-domain history and the candidates in a seeded order (the saved lists put the held-out
item first: shown as is, position would leak it), and each candidate's score is the mean
log-probability of its title as the answer (:func:`score_candidates`: the prompt runs once,
its KV cache is reused for every candidate).

Modes (``mode``), the ablations of the LLM table:

* ``zeroshot``: the frozen LLM over titles (this class; nothing trains);
* ``lora``: titles, with LoRA adapters trained (TALLRec-style);
* ``soft``: soft tokens from a trained recommender (:mod:`.soft`), the LLM frozen, only the
  projectors trained (A-LLMRec-style);
* ``soft_lora``: soft tokens and adapters.

The trained modes are :class:`~fedllmrec.models.llm.tuned.TunedLLMRecommender`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Self

import numpy as np
import torch

from fedllmrec.data.sequences import observed_sequences
from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.errors import FedLLMRecError
from fedllmrec.models.llm.adapters import AdapterConfig, add_adapters
from fedllmrec.models.llm.backbone import LLMConfig, load_llm
from fedllmrec.models.llm.prompts import EncodedPrompt, PromptEncoder, load_rank_prompt
from fedllmrec.models.llm.scoring import score_candidates
from fedllmrec.models.llm.soft import SoftSource, SoftTokenConfig, SoftTokens, token_norm

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


Mode = Literal["zeroshot", "lora", "soft", "soft_lora"]


@dataclass
class LLMTrainConfig:
    """How the trained modes train (rows of the training split; see :mod:`.rows`).

    Parameters
    ----------
    lr, weight_decay : float
        AdamW on the adapters and projectors (centralized training; a federated client
        uses ``federated.local``'s optimiser, steps and learning rate instead).
    steps_per_epoch : int
        Optimiser steps per epoch (centralized training).
    batch_rows : int
        Training rows per optimiser step (each row: one user's next training item among
        ``negatives`` others, its prompt run once).
    negatives : int
        Uniform negatives per row, from the row's domain, never an item the user trained on.
    train_users : int
        Users per domain whose rows train (a seeded subset; 0: every user).
    rows_per_user : int
        Each user's last training positions per domain that become rows.
    seed : int
        Seeds the subset, the row draws, the negatives and the shown order.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    steps_per_epoch: int = 16
    batch_rows: int = 4
    negatives: int = 9
    train_users: int = 500
    rows_per_user: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps_per_epoch", "batch_rows", "negatives", "rows_per_user"):
            if getattr(self, name) < 1:
                raise FedLLMRecError(f"model.train.{name} must be >= 1")
        if self.train_users < 0:
            raise FedLLMRecError("model.train.train_users must be >= 0")
        if self.lr <= 0:
            raise FedLLMRecError("model.train.lr must be > 0")


@dataclass
class LLMRecConfig:
    """Options of :class:`LLMRecommender`.

    Parameters
    ----------
    llm : LLMConfig
        The frozen LLM.
    prompt_file : str, optional
        TOML file of ranking templates (default ``prompts/llm_rank.toml``).
    prompt_table : str
        Which template of the file.
    history_items, title_tokens : int, optional
        Override the template's (most recent items shown; tokens per title).
    chunk : int
        Candidates scored per batched pass after the shared prompt.
    seed : int
        Seeds the order candidates are shown in (per user).
    mode : {"zeroshot", "lora", "soft", "soft_lora"}
        Which parts are on (the module docstring); the soft modes need a source recommender.
    adapters : AdapterConfig
        LoRA adapters (the ``lora`` modes).
    soft : SoftTokenConfig
        Soft-token projectors (the ``soft`` modes).
    source : str, optional
        The run folder of the trained recommender the soft tokens read (``fedllmrec train``'s
        ``--out`` of an FKD recipe on the same data); the recipe loader resolves it.
    train : LLMTrainConfig
        Training of the trained modes.
    """

    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt_file: str | None = None
    prompt_table: str = "rank"
    history_items: int | None = None
    title_tokens: int | None = None
    chunk: int = 20
    seed: int = 0
    mode: Mode = "zeroshot"
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    soft: SoftTokenConfig = field(default_factory=SoftTokenConfig)
    source: str | None = None
    train: LLMTrainConfig = field(default_factory=LLMTrainConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("zeroshot", "lora", "soft", "soft_lora"):
            raise FedLLMRecError(f"model.mode: unknown mode {self.mode!r}")
        for name in ("history_items", "title_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FedLLMRecError(f"model.{name} must be >= 1, got {value}")

    @property
    def uses_adapters(self) -> bool:
        return self.mode in ("lora", "soft_lora")

    @property
    def uses_soft(self) -> bool:
        return self.mode in ("soft", "soft_lora")


class LLMRecommender:
    """LLM ranking over titles; zero-shot here (no adapter trained, no soft token).

    Parameters
    ----------
    config : LLMRecConfig
        The options.
    source : SoftSource or callable, optional
        The trained recommender the soft tokens read (the soft modes), or a function that
        loads it, called by :meth:`fit` (building a model reads no run).
    """

    def __init__(
        self,
        config: LLMRecConfig | None = None,
        source: SoftSource | Callable[[], SoftSource] | None = None,
    ) -> None:
        self.config = config or LLMRecConfig()
        self._source = source
        self.source: SoftSource | None = None
        self.split: Split | None = None
        self.model: PreTrainedModel | PeftModel | None = None
        self.prompts: PromptEncoder | None = None
        self.soft: SoftTokens | None = None
        if self.config.uses_soft and self._source is None:
            raise FedLLMRecError(
                f"model.mode = {self.config.mode!r} reads soft tokens from a trained "
                "recommender: set model.source to its run folder"
            )

    def fit(self, split: Split) -> Self:
        """Load the frozen LLM, the item titles and, per mode, the adapters and projectors
        (fresh: nothing is trained here)."""
        cfg = self.config
        self.split = split
        model, tokenizer = load_llm(cfg.llm)
        # One seed for the run: the adapters' initial A (the same on every client) follows it.
        self.model = (
            add_adapters(model, cfg.adapters, cfg.train.seed) if cfg.uses_adapters else model
        )
        titles = split.dataset.items.column("title").to_pylist()
        template = load_rank_prompt(cfg.prompt_file, cfg.prompt_table)
        template = dataclasses.replace(
            template,
            history_items=cfg.history_items or template.history_items,
            title_tokens=cfg.title_tokens or template.title_tokens,
        )
        self.prompts = PromptEncoder(tokenizer, template, titles, soft_tokens=cfg.uses_soft)
        if cfg.uses_soft:
            if self.source is None:
                loaded = self._source
                assert loaded is not None
                self.source = loaded if isinstance(loaded, SoftSource) else loaded()
            features = self.source.item_vectors()
            probe = self.source.user_states([np.zeros(1, dtype=np.int64)], np.zeros(1))
            with torch.random.fork_rng():
                torch.manual_seed(cfg.train.seed)
                self.soft = SoftTokens(
                    features,
                    split.dataset.item_domain,
                    user_dim=probe.shape[1],
                    llm_dim=model.config.hidden_size,
                    # a Tensor; transformers annotates it Tensor | Module
                    token_norm=token_norm(model.get_input_embeddings().weight),  # type: ignore[arg-type]
                    config=cfg.soft,
                ).to(self.device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the LLM computes (``model.llm.device``); prompts are moved there."""
        if self.model is None:
            raise RuntimeError("call fit() first")
        return next(self.model.parameters()).device

    def embed_prompt(self, prompt: EncodedPrompt) -> torch.Tensor:
        """The input embeddings (P, H) of ``prompt``'s tokens, on the LLM's device (its soft
        places still hold the placeholder's embedding)."""
        assert self.model is not None
        embeds: torch.Tensor = self.model.get_input_embeddings()(prompt.ids.to(self.device))
        return embeds

    def shown_order(self, user: int, n: int) -> np.ndarray:
        """The seeded order a user's ``n`` candidates are shown in (a permutation)."""
        return np.random.default_rng([self.config.seed, int(user)]).permutation(n)

    def row_prompt(
        self, user: int, history: np.ndarray, row: np.ndarray
    ) -> tuple[EncodedPrompt, np.ndarray, np.ndarray]:
        """The prompt of one row: ``user``'s observed ``history`` (every domain, in order)
        cut to the domain of the candidates ``row``, the candidates in the user's seeded
        order. Returns the encoded prompt, the candidates as shown, and that order
        (``shown = row[order]``)."""
        if self.split is None or self.prompts is None:
            raise RuntimeError("call fit() before row_prompt()")
        seq = self.domain_history(history, row)
        order = self.shown_order(user, row.shape[0])
        shown = row[order]
        return self.prompts.encode(seq.tolist(), shown.tolist()), shown, order

    def domain_history(self, history: np.ndarray, row: np.ndarray) -> np.ndarray:
        """The part of ``history`` in the domain of the candidates ``row``."""
        assert self.split is not None
        item_domain = self.split.dataset.item_domain
        return history[item_domain[history] == item_domain[row[0]]]

    def prompt_embeds(self, prompt: EncodedPrompt, seq: np.ndarray, domain: int) -> torch.Tensor:
        """The prompt's input embeddings (P, H), soft tokens written in (the user token from
        the source's state of the in-domain ``seq``)."""
        embeds = self.embed_prompt(prompt)
        if self.soft is None:
            return embeds
        assert self.source is not None
        state = self.source.user_states([seq], np.array([domain]))[0]
        return self.soft.inject(embeds, prompt, state)

    def score_row(self, embeds: torch.Tensor, shown: np.ndarray) -> torch.Tensor:
        """Scores (K,) of the ``shown`` candidates after the prompt's embeddings (P, H)."""
        assert self.model is not None and self.prompts is not None
        return score_candidates(
            self.model,
            embeds,
            self.prompts.continuations(shown.tolist()),
            chunk=self.config.chunk,
            pad_id=self.prompts.placeholder,
        )

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        """Scores (B, C) of ``items[r]`` for ``users[r]``: each title's mean log-probability."""
        if self.split is None or self.model is None or self.prompts is None:
            raise RuntimeError("call fit() before score()")
        items = np.asarray(items, dtype=np.int64)
        item_domain = self.split.dataset.item_domain
        out = np.empty(items.shape, dtype=np.float32)
        for r, seq in enumerate(observed_sequences(self.split, history, users)):
            encoded, shown, order = self.row_prompt(int(users[r]), seq, items[r])
            embeds = self.prompt_embeds(
                encoded, self.domain_history(seq, items[r]), int(item_domain[items[r, 0]])
            )
            out[r, order] = self.score_row(embeds, shown).float().cpu().numpy()
        return out
