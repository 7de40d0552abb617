"""The LLM recommender: each candidate scored by the LLM's likelihood of its title.

For a row (a user and its candidates, all of one domain) the prompt shows the user's recent
in-domain history and the candidates in a seeded order (the saved lists put the held-out
item first: shown as is, position would leak it), and each candidate's score is the mean
log-probability of its title as the answer (:func:`score_candidates`: the prompt runs once,
its KV cache is reused for every candidate). This module is the zero-shot, text-only mode;
soft tokens and adapters plug into the same prompt (:class:`PromptEncoder` marks their
places).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import numpy as np
import torch

from fedllmrec.data.sequences import observed_sequences
from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.models.llm.backbone import LLMConfig, load_llm
from fedllmrec.models.llm.prompts import EncodedPrompt, PromptEncoder, load_rank_prompt
from fedllmrec.models.llm.scoring import score_candidates

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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
    chunk : int
        Candidates scored per batched pass after the shared prompt.
    seed : int
        Seeds the order candidates are shown in (per user).
    """

    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt_file: str | None = None
    prompt_table: str = "rank"
    chunk: int = 20
    seed: int = 0


class LLMRecommender:
    """Zero-shot LLM ranking over titles (no adapter, no soft token)."""

    def __init__(self, config: LLMRecConfig | None = None) -> None:
        self.config = config or LLMRecConfig()
        self.split: Split | None = None
        self.model: PreTrainedModel | None = None
        self.prompts: PromptEncoder | None = None

    def fit(self, split: Split) -> Self:
        """Load the frozen LLM and the item titles (nothing is trained in this mode)."""
        cfg = self.config
        self.split = split
        self.model, tokenizer = load_llm(cfg.llm)
        titles = split.dataset.items.column("title").to_pylist()
        template = load_rank_prompt(cfg.prompt_file, cfg.prompt_table)
        self.prompts = PromptEncoder(tokenizer, template, titles)
        return self

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
        item_domain = self.split.dataset.item_domain
        seq = history[item_domain[history] == item_domain[row[0]]]  # the row's domain only
        order = self.shown_order(user, row.shape[0])
        shown = row[order]
        return self.prompts.encode(seq.tolist(), shown.tolist()), shown, order

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        """Scores (B, C) of ``items[r]`` for ``users[r]``: each title's mean log-probability."""
        if self.split is None or self.model is None or self.prompts is None:
            raise RuntimeError("call fit() before score()")
        items = np.asarray(items, dtype=np.int64)
        embed = self.model.get_input_embeddings()
        out = np.empty(items.shape, dtype=np.float32)
        for r, seq in enumerate(observed_sequences(self.split, history, users)):
            encoded, shown, order = self.row_prompt(int(users[r]), seq, items[r])
            scores = score_candidates(
                self.model,
                embed(encoded.ids),  # (P, H)
                self.prompts.continuations(shown.tolist()),
                chunk=self.config.chunk,
                pad_id=self.prompts.placeholder,
            )
            out[r, order] = scores.float().numpy()
        return out
