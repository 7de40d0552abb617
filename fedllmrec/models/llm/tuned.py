"""The trained LLM recommender: adapters and/or soft-token projectors fitted to rank.

Loss: a row's candidates (its next training item and uniform negatives, shown in a random
order) are scored exactly as at evaluation (mean title log-probability after the prompt,
the prompt run once, :func:`~fedllmrec.models.llm.scoring.score_candidates`), and the
softmax cross-entropy over those K scores is minimised: the objective is the ranking
itself, through the same cached scorer that ranks at test time (gradients flow through
the shared prompt's cache). The frozen LLM and the source recommender never train; AdamW
moves the adapters and projectors only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.errors import FedLLMRecError
from fedllmrec.models.llm.recommender import LLMRecConfig, LLMRecommender
from fedllmrec.models.llm.rows import TrainingRows, sample_negatives, training_rows
from fedllmrec.models.llm.soft import SoftSource


class TunedLLMRecommender(LLMRecommender):
    """LLM ranking with trained adapters (``lora``), soft tokens (``soft``) or both."""

    unit = "epoch"

    def __init__(
        self,
        config: LLMRecConfig | None = None,
        source: SoftSource | Callable[[], SoftSource] | None = None,
    ) -> None:
        super().__init__(config, source)
        if self.config.mode == "zeroshot":
            raise FedLLMRecError("model.mode = 'zeroshot' trains nothing: use LLMRecommender")
        self.losses: list[float] = []
        self.rows: TrainingRows | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.rng = np.random.default_rng(self.config.train.seed)
        self._pools: dict[int, np.ndarray] = {}
        self._trained: UserItemSet | None = None
        self._states: torch.Tensor | None = None  # (R, D) the source's state of each row
        # Data parallelism (fedllmrec.apps.finetune): this process's share of every batch
        # and the hook that sums the gradients over the processes before each step.
        self.replica = (0, 1)  # (rank, world size)
        self.gradient_sync: Callable[[list[torch.Tensor]], None] | None = None
        # Positions into rows of every row the last train_steps() call trained on, in
        # order (an audit's ground truth of what one client's upload was trained on).
        self.last_rows = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ setup

    def setup(self, split: Split) -> Self:
        """Load the LLM, add fresh adapters / projectors, draw the training rows."""
        cfg = self.config.train
        self.fit(split)
        self.rows = training_rows(split, cfg.train_users, cfg.rows_per_user, cfg.seed)
        if len(self.rows) == 0:
            raise FedLLMRecError("no training rows: no user has two training items in a domain")
        self._pools = {d: split.active_items(d) for d in np.unique(self.rows.domains).tolist()}
        self._trained = split.observed("valid")  # training pairs: never a held-out one
        if self.soft is not None:
            assert self.source is not None
            self._states = self.source.user_states(self.rows.histories, self.rows.domains)
        self.optimizer = self.new_optimizer()
        self.rng = np.random.default_rng(cfg.seed)
        self.losses = []
        return self

    def trained_modules(self) -> dict[str, nn.Module]:
        """The modules holding trained tensors: the adapted LLM and the projectors."""
        assert self.model is not None
        modules: dict[str, nn.Module] = {"llm": self.model}
        if self.soft is not None:
            modules["soft"] = self.soft
        return modules

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by name (``llm.…`` adapters, ``soft.…`` projectors)."""
        return {
            f"{prefix}.{name}": p
            for prefix, module in self.trained_modules().items()
            for name, p in module.named_parameters()
            if p.requires_grad
        }

    def new_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config.train
        return torch.optim.AdamW(
            list(self.trainable_parameters().values()), lr=cfg.lr, weight_decay=cfg.weight_decay
        )

    # ------------------------------------------------------------------ training

    def row_loss(self, row: int, rng: np.random.Generator) -> torch.Tensor:
        """Cross-entropy of training row ``row``'s target among its sampled candidates."""
        assert self.rows is not None and self.split is not None and self.prompts is not None
        assert self.model is not None and self._trained is not None
        rows, n = self.rows, self.config.train.negatives
        user, domain = int(rows.users[row]), int(rows.domains[row])
        negatives = sample_negatives(self._trained, self._pools[domain], user, n, rng)
        candidates = np.concatenate([[rows.targets[row]], negatives])
        order = rng.permutation(candidates.shape[0])
        shown = candidates[order]
        prompt = self.prompts.encode(rows.histories[row].tolist(), shown.tolist())
        embeds = self.embed_prompt(prompt)
        if self.soft is not None:
            assert self._states is not None
            embeds = self.soft.inject(embeds, prompt, self._states[row])
        scores = self.score_row(embeds, shown)  # (K,)
        target = torch.tensor([int(np.flatnonzero(order == 0)[0])], device=scores.device)
        return F.cross_entropy(scores[None].float(), target)

    def train_steps(
        self,
        rows: np.ndarray,
        steps: int,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
    ) -> float:
        """``steps`` optimiser steps, each on ``batch_rows`` rows drawn from ``rows``
        (positions into :attr:`rows`); returns the mean loss of the rows this process ran.

        Each row draws its negatives from a seed of its own, so a batch split over
        :attr:`replica` processes sees the very rows one process would, and the summed
        gradients (:attr:`gradient_sync`) are the one-process gradients.
        """
        batch_rows = self.config.train.batch_rows
        rank, world = self.replica
        params = list(self.trainable_parameters().values())
        total, count = 0.0, 0
        trained: list[np.ndarray] = []
        for _ in range(steps):
            batch = rng.choice(rows, size=min(batch_rows, rows.shape[0]), replace=False)
            trained.append(np.asarray(batch, dtype=np.int64))
            seeds = rng.integers(2**63 - 1, size=batch.shape[0])  # every process draws them
            optimizer.zero_grad(set_to_none=True)
            for i in range(rank, batch.shape[0], world):  # this process's share
                loss = self.row_loss(int(batch[i]), np.random.default_rng(int(seeds[i])))
                (loss / batch.shape[0]).backward()
                total += float(loss.detach())
                count += 1
            if self.gradient_sync is not None:
                for p in params:  # a process with no row this step still joins the sum
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                self.gradient_sync([p.grad for p in params if p.grad is not None])
            optimizer.step()
        self.last_rows = np.concatenate(trained) if trained else np.zeros(0, dtype=np.int64)
        return total / max(count, 1)

    def train_epoch(self) -> float:
        """``steps_per_epoch`` steps on the training rows; returns the mean loss."""
        if self.rows is None or self.optimizer is None:
            raise RuntimeError("call setup() before train_epoch()")
        loss = self.train_steps(
            np.arange(len(self.rows)), self.config.train.steps_per_epoch, self.optimizer, self.rng
        )
        self.losses.append(loss)
        return loss

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            raise RuntimeError("call setup() before state_dict()")
        return {
            "trained": {k: v.detach().clone() for k, v in self.trainable_parameters().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "losses": list(self.losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is None:
            raise RuntimeError("call setup() before load_state_dict()")
        live = self.trainable_parameters()
        if state["trained"].keys() != live.keys():
            raise FedLLMRecError("checkpoint's trained tensors differ from the model's")
        with torch.no_grad():
            for name, value in state["trained"].items():
                live[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.losses = list(state["losses"])
