"""Cross-domain fact-counter knowledge distillation (FKD, SF-UBM's first stage).

Domains are clients. What crosses between them is the protected item semantics
(:mod:`fedllmrec.semantics.protect`) and the teacher's parameters, never a user id,
a sequence or a domain's ID table:

* **teacher** (global): a SASRec over the *shared* item vectors through a learned
  adaptor (UniSRec-style), trained on every domain's sequences, so it scores the
  items of any domain, cold ones included;
* **students** (private, one per domain): a SASRec over the domain's own item IDs,
  stacked on a leading domain axis (:class:`StudentStack`), so a domain client
  holds and trains only its own slot; a domain's ID table holds only its items.

A student's loss (each part a recipe weight, ``[model.fkd]``):

* the **task** loss: next-item sampled softmax (the recommender's own objective);
* **factual KD**: ``T^2 KL(teacher || student)`` of the candidate-score
  distributions (target and sampled negatives) on the user's real sequence;
* **counterfactual KD**: the same on the sequence with a fraction of its items
  swapped for their nearest item in *another* domain by shared vector (how would
  this user act on the other domain's analogues); the student sees a swapped-in
  item through its projection of that item's shared vector;
* **alignment**: ``1 - cos`` between each ID embedding and its item's shared vector
  projected into the student's space (the projection the swapped-in items use).

The teacher is trained by its own task loss and receives no gradient from KD.
Design choices and their reasons: docs/cross-domain.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedllmrec.data.candidates import catalogue_row
from fedllmrec.data.sequences import domain_windows, left_pad, observed_sequences
from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.errors import FedLLMRecError, check_option
from fedllmrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from fedllmrec.models.items import PAD, ItemEmbedding, ItemEmbeddingConfig
from fedllmrec.models.owners import Owner
from fedllmrec.models.sasrec import SASRec, SASRecConfig
from fedllmrec.models.sequential import BatchLoss, SequentialRecommender, SequentialTrainConfig
from fedllmrec.semantics.protect import ProtectionConfig, SharedSemantics, share_semantics

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
MASKED = -1e9  # logit of an excluded candidate: finite, so KL terms stay 0 * finite


@dataclass
class FKDConfig:
    """Which parts train and how they are weighed (recipe table ``[model.fkd]``).

    Parameters
    ----------
    teacher : bool
        Train the shared-semantics teacher (global).
    students : bool
        Train the per-domain ID students (private).
    factual, counterfactual, alignment : float
        Weights of the student's KD and alignment terms (0: off).
    temperature : float
        KD temperature T (the KL is scaled by T^2).
    swap_fraction : float
        Share of a sequence's items swapped for their other-domain counterpart.
    score_with : {"student", "teacher"}
        Which model ranks at evaluation.
    item_bias : bool
        Give each student a learned per-item score bias (private, at its ID table's
        local ids), initialised to the log of the item's count in its domain's training
        windows (every position but column 0, the first item of a full window) plus
        ``bias_pseudocount``: the item prior (as a classifier's
        output bias starts at the log class frequency), so the vectors learn what
        differs from popularity. Its domain's own counts only.
    bias_pseudocount : float
        Added to every count before the log (> 0): smaller pushes never-trained items
        further down.
    prior_in_kd : bool
        With ``item_bias``: distil from the teacher's logits plus the student's own
        (detached) item prior. The text-only teacher knows no domain's popularity; KD
        then transfers its preferences without pulling the student's prior away.
    """

    teacher: bool = True
    students: bool = True
    factual: float = 0.0
    counterfactual: float = 0.0
    alignment: float = 0.0
    temperature: float = 2.0
    swap_fraction: float = 0.3
    score_with: Literal["student", "teacher"] = "student"
    item_bias: bool = False
    bias_pseudocount: float = 1.0
    prior_in_kd: bool = False

    def __post_init__(self) -> None:
        check = partial(check_option, "FKDConfig")
        check("teacher", self.teacher or self.students, "true when students is false", False)
        for name in ("factual", "counterfactual", "alignment"):
            check(name, getattr(self, name) >= 0.0, ">= 0", getattr(self, name))
        distils = self.factual > 0 or self.counterfactual > 0
        check("teacher", self.teacher or not distils, "true when a KD weight is set",
              self.teacher)  # fmt: skip
        check("students", self.students or self.score_with == "teacher",
              "true when score_with is 'student'", self.students)  # fmt: skip
        check("temperature", self.temperature > 0.0, "> 0", self.temperature)
        check("swap_fraction", 0.0 <= self.swap_fraction <= 1.0, "in [0, 1]",
              self.swap_fraction)  # fmt: skip
        check("bias_pseudocount", self.bias_pseudocount > 0.0, "> 0", self.bias_pseudocount)
        check("score_with", self.score_with in ("student", "teacher"),
              "'student' or 'teacher'", self.score_with)  # fmt: skip

    @property
    def uses_shared(self) -> bool:
        """Whether the students read shared vectors (alignment or counterfactual items)."""
        return self.students and (self.alignment > 0 or self.counterfactual > 0)


class StudentStack(nn.Module):
    """One ID-based SASRec (or GRU4Rec) per domain, every tensor stacked on axis 0 (the slot).

    A domain client holds a one-slot stack (its own student, slot 0), as a user
    client holds its own row of a private table; the full stack (every domain) lives
    only where every domain's state does (centralized training, the simulator's store).
    """

    local_index: torch.Tensor  # (n_items + 1,) shifted id -> local id in its domain's table
    shared: torch.Tensor  # (n_items + 1, text_dim) the protected vectors, when used
    counterpart: torch.Tensor  # (n_items + 1,) nearest other-domain item, when used

    def __init__(
        self,
        config: SASRecConfig,
        item_domain: np.ndarray,
        shared: torch.Tensor | None,
        counterpart: torch.Tensor | None,
        architecture: Literal["sasrec", "gru4rec"] = "sasrec",
        item_bias: bool = False,
    ) -> None:
        super().__init__()
        n_domains = int(item_domain.max(initial=0)) + 1
        local = np.zeros(item_domain.shape[0] + 1, dtype=np.int64)  # shifted id -> local id
        for d in range(n_domains):
            ids = np.flatnonzero(item_domain == d)
            local[ids + 1] = np.arange(1, ids.shape[0] + 1)
        width = int(local.max()) + 1  # the largest domain's items and padding
        self.register_buffer("local_index", torch.from_numpy(local))
        # The encoder's forward is borrowed from one template; its tensors come from the stack.
        dummy = ItemEmbedding(ItemEmbeddingConfig(1, config.dim))  # items come as vectors
        template: SASRec | GRU4Rec = (
            SASRec(config, dummy)
            if architecture == "sasrec"
            else GRU4Rec(GRU4RecConfig(1, config.dim, config.n_layers, config.dropout), dummy)
        )
        self._template = [template]  # a list: not a submodule, so none of its own tensors count
        encoder = {
            name: p for name, p in template.named_parameters() if not name.startswith("items.")
        }
        self.encoder = nn.ParameterDict(
            {
                _key(name): nn.Parameter(p.detach().expand(n_domains, *p.shape).clone())
                for name, p in encoder.items()
            }
        )
        table = torch.randn(n_domains, width, config.dim) * 0.02
        table[:, PAD] = 0.0
        self.id_emb = nn.Parameter(table)  # (S, L + 1, D): domain d's items at their local ids
        owners: dict[str, Owner] = {
            "local_index": Owner.FROZEN,
            "encoder.*": Owner.PRIVATE,
            "id_emb": Owner.PRIVATE,
        }
        self.id_bias: nn.Parameter | None = None
        if item_bias:
            self.id_bias = nn.Parameter(torch.zeros(n_domains, width))  # (S, L + 1)
            owners["id_bias"] = Owner.PRIVATE
        if shared is not None:
            text_dim = shared.shape[1]
            self.register_buffer("shared", torch.cat([shared.new_zeros(1, text_dim), shared]))
            self.align_weight = nn.Parameter(torch.randn(n_domains, text_dim, config.dim) * 0.02)
            self.align_bias = nn.Parameter(torch.zeros(n_domains, config.dim))
            owners |= {"shared": Owner.FROZEN, "align_*": Owner.PRIVATE}
        if counterpart is not None:
            self.register_buffer("counterpart", counterpart)
            owners["counterpart"] = Owner.FROZEN
        self._owners = owners

    @property
    def OWNERS(self) -> dict[str, Owner]:
        """Per-domain tensors are private (a domain's slot); the lookups are frozen data."""
        return self._owners

    @property
    def n_slots(self) -> int:
        return int(self.id_emb.shape[0])

    def train(self, mode: bool = True) -> StudentStack:
        super().train(mode)
        self._template[0].train(mode)  # dropout follows the stack
        return self

    def items(self, items: torch.Tensor, slot: int) -> torch.Tensor:
        """ID vectors (..., D) of own-domain items (shifted ids) in student ``slot``."""
        return self.id_emb[slot][self.local_index[items]]

    def bias(self, items: torch.Tensor, slot: int) -> torch.Tensor | None:
        """Score biases (...) of own-domain ``items`` in student ``slot`` (None: no bias)."""
        if self.id_bias is None:
            return None
        return self.id_bias[slot][self.local_index[items]]

    @torch.no_grad()
    def init_bias(
        self, counts: np.ndarray, item_domain: np.ndarray, pseudocount: float = 1.0
    ) -> None:
        """Set every slot's bias to ``log(pseudocount + counts)`` of its domain's items
        (n_items,), centred per domain; a slot reads only its own domain's counts."""
        if self.id_bias is None:
            return
        for d in range(self.n_slots):
            ids = np.flatnonzero(item_domain == d)
            prior = np.log(counts[ids].astype(np.float64) + pseudocount)
            local = self.local_index[torch.from_numpy(ids + 1)]
            self.id_bias[d, local] = torch.from_numpy(prior - prior.mean()).float()

    def projected(self, items: torch.Tensor, slot: int) -> torch.Tensor:
        """Shared vectors of ``items`` projected into student ``slot``'s space (..., D)."""
        return self.shared[items] @ self.align_weight[slot] + self.align_bias[slot]

    def states(self, seq: torch.Tensor, vectors: torch.Tensor, slot: int) -> torch.Tensor:
        """Student ``slot``'s states (B, T, D) of ``seq`` (B, T) given its item ``vectors``."""
        params = {_name(key): value[slot] for key, value in self.encoder.items()}
        out: torch.Tensor = functional_call(self._template[0], params, (seq, None, vectors))
        return out

    def scores(self, states: torch.Tensor, slot: int) -> torch.Tensor:
        """Student ``slot``'s scores (R, L + 1) of every local id for ``states`` (R, D)."""
        out = states @ self.id_emb[slot].T
        return out if self.id_bias is None else out + self.id_bias[slot]


def _key(name: str) -> str:
    return name.replace(".", "__")


def _name(key: str) -> str:
    return key.replace("__", ".")


class FKDNet(nn.Module):
    """The teacher and the student stack under one root."""

    def __init__(self, teacher: SASRec | None, students: StudentStack | None) -> None:
        super().__init__()
        self.teacher = teacher
        self.students = students


@dataclass
class FKDRecommender(SequentialRecommender):
    """FKD over domains: a shared-semantics teacher and per-domain ID students.

    Trains on in-domain windows only (each window is one domain's part of one user's
    sequence), centrally or as domain clients (``partition = "domain"``): the same
    loss either way. ``protection`` says how every domain protects the item vectors
    it shares; ``fkd`` which parts train and how they are weighed.
    """

    # The loss gathers its targets and groups rows by domain (data-dependent shapes).
    client_engines: ClassVar[tuple[str, ...]] = ("loop",)
    seeds_clients: ClassVar[bool] = True  # its draws match between the simulator and Flower
    train: SequentialTrainConfig = field(
        default_factory=lambda: SequentialTrainConfig(loss="sampled", sampler="popularity")
    )
    fkd: FKDConfig = field(default_factory=FKDConfig)
    protection: ProtectionConfig = field(default_factory=ProtectionConfig)
    semantics: SharedSemantics | None = field(default=None, repr=False)
    # (history, domain, encoder, user) -> the user's last state of that domain's sequence,
    # while a scoring session is open. The history object itself is the key (by identity):
    # the memo holds it, so no other history can take its place.
    _session: dict[tuple[UserItemSet, int, int, int], torch.Tensor] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check = partial(check_option, type(self).__name__)
        check("architecture", self.architecture in ("sasrec", "gru4rec"),
              "'sasrec' or 'gru4rec' (the students'; the teacher is a SASRec)",
              self.architecture)  # fmt: skip
        check("fkd.teacher", self.architecture == "sasrec" or not self.fkd.teacher,
              "false with gru4rec students (single-domain GRU4Rec rows)",
              self.fkd.teacher)  # fmt: skip
        check("item_source", self.item_source == "id", "'id' (students are ID models)",
              self.item_source)  # fmt: skip

    # ------------------------------------------------------------------ building

    @property
    def net(self) -> FKDNet:
        if not isinstance(self.model, FKDNet):
            raise RuntimeError("call setup() first")
        return self.model

    def _build(self, split: Split) -> Any:
        ds = split.dataset
        check = partial(check_option, f"{type(self).__name__}.train")
        check("loss", self.train.loss == "sampled", "'sampled'", self.train.loss)
        check("sampler", self.train.sampler == "popularity", "'popularity'", self.train.sampler)
        # Items nobody in the split touched are never a window, a draw or a candidate: they
        # are neither embedded nor shared (a user subset embeds only its own items).
        active = np.unique(ds.item)
        if self.text_embeddings is None:
            from fedllmrec.semantics import embed_items, item_texts

            texts = item_texts(ds)
            vectors = np.zeros((ds.n_items, EMBEDDING_DIM), dtype=np.float32)
            vectors[active] = embed_items([texts[i] for i in active.tolist()])
            self.text_embeddings = vectors
        # What crosses between domains: every domain's protected copy, never the originals.
        self.semantics = share_semantics(
            self.text_embeddings, ds.item_domain, self.protection, items=active
        )
        shared = torch.from_numpy(np.ascontiguousarray(self.semantics.vectors))
        config = SASRecConfig(
            ds.n_items, self.max_len, self.dim, self.n_layers, self.n_heads, self.dropout,
            self.ffn_mult, self.fast_dropout,
        )  # fmt: skip
        teacher = None
        if self.fkd.teacher:
            items = ItemEmbedding(
                ItemEmbeddingConfig(
                    ds.n_items,
                    self.dim,
                    source="text",
                    text_dim=shared.shape[1],
                    text_dropout=self.dropout,
                    fast_dropout=self.fast_dropout,
                ),
                text=shared,
            )
            teacher = SASRec(config, items)
        students = None
        if self.fkd.students:
            counterpart = None
            if self.fkd.counterfactual > 0:
                near = self.semantics.counterparts()  # (n_items,) unshifted
                counterpart = torch.from_numpy(np.concatenate([[PAD], near + 1]).astype(np.int64))
            students = StudentStack(
                config,
                ds.item_domain,
                shared if self.fkd.uses_shared else None,
                counterpart,
                architecture="gru4rec" if self.architecture == "gru4rec" else "sasrec",
                item_bias=self.fkd.item_bias,
            )
        return FKDNet(teacher, students)

    def _load_training_data(self, split: Split) -> None:
        # In-domain windows: a domain's part of a user's sequence never mixes domains.
        chunks, users, _ = domain_windows(split, self.max_len + 1)
        self._data = torch.from_numpy(left_pad(chunks, self.max_len + 1))
        self._users = torch.from_numpy(users)
        self._proposal = self._make_proposal()
        students = self.net.students
        if students is not None:  # the item priors: counts over the windows' target columns
            targets = self._data[:, 1:].reshape(-1).numpy()
            counts = np.bincount(targets[targets != PAD] - 1, minlength=split.dataset.n_items)
            students.init_bias(counts, split.dataset.item_domain, self.fkd.bias_pseudocount)

    # ------------------------------------------------------------------ training

    def batch_loss(self, batch: Mapping[str, torch.Tensor]) -> BatchLoss:
        """The FKD loss of a batch: the student's task loss is ``task``, the rest ``aux``
        (the teacher's task loss, KD and alignment; in a teacher-only run ``task`` is the
        teacher's). Rows are grouped by domain, each scored against its own domain's draws
        by its own student slot; targets are gathered (data-dependent shapes)."""
        task, aux, mask = self._fkd_loss(batch)
        return BatchLoss(task, aux, mask.sum(), None)

    def client_loss(self, batch: Mapping[str, torch.Tensor], load: torch.Tensor) -> BatchLoss:
        """One domain client's loss: the same as :meth:`batch_loss` (gathers its targets,
        so the client engine is ``loop``; ``load`` is unused, FKD has no routing)."""
        return self.batch_loss(batch)

    def row_weighted_loss(
        self, batch: Mapping[str, torch.Tensor], row_weight: torch.Tensor
    ) -> BatchLoss:
        raise FedLLMRecError("FKD has no row-weighted loss: train domain clients with 'loop'")

    def _fkd_loss(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net, cfg = self.net, self.fkd
        seq = batch["seq"]
        inputs, targets = seq[:, :-1], seq[:, 1:]  # (B, T)
        mask = (targets != PAD) & (inputs != PAD)
        proposal = self._proposal
        if proposal is None:
            raise FedLLMRecError("FKD needs model.train.sampler = 'popularity'")
        item_domain = proposal.item_domain
        # The newest target is never padding. tolist reads values under torch.func.grad too.
        row_domain = np.asarray(item_domain[targets[:, -1]].tolist(), dtype=np.int64)
        sums = {k: torch.zeros(()) for k in ("teacher", "student", "fact", "counter", "align")}
        n_targets = mask.sum()
        slots = net.students.n_slots if net.students is not None else 0
        for d in np.unique(row_domain).tolist():
            rows = torch.from_numpy(np.flatnonzero(row_domain == d))
            slot = d if slots > 1 else 0
            group = self._group_loss(inputs[rows], targets[rows], mask[rows], d, slot)
            for key, value in group.items():
                sums[key] = sums[key] + value
        n = n_targets.clamp(min=1).to(torch.float32)
        means = {k: v / n for k, v in sums.items()}
        if not cfg.students:
            return means["teacher"], torch.zeros(()), mask
        aux = means["teacher"] if cfg.teacher else torch.zeros(())
        aux = aux + cfg.factual * means["fact"] + cfg.counterfactual * means["counter"]
        aux = aux + cfg.alignment * means["align"]
        return means["student"], aux, mask

    def _group_loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        domain: int,
        slot: int,
    ) -> dict[str, torch.Tensor]:
        """Summed losses of one domain's rows (B, T): teacher and student task, KD, alignment."""
        net, cfg = self.net, self.fkd
        proposal = self._proposal
        assert proposal is not None
        negatives = proposal.draw(self.rng, self.train.n_negatives, np.array([domain]))  # (M,)
        tgt = targets[mask]  # (N,)
        log_q_pos = proposal.log_q[tgt][:, None]  # (N, 1)
        # What every negative logit adds, built once for the up to four logit matrices:
        # minus its log-probability of being drawn, and MASKED on accidental hits (a
        # negative equal to the row's target), whose softmax weight is then exactly 0.
        hit = negatives[None] == tgt[:, None]  # (N, M)
        offset = (hit * MASKED).sub_(proposal.log_q[negatives][None])  # (N, M)
        out: dict[str, torch.Tensor] = {}

        def logits(
            states: torch.Tensor,
            pos: torch.Tensor,
            neg: torch.Tensor,
            bias: tuple[torch.Tensor, torch.Tensor] | None = None,
        ) -> torch.Tensor:
            positive = (states * pos).sum(-1, keepdim=True) - log_q_pos  # (N, 1)
            if bias is not None:  # the student's per-item priors
                positive = positive + bias[0][:, None]
                # The negatives' priors ride in the product: [states, 1] @ [neg, bias]^T.
                states = torch.cat([states, states.new_ones(states.shape[0], 1)], dim=1)
                neg = torch.cat([neg, bias[1][:, None]], dim=1)
            negative = torch.addmm(offset, states, neg.T)  # (N, M), one pass
            return torch.cat([positive, negative], dim=1)  # (N, 1 + M), target at 0

        zero = torch.zeros(tgt.shape[0], dtype=torch.long)
        teacher_logits = None
        if net.teacher is not None:
            t_items = net.teacher.items
            t_states = net.teacher(inputs)[mask]  # (N, D)
            teacher_logits = logits(t_states, t_items(tgt), t_items(negatives))
            out["teacher"] = F.cross_entropy(teacher_logits, zero, reduction="sum")
        students = net.students
        if students is None:
            return out
        vectors = students.items(inputs, slot)  # (B, T, D)
        s_states = students.states(inputs, vectors, slot)[mask]
        s_pos, s_neg = students.items(tgt, slot), students.items(negatives, slot)
        b_pos, b_neg = students.bias(tgt, slot), students.bias(negatives, slot)
        s_bias = None if b_pos is None or b_neg is None else (b_pos, b_neg)
        student_logits = logits(s_states, s_pos, s_neg, s_bias)
        out["student"] = F.cross_entropy(student_logits, zero, reduction="sum")
        prior = None  # the student's prior on the candidates (N, 1 + M), for the teacher
        if cfg.prior_in_kd and s_bias is not None:
            b_pos, b_neg = s_bias[0].detach(), s_bias[1].detach()
            prior = torch.cat([b_pos[:, None], b_neg[None].expand(b_pos.shape[0], -1)], dim=1)
        if cfg.factual > 0 and teacher_logits is not None:
            target = teacher_logits.detach() if prior is None else teacher_logits.detach() + prior
            out["fact"] = distillation(target, student_logits, cfg.temperature)
        if cfg.counterfactual > 0 and net.teacher is not None:
            swapped = self.swap(inputs)  # (B, T)
            foreign = swapped != inputs
            cf_vectors = torch.where(
                foreign[..., None], students.projected(swapped, slot), vectors
            )  # (B, T, D)
            cf_states = students.states(swapped, cf_vectors, slot)[mask]
            with torch.no_grad():
                t_cf = net.teacher(swapped)[mask]
                t_cf_logits = logits(t_cf, net.teacher.items(tgt), net.teacher.items(negatives))
                if prior is not None:
                    t_cf_logits = t_cf_logits + prior
            cf_logits = logits(cf_states, s_pos, s_neg, s_bias)
            out["counter"] = distillation(t_cf_logits, cf_logits, cfg.temperature)
        if cfg.alignment > 0:
            seen = torch.cat([inputs[inputs != PAD], tgt])
            ids, proj = students.items(seen, slot), students.projected(seen, slot)
            out["align"] = (1.0 - F.cosine_similarity(ids, proj, dim=-1)).sum()
        return out

    def swap(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` with each real item swapped for its other-domain counterpart with
        probability ``swap_fraction`` (counterparts from shared vectors only)."""
        students = self.net.students
        assert students is not None
        draw = torch.rand(inputs.shape) < self.fkd.swap_fraction
        swap = draw & (inputs != PAD)
        return torch.where(swap, students.counterpart[inputs], inputs)

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        """Scores of candidates ``items`` (B, C), each row ranked from its domain's history
        only, by the row's domain student (or the teacher, ``score_with = "teacher"``)."""
        if self.model is None or self.split is None:
            raise RuntimeError("call fit() before score()")
        net, split, ds = self.net, self.split, self.split.dataset
        net.eval()
        # A broadcast catalogue (the full ranking: every row the same items) is gathered
        # by column, once, instead of row by row.
        row = catalogue_row(items)
        catalogue = row is not None
        items = np.asarray(items if row is None else row[None], dtype=np.int64)
        row_domain = ds.item_domain[items[:, 0]]
        if catalogue:
            row_domain = np.broadcast_to(row_domain, (len(users),))
        out = np.empty((len(users), items.shape[1]), dtype=np.float32)
        for d in np.unique(row_domain).tolist():
            rows = np.flatnonzero(row_domain == d)

            def domain_seq(who: np.ndarray, d: int = d) -> torch.Tensor:
                """Left-padded shifted ids (R, T) of ``who``'s domain-``d`` history."""
                observed = observed_sequences(split, history, who)
                seqs = [s[ds.item_domain[s] == d] for s in observed]  # this domain's part
                return torch.from_numpy(left_pad(seqs, self.max_len))

            # +1 in numpy: a fresh, writable array (a broadcast catalogue row is read-only).
            shifted = torch.from_numpy((items if catalogue else items[rows]) + 1)  # (R or 1, C)
            if self.fkd.score_with == "teacher":
                assert net.teacher is not None
                teacher = self._teacher_states
                state = self._states((history, d, -1), users[rows], domain_seq, teacher)
                table = net.teacher.items.table()  # (n_items + 1, D)
                out[rows] = _gather(state @ table.T, shifted).numpy()
                continue
            students = net.students
            assert students is not None
            slot = d if students.n_slots > 1 else 0
            state = self._states((history, d, slot), users[rows], domain_seq,
                                 partial(self._student_states, slot=slot))  # fmt: skip
            scores = students.scores(state, slot)  # (R, L + 1) at local ids
            out[rows] = _gather(scores, students.local_index[shifted]).numpy()
        return out

    @contextmanager
    def scoring_session(self) -> Iterator[None]:
        """Within, each user's state per history, domain and encoder is computed once and reused
        (an evaluation scores the same users in several modes; see
        :func:`fedllmrec.models.base.scoring_session`). Weights must not change inside."""
        self._session = {}
        try:
            yield
        finally:
            self._session = None

    def _states(
        self,
        what: tuple[UserItemSet, int, int],
        users: np.ndarray,
        sequences: Callable[[np.ndarray], torch.Tensor],
        encode: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``encode(sequences(users))``: the users' states (R, D), from the open scoring
        session's memo where it holds them. ``what`` is (history, domain, encoder): the
        sequences are the users' ``domain`` part of ``history``, the encoder a student
        slot or -1 for the teacher (a user's state differs by domain even for one encoder).
        """
        memo = self._session
        if memo is None:
            return encode(sequences(users))
        history, domain, encoder = what
        keys = [(history, domain, encoder, int(u)) for u in users]
        missing = list(dict.fromkeys(k for k in keys if k not in memo))  # unique, in order
        if missing:
            fresh = encode(sequences(np.array([k[3] for k in missing], dtype=np.int64)))
            memo.update(zip(missing, fresh, strict=True))
        return torch.stack([memo[k] for k in keys])

    # ------------------------------------------------------------------ representations

    def _teacher_states(self, seq: torch.Tensor) -> torch.Tensor:
        """The teacher's last state (R, D) of left-padded shifted ``seq`` (R, T)."""
        teacher = self.net.teacher
        assert teacher is not None
        out: torch.Tensor = teacher(seq)[:, -1]
        return out

    def _student_states(self, seq: torch.Tensor, slot: int) -> torch.Tensor:
        """Student ``slot``'s last state (R, D) of left-padded shifted ``seq`` (R, T)."""
        students = self.net.students
        assert students is not None
        return students.states(seq, students.items(seq, slot), slot)[:, -1]

    @torch.no_grad()
    def user_states(self, seqs: list[np.ndarray], domains: np.ndarray) -> torch.Tensor:
        """Each in-domain sequence's state (B, D) in its domain's student (the vector its
        scores are dot products with): what the LLM's user soft token is projected from.

        ``seqs[b]``: item ids, oldest first, all of domain ``domains[b]``.
        """
        students = self.net.students
        if students is None or self.split is None:
            raise RuntimeError("user_states() needs a fitted model with students")
        self.net.eval()
        domains = np.asarray(domains, dtype=np.int64)
        out = torch.zeros(len(seqs), students.id_emb.shape[-1])
        for d in np.unique(domains).tolist():
            rows = np.flatnonzero(domains == d)
            seq = torch.from_numpy(left_pad([seqs[r] for r in rows], self.max_len))
            out[torch.from_numpy(rows)] = self._student_states(
                seq, d if students.n_slots > 1 else 0
            )
        return out

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """(n_items, D + text_dim) each item's ID vector in its own domain's student, then
        its protected shared vector: what the LLM's item soft tokens are projected from
        (a domain's ID rows are that domain's private state)."""
        students = self.net.students
        if students is None or self.split is None:
            raise RuntimeError("item_vectors() needs a fitted model with students")
        item_domain = self.split.dataset.item_domain
        shifted = torch.arange(1, item_domain.shape[0] + 1)
        out = torch.zeros(item_domain.shape[0], students.id_emb.shape[-1])
        for d in range(int(item_domain.max(initial=0)) + 1):
            ids = torch.from_numpy(np.flatnonzero(item_domain == d))
            out[ids] = students.items(shifted[ids], d if students.n_slots > 1 else 0)
        assert self.semantics is not None  # set with the students
        return torch.cat([out, torch.from_numpy(np.asarray(self.semantics.vectors))], dim=1)


def _gather(scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``scores`` (R, N) at ``columns`` (R, C), or at the same (1, C) columns in every row."""
    if columns.shape[0] == 1 and scores.shape[0] != 1:
        return scores[:, columns[0]]
    return torch.take_along_dim(scores, columns, dim=1)


def distillation(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed ``T^2 KL(softmax(teacher / T) || softmax(student / T))`` over rows (N, C).

    Zero exactly when the two logit rows are equal; excluded candidates carry a large
    finite negative logit on both sides, so they add 0.
    """
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    log_s = F.log_softmax(student / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum() * temperature**2
