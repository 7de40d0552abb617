"""Federated LLM adapters: every client trains the global adapter and its own private one.

:class:`FederatedLLM` trains a :class:`~fedllmrec.models.llm.tuned.TunedLLMRecommender`
by rounds. Clients are domains (each holds its users' rows in its domain, the
cross-domain setting) or users. In a round each sampled client starts from the global
tensors sent (the global adapter's ``B``, its ``A`` too under naive aggregation, and the
soft-token projectors), loads its own private adapter, takes ``federated.local.steps``
optimiser steps on its rows, keeps its new private adapter, and uploads the change of the
global tensors only: through the same seam as every other federation
(:meth:`~fedllmrec.federated.server.FederationServer.open_seam`: transforms, clipping, DP
noise, secure sum), into the same aggregator and server optimiser (:mod:`.round`).

Ownership (:func:`llm_ownership`): the LLM's weights are frozen; the global adapter is
global (its ``A`` frozen under FFA-LoRA's ``frozen_a``: seeded, the same everywhere, never
sent); the private adapter is private (the simulator keeps one copy per client and swaps
it in for that client's training and scoring); the projectors are global; the item
feature table of the soft tokens is private, one slot per domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import torch

from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.config import FederationConfig
from fedllmrec.federated.ownership import (
    SHARED,
    Owner,
    Ownership,
    OwnershipError,
    TensorOwner,
    declared_ownership,
)
from fedllmrec.federated.round import ServerState
from fedllmrec.federated.server import FederationServer
from fedllmrec.federated.uploads import Part, Uploads, UploadTransform
from fedllmrec.models.llm.adapters import adapter_owner
from fedllmrec.models.llm.tuned import TunedLLMRecommender


def llm_ownership(recommender: TunedLLMRecommender, n_clients: int) -> Ownership:
    """The checked owner of every tensor of the adapted LLM and its projectors.

    Names are ``llm.…`` (the peft model) and ``soft.…`` (the projectors). Private here
    means what it means everywhere, never sent, but not "one row per client": the private
    adapter is one live copy that :class:`FederatedLLM` swaps per client (it keeps each
    client's copy), and the soft tokens' feature table has one slot per domain. Raises
    :class:`OwnershipError` when a frozen parameter trains or a trained one is frozen.
    """
    owners: dict[str, TensorOwner] = {}
    for prefix, module in recommender.trained_modules().items():
        if prefix == "soft":
            declared = declared_ownership(module)
            for name, spec in declared.items():
                full = f"soft.{name}"
                owners[full] = TensorOwner(full, spec.owner, spec.is_parameter, spec.shape)
            continue
        tensors: list[tuple[str, torch.Tensor, bool]]
        tensors = [(n, t, True) for n, t in module.named_parameters()]
        tensors += [(n, t, False) for n, t in module.named_buffers()]
        for name, tensor, is_param in tensors:
            full = f"{prefix}.{name}"
            owner = adapter_owner(name, recommender.config.adapters)
            owners[full] = TensorOwner(full, owner, is_param, tuple(tensor.shape))
    trained = set(recommender.trainable_parameters())
    for name, spec in owners.items():
        if spec.owner is Owner.FROZEN and name in trained:
            raise OwnershipError(f"{name}: frozen, but requires grad")
        if spec.owner in (Owner.GLOBAL, Owner.GROUP) and name not in trained:
            raise OwnershipError(f"{name}: {spec.owner}, but does not train")
    return Ownership(owners, n_clients)


@dataclass
class FederatedLLM(FederationServer):
    """A trained-mode LLM recommender trained by federated rounds (domain or user clients).

    Parameters
    ----------
    recommender : TunedLLMRecommender
        The model (its ``setup`` loads the LLM, adds the adapters, draws the rows).
    federation : FederationConfig
        Partition, local steps and learning rate, strategy, privacy.
    transforms : sequence of UploadTransform
        Extra upload transforms (the seam runs them before the client's protections).
    """

    recommender: TunedLLMRecommender
    federation: FederationConfig = field(default_factory=FederationConfig)
    transforms: Sequence[UploadTransform] = ()
    _ownership: Ownership | None = field(default=None, repr=False)
    _server: ServerState | None = field(default=None, repr=False)
    _clients: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _client_rows: list[np.ndarray] = field(default_factory=list, repr=False)
    _private: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _fresh_private: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ setup

    def setup(self, split: Split) -> Self:
        """Build the model, its ownership, the clients (and their rows) and the server."""
        rec, cfg = self.recommender, self.federation
        self.check_options()
        rec.setup(split)
        rows = rec.rows
        assert rows is not None
        if cfg.partition == "domain":
            self._clients = np.unique(rows.domains)
            self._client_rows = [rows.of_domain(int(d)) for d in self._clients]
        else:
            self._clients = np.unique(rows.users)
            self._client_rows = [np.flatnonzero(rows.users == u) for u in self._clients]
        if cfg.max_clients:  # the first clients by id, as for the sequential models
            self._clients = self._clients[: cfg.max_clients]
            self._client_rows = self._client_rows[: cfg.max_clients]
        self._ownership = llm_ownership(rec, len(self._clients))
        self._server = ServerState.fresh(cfg, (0, 0), len(self._clients))
        every = self.tensors()
        # Every client's private adapter starts at the same seeded value (B = 0: no effect).
        self._fresh_private = {
            name: every[name].detach().clone() for name in self.ownership.private_parameters()
        }
        self._private = {}
        self.setup_privacy()
        return self

    def check_options(self) -> None:
        """Refuse federation options this trainer does not implement (before any loading)."""
        cfg, rec = self.federation, self.recommender
        problems = []
        if cfg.engine != "loop":
            problems.append(f"engine {cfg.engine!r}: the LLM's clients train in a loop ('loop')")
        if cfg.strategy.proximal_mu:
            problems.append("strategy.proximal_mu: FedProx is not implemented for the LLM")
        if cfg.local.length_buckets:
            problems.append("local.length_buckets: the LLM's rows are not windows")
        if cfg.local.batch_size:
            problems.append("local.batch_size: the rows per step are model.train.batch_rows")
        if rec.config.llm.device != "cpu":
            # The seam serialises CPU tensors; a client's weights stay where the server is.
            problems.append(f"model.llm.device {rec.config.llm.device!r}: clients run on the CPU")
        if cfg.partition == "user" and rec.config.uses_soft:
            problems.append(
                "partition 'user': soft tokens read per-domain item vectors (domain clients)"
            )
        if problems:
            raise FedLLMRecError("federated LLM: " + "; ".join(problems))

    # ------------------------------------------------------------------ views

    @property
    def n_clients(self) -> int:
        return int(self._clients.shape[0])

    @property
    def clients(self) -> np.ndarray:
        """Domain (or user) ids of the clients, by position."""
        return self._clients

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every live tensor by ownership name (``llm.…``, ``soft.…``)."""
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self.recommender.trained_modules().items():
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                out[f"{prefix}.{name}"] = t
        return out

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """The live global tensors: what the server holds and sends."""
        every = self.tensors()
        return {name: every[name] for name in self.ownership.names(*SHARED)}

    def private_state(self, client: int | None) -> dict[str, torch.Tensor]:
        """Client ``client``'s private adapter (the fresh one if it never trained or for
        ``None``)."""
        if client is None:
            return self._fresh_private
        return self._private.get(int(client), self._fresh_private)

    # ------------------------------------------------------------------ node hooks

    def client_examples(self) -> np.ndarray:
        """(n_clients,) each client's training rows (its upload weight)."""
        return np.array([rows.shape[0] for rows in self._client_rows], dtype=np.int64)

    def private_rows(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """Copies of the private adapters (C, ...) of the clients at ``positions``."""
        states = [self.private_state(int(self._clients[p])) for p in np.asarray(positions)]
        return {
            name: torch.stack([state[name] for state in states]).clone()
            for name in self.ownership.private_parameters()
        }

    def write_private_rows(self, positions: np.ndarray, rows: Mapping[str, torch.Tensor]) -> None:
        """Set the private adapters (C, ...) of the clients at ``positions``."""
        if set(rows) != set(self.ownership.private_parameters()):
            raise FedLLMRecError("private state must name every private adapter tensor")
        for i, position in enumerate(np.asarray(positions).tolist()):
            client = int(self._clients[position])
            self._private[client] = {name: value[i].clone() for name, value in rows.items()}

    def node_training(
        self,
        positions: np.ndarray,
        round_: int,
        sent: Mapping[str, torch.Tensor],
        load: torch.Tensor,
        emit: Callable[[Part], None],
        cohort: int | None = None,
        secure: bool | None = None,
    ) -> None:
        """:meth:`local_training`: the simulator already trains one client at a time
        (``load`` is unused: the LLM routes nothing)."""
        self.local_training(positions, round_, sent, emit, cohort, secure)

    def upload_chunks(self, positions: np.ndarray, round_: int) -> Iterator[np.ndarray]:
        """One client at a time, by position: the order :meth:`local_training` adds them."""
        for position in np.asarray(positions, dtype=np.int64).tolist():
            yield np.array([position], dtype=np.int64)

    def _use_private(self, client: int | None) -> None:
        every = self.tensors()
        with torch.no_grad():
            for name, value in self.private_state(client).items():
                every[name].copy_(value)

    # ------------------------------------------------------------------ a round

    def train_round(self) -> float:
        """One federated round; returns the participants' example-weighted local loss."""
        plan = self.plan_round()
        aggregator = self.new_aggregator(plan.number)
        self.local_training(
            plan.survivors, plan.number, plan.sent, aggregator.add, cohort=len(plan.participants)
        )
        return self.finish_round(plan, aggregator)

    def local_training(
        self,
        positions: np.ndarray,
        round_: int,
        sent: Mapping[str, torch.Tensor],
        emit: Callable[[Part], None],
        cohort: int | None = None,
        secure: bool | None = None,
    ) -> None:
        """Each client at ``positions`` trains from ``sent`` with its private adapter,
        keeps the new private adapter, and uploads its global delta through the seam."""
        rec, own, local = self.recommender, self.ownership, self.federation.local
        cohort = len(positions) if cohort is None else cohort
        seam, close = self.open_seam(round_, cohort, emit, secure)
        shared = own.names(*SHARED)
        private = own.private_parameters()
        every = self.tensors()
        trained = list(rec.trainable_parameters().values())
        try:
            for position in np.asarray(positions).tolist():
                client = int(self._clients[position])
                self.load_shared(sent)
                self._use_private(client)
                optimizer: torch.optim.Optimizer = (
                    torch.optim.Adam(trained, lr=local.lr)
                    if local.optimizer == "adam"
                    else torch.optim.SGD(trained, lr=local.lr)
                )
                rng = np.random.default_rng([self.federation.seed, round_, client])
                rows = self._client_rows[position]
                loss = rec.train_steps(rows, local.steps, optimizer, rng)
                delta = {name: (every[name].detach() - sent[name])[None] for name in shared}
                self._private[client] = {name: every[name].detach().clone() for name in private}
                seam(
                    Uploads.dense(
                        np.array([position]),
                        torch.tensor([float(rows.shape[0])], dtype=torch.float64),
                        torch.tensor([loss], dtype=torch.float32),
                        torch.zeros((1, 0), dtype=torch.long),
                        delta,
                        own,
                    )
                )
        finally:
            # The server's tensors move only when the round finishes, and no client's
            # private adapter stays in the live model once its turn is over.
            self.load_shared(sent)
            self._use_private(None)
        close()

    # ------------------------------------------------------------------ scoring

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        """Each row scored with the global tensors and its client's private adapter (its
        domain's, or its user's)."""
        rec = self.recommender
        assert rec.split is not None
        items = np.asarray(items, dtype=np.int64)
        if self.federation.partition == "domain":
            owner = rec.split.dataset.item_domain[items[:, 0]].astype(np.int64)
        else:
            owner = np.asarray(users, dtype=np.int64)
        out = np.empty(items.shape, dtype=np.float32)
        try:
            for client in np.unique(owner).tolist():
                rows = np.flatnonzero(owner == client)
                self._use_private(client)
                out[rows] = rec.score(np.asarray(users)[rows], items[rows], history)
        finally:
            self._use_private(None)
        return out

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Global tensors, every client's private adapter, server state and RNG."""
        server = self.server.state_dict()
        return {
            "shared": {k: v.detach().clone() for k, v in self.shared_tensors().items()},
            "private": {str(c): dict(v) for c, v in self._private.items()},
            "model_rng": self.recommender.rng.bit_generator.state,
            **server,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_shared(state["shared"])
        self._private = {int(c): dict(v) for c, v in state["private"].items()}
        self.server.load_state_dict(state)
        self.recommender.rng.bit_generator.state = state["model_rng"]
