"""The in-process federated simulator: every user (or domain) a client, a round per "epoch".

:class:`FederatedRecommender` wraps a centralized recommender (SASRec, GRU4Rec
or MRFF; next-item or click) and trains it by federated rounds. It satisfies
the trainer's :class:`~fedllmrec.train.trainer.Trainable` contract (the
trainer's "epoch" is one round), so early stopping on validation, atomic
checkpoints every ``eval_every`` rounds, exact resume, ``metrics.json`` and the
learning curve come from the same trainer as centralized runs, and evaluation
scores each user with the global model plus that user's private state.

A round is :mod:`.round`'s: plan (sample, drop), chunk, local training by the
configured engine (:mod:`.engines`), every upload through the upload transforms
(:mod:`.uploads`) into the aggregator (:mod:`.aggregation`), finish (aggregate,
routing load, records). The Flower ServerApp runs the same plan and finish with
the local training on its nodes (:meth:`local_training`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import torch

from fedllmrec.data.candidates import catalogue_row
from fedllmrec.data.sequences import domain_windows, left_pad
from fedllmrec.data.split import Split, UserItemSet
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.config import FederationConfig
from fedllmrec.federated.engines import Engine, LocalJob, client_engine, engine_for
from fedllmrec.federated.net import ClientNet
from fedllmrec.federated.ownership import (
    SHARED,
    Owner,
    Ownership,
    attribute_tensors,
    declared_ownership,
)
from fedllmrec.federated.population import ClientPopulation
from fedllmrec.federated.privacy import ClientPrivacy, DPRelease
from fedllmrec.federated.round import (
    ServerState,
    chunk_clients,
)
from fedllmrec.federated.server import FederationServer
from fedllmrec.federated.uploads import (
    Part,
    UploadTransform,
)
from fedllmrec.models.base import scoring_session
from fedllmrec.models.mrff import MRFF
from fedllmrec.models.sequential import SequentialRecommender


@dataclass
class FederatedRecommender(FederationServer):
    """A sequential recommender trained by federated rounds.

    Parameters
    ----------
    recommender : SequentialRecommender
        The model trained federatedly (its ``setup`` builds it, seeded as centrally).
    federation : FederationConfig
        Engine, partition, local training and strategy.
    transforms : sequence of UploadTransform
        The upload seam: every client upload passes them in order before aggregation.
    """

    recommender: SequentialRecommender
    federation: FederationConfig = field(default_factory=FederationConfig)
    transforms: Sequence[UploadTransform] = ()
    _net: ClientNet | None = field(default=None, repr=False)
    _ownership: Ownership | None = field(default=None, repr=False)
    _population: ClientPopulation | None = field(default=None, repr=False)
    _server: ServerState | None = field(default=None, repr=False)
    _release: DPRelease | None = field(default=None, repr=False)
    _client_privacy: ClientPrivacy | None = field(default=None, repr=False)
    _withheld: tuple[str, ...] = field(default=(), repr=False)
    _history_cache: tuple[UserItemSet, dict[int, UserItemSet]] | None = field(
        default=None, repr=False
    )

    # ------------------------------------------------------------------ setup

    def setup(self, split: Split) -> Self:
        """Build the model (seeded as centrally), its ownership, and the client population."""
        rec, cfg = self.recommender, self.federation
        if rec.train.loss == "sampled" and rec.train.negatives_exclude == "history":
            raise FedLLMRecError(
                "model.train.negatives_exclude = 'history' is for centralized training: a "
                "federated client's batch holds local user rows, not user ids"
            )
        rec.setup(split)
        self._net = ClientNet(rec)
        self._ownership = own = declared_ownership(self._net)
        if self.transforms and engine_for(cfg.engine).fused:
            raise FedLLMRecError(
                f"engine {cfg.engine!r} emits the round's summed upload only; upload transforms "
                "need each client's upload: use engine 'vmap'"
            )
        if cfg.engine not in rec.client_engines:
            raise FedLLMRecError(
                f"{type(rec).__name__} trains on the client engines {list(rec.client_engines)}, "
                f"not {cfg.engine!r}"
            )
        if cfg.partition == "domain":
            # A domain client's private state is its own slot (one row per domain).
            n_owners = len(split.dataset.domains)
            if own.names(Owner.PRIVATE) and own.n_users != n_owners:
                raise FedLLMRecError(
                    f"domain clients hold many users: private tables need one row per domain "
                    f"({n_owners}), not {own.n_users} (per-user state needs user clients)"
                )
            owners = self._domain_windows(split)  # window -> its domain
        else:
            if own.names(Owner.PRIVATE) and own.n_users != split.dataset.n_users:
                raise FedLLMRecError(f"private tables have {own.n_users} rows, not one per user")
            owners = rec.training_tensors()["user"].numpy()
            n_owners = split.dataset.n_users
        self._population = ClientPopulation.from_windows(
            owners,
            n_owners,
            rec.training_tensors()["seq"],
            kind=cfg.partition,
            local=cfg.local,
            seed=cfg.seed,
            max_clients=cfg.max_clients,
        )
        self._server = ServerState.fresh(cfg, self._routing_shape(), len(self._population))
        privacy = cfg.privacy
        withheld: list[str] = []
        if privacy.attribute_tables == "secure_only" and not privacy.secure_aggregation:
            withheld = attribute_tensors(self._net, own)
        self.setup_privacy(withheld)
        return self

    def _domain_windows(self, split: Split) -> np.ndarray:
        """Replace the training windows by per-domain ones; return each window's domain.

        A domain client holds, for each user, only that user's interactions in its
        domain, so its windows never mix domains.
        """
        rec = self.recommender
        if not rec.next_item:
            raise FedLLMRecError("domain clients are supported for next-item models only")
        chunks, users, domains = domain_windows(split, rec.max_len + 1)
        rec.set_training_tensors(
            {
                "seq": torch.from_numpy(left_pad(chunks, rec.max_len + 1)),
                "user": torch.from_numpy(users),
            }
        )
        return domains

    def _routing_shape(self) -> tuple[int, int]:
        model = self.recommender.model
        if isinstance(model, MRFF):
            return model.config.n_layers, model.config.n_groups
        return 0, 0

    @property
    def net(self) -> ClientNet:
        """Every trained tensor under one root: the shared ones and all clients' private rows."""
        if self._net is None:
            raise RuntimeError("call setup() first")
        return self._net

    @property
    def population(self) -> ClientPopulation:
        """The clients: their windows, example counts and window draws."""
        if self._population is None:
            raise RuntimeError("call setup() first")
        return self._population

    @property
    def n_clients(self) -> int:
        return len(self.population)

    @property
    def clients(self) -> np.ndarray:
        """User (or domain) ids of the clients, by position."""
        return self.population.ids

    def client_examples(self) -> np.ndarray:
        """(n_clients,) each client's training windows."""
        return self.population.examples

    @property
    def predicts_clicks(self) -> bool:
        return hasattr(self.recommender, "predict")

    @property
    def engine(self) -> Engine:
        """The engine that computes the simulator's local training."""
        return engine_for(self.federation.engine)

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """The live global and group tensors: what the server holds and sends."""
        every = dict(self.net.named_parameters())
        return {name: every[name] for name in self.ownership.names(*SHARED)}

    def private_rows(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """Copies of the trainable private rows (C, ...) of the clients at ``positions``."""
        every = dict(self.net.named_parameters())
        users = torch.from_numpy(self.clients[positions])
        return {
            name: every[name].detach()[users].clone()
            for name in self.ownership.private_parameters()
        }

    def write_private_rows(self, positions: np.ndarray, rows: Mapping[str, torch.Tensor]) -> None:
        """Set the trainable private rows (C, ...) of the clients at ``positions``."""
        every = dict(self.net.named_parameters())
        users = torch.from_numpy(self.clients[positions])
        with torch.no_grad():
            for name, value in rows.items():
                every[name][users] = value

    # ------------------------------------------------------------------ a round

    def train_round(self) -> float:
        """One federated round; returns the participants' example-weighted local loss."""
        plan = self.plan_round()
        aggregator = self.new_aggregator(plan.number)
        self.local_training(
            plan.survivors,
            plan.number,
            plan.sent,
            plan.load,
            aggregator.add,
            cohort=len(plan.participants),
        )
        return self.finish_round(plan, aggregator)

    def local_training(
        self,
        positions: np.ndarray,
        round_: int,
        sent: Mapping[str, torch.Tensor],
        load: torch.Tensor,
        emit: Callable[[Part], None],
        engine: Engine | None = None,
        cohort: int | None = None,
        secure: bool | None = None,
    ) -> None:
        """Local training of the clients at ``positions`` in round ``round_``.

        Each client starts from ``sent`` and keeps its new private rows. Its upload passes
        the seam: :attr:`transforms`, then the client's protections (risk weight,
        clipping, DP noise: :class:`~fedllmrec.federated.privacy.ClientPrivacy`), then,
        under secure aggregation, the secure sum: ``emit`` then receives one sum of every
        client trained here, once, at the end (the protocol's output), else each chunk's
        uploads. ``engine`` defaults to the configured one (a Flower node passes the
        per-client engine a real client runs); ``cohort`` is the round's number of
        participants (distributed DP's noise share; default ``len(positions)``);
        ``secure`` overrides the secure sum (a Flower node under SecAgg+ masks each
        client's vector itself).
        """
        engine = engine or self.engine
        cohort = len(positions) if cohort is None else cohort
        chunks = list(chunk_clients(self.population, positions, round_, self.federation))
        job = LocalJob(
            self.net, self.ownership, self.population, chunks, round_, sent, load, self.federation
        )
        seam, close = self.open_seam(round_, cohort, emit, secure)
        self.net.train()
        try:
            engine.run(job, seam)
        finally:
            self.net.eval()
        close()

    def client_engine(self) -> Engine:
        """The engine a real client runs: its own upload, one client at a time (batched)."""
        return client_engine(self.federation.engine)

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
        """:meth:`local_training` with the engine a real client runs (:meth:`client_engine`)."""
        self.local_training(
            positions, round_, sent, load, emit, self.client_engine(), cohort, secure
        )

    def upload_chunks(self, positions: np.ndarray, round_: int) -> Iterator[np.ndarray]:
        """The simulator's chunks of ``positions`` (:func:`~.round.chunk_clients`)."""
        return chunk_clients(self.population, positions, round_, self.federation)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Server tensors, every client's private rows, RNGs, load, optimiser and history."""
        server = self.server.state_dict()
        return {
            "net": self.net.state_dict(),
            "rng": server.pop("rng"),
            "model_rng": self.recommender.rng.bit_generator.state,  # sampled-softmax negatives
            "torch_rng": torch.get_rng_state(),
            **server,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.server.load_state_dict(state)
        self.recommender.rng.bit_generator.state = state["model_rng"]
        torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ scoring

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        """Each user scored by the global model with that user's private state.

        With domain clients, a user's candidates of domain d are scored from the
        user's domain-d history only: that is all domain d's client holds.
        """
        rec = self.recommender
        if self.federation.partition == "user":
            return rec.score(users, items, history)
        assert rec.split is not None
        items = np.asarray(items)
        row_domain = rec.split.dataset.item_domain[items[:, 0]]
        out = np.empty(np.shape(items), dtype=np.float32)
        catalogue = catalogue_row(items)  # a full ranking's stays one: gathered by column
        for d in np.unique(row_domain).tolist():
            rows = np.flatnonzero(row_domain == d)
            block = (
                items[rows]
                if catalogue is None
                else np.broadcast_to(catalogue, (rows.shape[0], catalogue.shape[0]))
            )
            out[rows] = rec.score(users[rows], block, self._domain_history(history, d))
        return out

    def scoring_session(self) -> AbstractContextManager[None]:
        """The recommender's scoring session (:func:`fedllmrec.models.base.scoring_session`):
        every client scores with the same weights during one evaluation."""
        return scoring_session(self.recommender)

    def _domain_history(self, history: UserItemSet, domain: int) -> UserItemSet:
        """The pairs of ``history`` whose item is of ``domain`` (what that domain's client
        holds), built once per history object: an evaluation scores many batches."""
        cached = self._history_cache
        if cached is None or cached[0] is not history:
            cached = self._history_cache = (history, {})
        if domain not in cached[1]:
            assert self.recommender.split is not None
            item_domain = self.recommender.split.dataset.item_domain
            keys, n = history.keys, history.n_items
            kept = keys[item_domain[keys % n] == domain]
            cached[1][domain] = UserItemSet(kept // n, kept % n, n)
        return cached[1][domain]

    def predict(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """Click probabilities and labels of the held-out ``role`` exposures (click models),
        each user with the global model and that user's private state."""
        predict = getattr(self.recommender, "predict", None)
        if predict is None:
            raise FedLLMRecError(f"{type(self.recommender).__name__} does not predict clicks")
        probs, labels = predict(role)
        return probs, labels
