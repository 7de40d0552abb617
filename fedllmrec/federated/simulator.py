"""The in-process federated simulator: every user a client, a round per "epoch".

:class:`FederatedRecommender` wraps a centralized recommender (SASRec, GRU4Rec
or MRFF; next-item or click) and trains it by federated rounds. It satisfies
the trainer's :class:`~fedllmrec.train.trainer.Trainable` contract, so early
stopping on validation, atomic checkpoints every ``eval_every`` rounds, exact
resume, ``metrics.json`` and the learning curve come from the same trainer as
centralized runs, and evaluation scores each user with the global model plus
that user's private state.

A round: sample clients (``fraction``), drop some mid-round (``drop_rate``),
train the rest locally in chunks batched over clients
(:func:`~fedllmrec.federated.client.train_clients`), aggregate their uploads
(:func:`aggregate_round`), write back each survivor's private rows, and keep
the routing shares as the next round's balance-loss load.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import torch

from fedllmrec.data.sequences import left_pad, user_sequences, windows
from fedllmrec.data.split import TRAIN, Split, UserItemSet
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.client import (
    ChunkResult,
    ClientNet,
    LocalConfig,
    download_bytes,
    train_clients,
    upload_bytes,
)
from fedllmrec.federated.fedopt import ServerOptimizer
from fedllmrec.federated.linear import train_linear
from fedllmrec.federated.ownership import SHARED, Owner, Ownership, declared_ownership
from fedllmrec.federated.server import MeanAccumulator, aggregate_round, stack_chunks
from fedllmrec.federated.strategies import (
    StrategyConfig,
    client_weights,
    drop_clients,
    routing_load,
    sample_clients,
)
from fedllmrec.models.items import PAD
from fedllmrec.models.mrff import MRFF
from fedllmrec.models.sasrec import trim_left_padding
from fedllmrec.models.sequential import SequentialRecommender


@dataclass
class FederationConfig:
    """How the federation runs (a recipe's ``[federated]`` table).

    Parameters
    ----------
    engine : {"vmap", "loop", "linear"}
        Clients batched with ``torch.func.vmap``, or the per-client reference loop;
        "linear" (one local SGD step, mean aggregation) gets the round's mean update from
        one backward pass of the weighted summed losses (:mod:`.linear`).
    partition : {"user", "domain"}
        Every user a client (MRFF), or every domain a client holding its users'
        in-domain interactions (cross-domain; models without private state).
    local : LocalConfig
        Each client's local steps, learning rate and optimiser.
    strategy : StrategyConfig
        Aggregation, weighting, sampling, dropout and FedProx.
    balance_load : bool
        MRFF: the balance loss uses the previous round's routing shares (none in round 0).
    chunk_windows : int
        Upper bound on padded windows per batched chunk (bounds memory). The ``linear``
        engine counts positions instead: as many short windows as fit in the positions of
        ``chunk_windows`` full ones (its memory does not grow with clients; the
        per-client engines hold a copy of the shared tensors for every client of a chunk).
    max_clients : int
        Use only the first ``max_clients`` clients by user id (0: all); for
        small experiments and tests. Evaluation still covers every user.
    seed : int
        Seeds client sampling, dropout and clients' draws of local windows.
    """

    engine: Literal["vmap", "loop", "linear"] = "vmap"
    partition: Literal["user", "domain"] = "user"
    local: LocalConfig = field(default_factory=LocalConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    balance_load: bool = True
    chunk_windows: int = 128
    max_clients: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.engine not in ("vmap", "loop", "linear"):
            raise ValueError(
                f"FederationConfig.engine must be 'vmap', 'loop' or 'linear', got {self.engine!r}"
            )
        local, aggregator = self.local, self.strategy.aggregator
        if self.engine == "linear" and (
            local.optimizer != "sgd" or local.steps != 1 or aggregator != "mean"
        ):
            raise ValueError(
                "FederationConfig.engine 'linear' needs one local SGD step and the 'mean' "
                "aggregator (the mean update is then one gradient of the summed losses), got "
                f"local.optimizer={self.local.optimizer!r}, local.steps={self.local.steps}, "
                f"strategy.aggregator={self.strategy.aggregator!r}"
            )
        if self.partition not in ("user", "domain"):
            raise ValueError(
                f"FederationConfig.partition must be 'user' or 'domain', got {self.partition!r}"
            )
        if self.chunk_windows < 1:
            raise ValueError(
                f"FederationConfig.chunk_windows must be >= 1, got {self.chunk_windows}"
            )


@dataclass
class FederatedRecommender:
    """A sequential recommender trained by federated rounds; every user is a client."""

    base: SequentialRecommender
    federation: FederationConfig = field(default_factory=FederationConfig)
    losses: list[float] = field(default_factory=list)  # per round
    rounds: list[dict[str, Any]] = field(default_factory=list)  # participants, traffic
    # Server state that outlives a round (the Flower ServerApp drives the same object):
    server_optimizer: ServerOptimizer = field(init=False, repr=False)  # FedAdam's moments
    load: torch.Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)  # (L, K)
    # Per client (position in :attr:`clients`): its training windows and target count.
    client_rows: list[np.ndarray] = field(default_factory=list, repr=False)
    client_examples: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    window_targets: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # (N,)
    _net: ClientNet | None = field(default=None, repr=False)
    _ownership: Ownership | None = field(default=None, repr=False)
    _rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)
    _clients: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _newest_length: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _window_length: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _window_count: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    # The latest round's draws: round -> {client id: one window array per local step}.
    _drawn: tuple[int, dict[int, list[np.ndarray]]] = field(
        default_factory=lambda: (0, {}), repr=False
    )

    # ------------------------------------------------------------------ setup

    def setup(self, split: Split) -> Self:
        """Build the model (seeded as centrally), its ownership, and each client's windows."""
        self.base.setup(split)
        self._net = ClientNet(self.base)
        self._ownership = own = declared_ownership(self._net)
        if own.names(Owner.PRIVATE) and own.n_users != split.dataset.n_users:
            raise FedLLMRecError(f"private tables have {own.n_users} rows, not one per user")
        if self.federation.partition == "domain":
            if own.names(Owner.PRIVATE):
                raise FedLLMRecError(
                    "domain clients hold many users: private per-user state needs user clients"
                )
            owners = self._domain_windows(split)  # window -> its domain
            n_owners = len(split.dataset.domains)
        else:
            owners = self.base.training_tensors()["user"].numpy()
            n_owners = split.dataset.n_users
        order = np.argsort(owners, kind="stable")  # keeps each user's newest window first
        bounds = np.searchsorted(owners[order], np.arange(n_owners + 1))
        self._clients = np.flatnonzero(np.diff(bounds) > 0)
        if self.federation.max_clients:
            self._clients = self._clients[: self.federation.max_clients]
        self.client_rows = [order[bounds[c] : bounds[c + 1]] for c in self._clients.tolist()]
        seq = self.base.training_tensors()["seq"]
        self.window_targets = ((seq[:, 1:] != PAD) & (seq[:, :-1] != PAD)).sum(1).numpy()
        self.client_examples = np.array(
            [self.window_targets[rows].sum() for rows in self.client_rows]
        )
        self._window_length = lengths = (seq != PAD).sum(1).numpy()
        self._newest_length = np.array([lengths[rows[0]] for rows in self.client_rows])
        self._window_count = np.array([rows.shape[0] for rows in self.client_rows])
        self._rng = np.random.default_rng(self.federation.seed)
        self.load = torch.zeros(self._routing_shape())  # round 0: no balance loss
        self.server_optimizer = ServerOptimizer(self.federation.strategy)
        self.losses, self.rounds = [], []
        return self

    def _domain_windows(self, split: Split) -> np.ndarray:
        """Replace the training windows by per-domain ones; return each window's domain.

        A domain client holds, for each user, only that user's interactions in its
        domain, so its windows never mix domains.
        """
        ds, base = split.dataset, self.base
        if type(base) is not SequentialRecommender:
            raise FedLLMRecError("domain clients are supported for next-item models only")
        train = split.role == TRAIN
        chunks, users, domains = [], [], []
        for d in range(len(ds.domains)):
            per_user = user_sequences(split, train & (ds.domain == d))
            part, owners = windows(per_user, base.max_len + 1)
            chunks += part
            users.append(owners)
            domains.append(np.full(owners.shape[0], d))
        base._data = torch.from_numpy(left_pad(chunks, base.max_len + 1))
        base._users = torch.from_numpy(np.concatenate(users))
        return np.concatenate(domains)

    def _routing_shape(self) -> tuple[int, int]:
        model = self.base.model
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
    def rng(self) -> np.random.Generator:
        """The server's generator: client sampling and dropouts (each client draws its
        windows from its own stream, see :meth:`local_windows`)."""
        return self._rng

    @property
    def ownership(self) -> Ownership:
        if self._ownership is None:
            raise RuntimeError("call setup() first")
        return self._ownership

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """The live global and group tensors: what the server holds and sends."""
        every = dict(self.net.named_parameters())
        return {name: every[name] for name in self.ownership.names(*SHARED)}

    @property
    def clients(self) -> np.ndarray:
        """User ids of the clients (users with at least one training window)."""
        return self._clients

    # ------------------------------------------------------------------ a round

    def train_epoch(self) -> float:
        """One federated round; returns the participants' example-weighted local loss."""
        net, own, cfg = self.net, self.ownership, self.federation
        strategy = cfg.strategy
        index = np.arange(self._clients.shape[0])
        participants = sample_clients(index, strategy.fraction, strategy.min_clients, self._rng)
        survivors, dropped = drop_clients(participants, strategy.drop_rate, self._rng)
        live = self.shared_tensors()
        server = {name: tensor.detach().clone() for name, tensor in live.items()}
        # A mean needs running sums only; robust aggregators need every client's delta.
        accumulator = MeanAccumulator(own, strategy) if strategy.aggregator == "mean" else None
        kept: list[ChunkResult] = []
        net.train()
        round_ = len(self.rounds) + 1
        if cfg.engine == "linear":
            assert accumulator is not None  # FederationConfig allows "linear" with "mean" only
            done, routing, client_loss = train_linear(self, survivors, accumulator, round_)
        else:
            done, routing, client_loss = self._train_chunks(
                survivors, server, accumulator, kept, round_
            )
        net.eval()
        n_examples = torch.from_numpy(self.client_examples[done]).to(torch.float64)
        if accumulator is None:
            stacked = stack_chunks(kept, n_examples, own)
            new, _ = aggregate_round(server, stacked, own, strategy, self.server_optimizer)
        else:
            new, _ = accumulator.finish(server, self.server_optimizer)
        with torch.no_grad():
            for name, value in new.items():
                live[name].copy_(value)
        if cfg.balance_load and routing.shape[1]:
            self.load = routing_load(routing, self.load.shape[1])
        weights = client_weights(n_examples, "examples")
        loss = float((client_loss.double() * weights).sum())
        self.losses.append(loss)
        self.rounds.append(
            {
                "participants": int(participants.shape[0]),
                "dropped": int(dropped.shape[0]),
                "bytes_up": int(survivors.shape[0]) * upload_bytes(own),
                "bytes_down": int(participants.shape[0]) * download_bytes(own),
            }
        )
        return loss

    def _train_chunks(
        self,
        survivors: np.ndarray,
        server: Mapping[str, torch.Tensor],
        accumulator: MeanAccumulator | None,
        kept: list[ChunkResult],
        round_: int,
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Every client's local update, chunk by chunk, into ``accumulator`` (or ``kept``).

        Returns the clients done (positions), their routing (C, L) and local losses (C,).
        """
        weighting = self.federation.strategy.weighting
        done_parts, routing_parts, loss_parts = [], [], []
        for chunk in self.chunks(survivors, round_):
            result = self.train_chunk(chunk, server, round_)
            if accumulator is None:
                kept.append(result)
            else:
                accumulator.add(result, self.client_weight(chunk, weighting))
            self._keep_private(chunk, result)
            done_parts.append(chunk)
            routing_parts.append(result.routing)
            loss_parts.append(result.loss)
        return np.concatenate(done_parts), torch.cat(routing_parts), torch.cat(loss_parts)

    def client_weight(self, positions: np.ndarray, weighting: str) -> torch.Tensor:
        """Unnormalised aggregation weights (C,) float64: example counts, or ones."""
        examples = torch.from_numpy(self.client_examples[positions]).to(torch.float64)
        return examples if weighting == "examples" else torch.ones_like(examples)

    def _keep_private(self, chunk: np.ndarray, result: ChunkResult) -> None:
        """Each client of ``chunk`` keeps its new private rows (they are never uploaded)."""
        every = dict(self.net.named_parameters())
        users = torch.from_numpy(self._clients[chunk])
        with torch.no_grad():
            for name, rows in result.private.items():
                every[name][users] = rows[:, 0]  # (C, 1, ...) one row per client

    def local_windows(self, chunk: np.ndarray, round_: int) -> list[list[np.ndarray]]:
        """Each local step's training windows of the clients at positions ``chunk``.

        A step takes all of a client's windows, or ``local.batch_size`` of them drawn
        from the client's own stream for ``round_``, so a client draws the same
        windows wherever it trains (any chunk of the simulator, any Flower node).
        One list serves every step when nobody draws.
        """
        cfg = self.federation
        rows = [self.client_rows[c] for c in chunk.tolist()]
        size = cfg.local.batch_size
        if not size or all(r.shape[0] <= size for r in rows):
            return [rows]
        if self._drawn[0] != round_:  # chunks() and each chunk ask for the same round's draws
            self._drawn = (round_, {})
        drawn = self._drawn[1]
        steps: list[list[np.ndarray]] = [[] for _ in range(cfg.local.steps)]
        for client, r in zip(self._clients[chunk].tolist(), rows, strict=True):
            if r.shape[0] <= size:  # all its windows, every step: nothing drawn
                for step in steps:
                    step.append(r)
                continue
            if client not in drawn:
                rng = np.random.default_rng([cfg.seed, round_, client])
                drawn[client] = [np.sort(rng.choice(r, size, replace=False)) for _ in steps]
            for step, draw in zip(steps, drawn[client], strict=True):
                step.append(draw)
        return steps

    def train_chunk(
        self, chunk: np.ndarray, server: Mapping[str, torch.Tensor], round_: int
    ) -> ChunkResult:
        """Local training in round ``round_`` (from 1) of the clients at positions ``chunk``."""
        own, cfg = self.ownership, self.federation
        tensors = self.base.training_tensors()
        batches = [_pad(tensors, rows) for rows in self.local_windows(chunk, round_)]
        # Columns that are padding in every window of the chunk change nothing: cut them.
        batches = [trim_left_padding(batch) for batch in batches]
        if cfg.partition == "user":
            for batch in batches:  # each client sees its own private row as row 0
                batch["user"] = torch.zeros_like(batch["user"])
        every = dict(self.net.named_parameters()) | dict(self.net.named_buffers())
        users = torch.from_numpy(self._clients[chunk])
        private = {name: every[name].detach()[users][:, None] for name in own.names(Owner.PRIVATE)}
        return train_clients(
            self.net,
            own,
            server,
            private,
            batches if len(batches) > 1 else batches[0],
            self.load,
            cfg.local,
            cfg.strategy.proximal_mu,
            # A node computes its clients' uploads one by one (vmap): "linear" only fuses them.
            "vmap" if cfg.engine == "linear" else cfg.engine,
        )

    def chunks(self, positions: np.ndarray, round_: int | None = None) -> Iterator[np.ndarray]:
        """Clients grouped by windows per step, then window length, so a chunk holds little
        padding (its all-padding columns are cut, see :meth:`train_chunk`).

        The length is that of the longest window the client trains in round ``round_``
        (its draws, see :meth:`local_windows`), or of its newest window.
        """
        counts = self._window_count[positions]
        size = self.federation.local.batch_size
        lengths = self._newest_length[positions]
        if size:
            counts = np.minimum(counts, size)
            if round_ is not None and (counts < self._window_count[positions]).any():
                steps = self.local_windows(positions, round_)
                drawn = [np.concatenate(rows) for rows in zip(*steps, strict=True)]
                lengths = np.array([self._window_length[rows].max() for rows in drawn])
        order = np.lexsort((lengths, counts))
        ordered, counts, lengths = positions[order], counts[order], lengths[order]
        full = self._window_length.max(initial=1)
        if self.federation.engine != "linear":
            lengths = np.full_like(lengths, full)  # a chunk's cost: its windows
        budget = self.federation.chunk_windows * full
        start = 0
        while start < ordered.shape[0]:
            end, widest, most = start + 1, lengths[start], counts[start]
            while end < ordered.shape[0]:
                widest, most = max(widest, lengths[end]), max(most, counts[end])
                if (end - start + 1) * most * widest > budget:  # padded positions
                    break
                end += 1
            yield ordered[start:end]
            start = end

    # ------------------------------------------------------------------ records

    def epoch_info(self) -> dict[str, Any]:
        """The latest round's participation and traffic (a row of metrics.json's history)."""
        return dict(self.rounds[-1]) if self.rounds else {}

    def run_info(self) -> dict[str, Any]:
        """Totals for metrics.json: participation, traffic, parameter owners."""
        own = self.ownership
        full = 4 * own.numel(Owner.GLOBAL, Owner.GROUP, Owner.PRIVATE)
        return {
            "federated": {
                "clients": int(self._clients.shape[0]),
                "rounds": len(self.rounds),
                "dropped_total": sum(r["dropped"] for r in self.rounds),
                "bytes_up_total": sum(r["bytes_up"] for r in self.rounds),
                "bytes_down_total": sum(r["bytes_down"] for r in self.rounds),
                "upload_bytes_per_client": upload_bytes(own),
                "download_bytes_per_client": download_bytes(own),
                "full_model_bytes": full,
                "scalars_by_owner": own.summary(),
            }
        }

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Server tensors, every client's private rows, RNG, load and history."""
        return {
            "net": self.net.state_dict(),
            "rng": self._rng.bit_generator.state,
            "model_rng": self.base._rng.bit_generator.state,  # sampled-softmax negatives
            "torch_rng": torch.get_rng_state(),
            "load": self.load.clone(),
            "server_optimizer": self.server_optimizer.state_dict(),
            "losses": list(self.losses),
            "rounds": [dict(r) for r in self.rounds],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self._rng.bit_generator.state = state["rng"]
        self.base._rng.bit_generator.state = state["model_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.load = state["load"].clone()
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self.losses = list(state["losses"])
        self.rounds = [dict(r) for r in state["rounds"]]

    # ------------------------------------------------------------------ scoring

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        """Each user scored by the global model with that user's private state.

        With domain clients, a user's candidates of domain d are scored from the
        user's domain-d history only: that is all domain d's client holds.
        """
        if self.federation.partition == "user":
            return self.base.score(users, items, history)
        assert self.base.split is not None
        item_domain = self.base.split.dataset.item_domain
        row_domain = item_domain[np.asarray(items)[:, 0]]
        out = np.empty(np.shape(items), dtype=np.float32)
        keys = history.keys
        pair_domain = item_domain[keys % history.n_items]
        for d in np.unique(row_domain).tolist():
            rows = np.flatnonzero(row_domain == d)
            kept = keys[pair_domain == d]
            local = UserItemSet(kept // history.n_items, kept % history.n_items, history.n_items)
            out[rows] = self.base.score(users[rows], np.asarray(items)[rows], local)
        return out

    def predict(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """Click probabilities and labels of the held-out ``role`` exposures (click models),
        each user with the global model and that user's private state."""
        predict = getattr(self.base, "predict", None)
        if predict is None:
            raise FedLLMRecError(f"{type(self.base).__name__} does not predict clicks")
        probs, labels = predict(role)
        return probs, labels


def _pad(tensors: Mapping[str, torch.Tensor], rows: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Rows of each client stacked (C, W, ...), zero-padded to the chunk's widest client."""
    width = max(r.shape[0] for r in rows)
    batch = {}
    for key, value in tensors.items():
        padded = value.new_zeros(len(rows), width, *value.shape[1:])
        for i, r in enumerate(rows):
            padded[i, : r.shape[0]] = value[torch.from_numpy(r)]
        batch[key] = padded
    return batch
