"""One federated round, in one place: the simulator and the Flower ServerApp both run it.

A round is::

    plan = plan_round(state, n_clients, strategy, shared)   # sample, drop, snapshot
    chunks = chunk_clients(population, plan.survivors, plan.number, config)
    # local training (an engine, in process or on Flower nodes) emits uploads;
    # each passes the upload transforms (the seam) into a RoundAggregator
    finish_round(state, plan, aggregator, shared, ownership, config)  # aggregate, records

Between plan and finish only messages move: which clients train, the tensors sent,
their uploads. :class:`ServerState` is what the server keeps across rounds (its
optimiser, the routing load, its random generator, the loss and traffic records), and
it is checkpointed whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from fedllmrec.federated.aggregation import RoundAggregator
from fedllmrec.federated.config import FederationConfig, StrategyConfig
from fedllmrec.federated.fedopt import ServerOptimizer
from fedllmrec.federated.ownership import Ownership
from fedllmrec.federated.population import ClientPopulation
from fedllmrec.federated.sampling import drop_clients, poisson_sample, sample_clients
from fedllmrec.federated.uploads import download_bytes, upload_bytes


@dataclass
class ServerState:
    """What the server keeps from one round to the next."""

    optimizer: ServerOptimizer
    load: torch.Tensor  # (L, K) the latest round's routing shares: the next balance loss
    rng: np.random.Generator  # client sampling and dropouts
    losses: list[float] = field(default_factory=list)  # per round
    records: list[dict[str, Any]] = field(default_factory=list)  # participants, traffic
    # (N,) rounds each client took part in (local DP's accounting composes over them)
    participations: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def fresh(
        cls, config: FederationConfig, routing_shape: tuple[int, int], n_clients: int = 0
    ) -> ServerState:
        """Round 0: no routing seen yet (no balance loss), a fresh optimiser, seeded draws."""
        return cls(
            ServerOptimizer(config.strategy),
            torch.zeros(routing_shape),
            np.random.default_rng(config.seed),
            participations=np.zeros(n_clients, dtype=np.int64),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "load": self.load.clone(),
            "server_optimizer": self.optimizer.state_dict(),
            "losses": list(self.losses),
            "rounds": [dict(r) for r in self.records],
            "participations": torch.from_numpy(self.participations.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.load = state["load"].clone()
        self.optimizer.load_state_dict(state["server_optimizer"])
        self.losses = list(state["losses"])
        self.records = [dict(r) for r in state["rounds"]]
        if "participations" in state:  # absent from checkpoints written before it existed
            self.participations = state["participations"].numpy().copy()


@dataclass(frozen=True)
class RoundPlan:
    """Who takes part in a round and what they receive."""

    number: int  # from 1
    participants: np.ndarray  # positions sampled: they receive the model
    survivors: np.ndarray  # participants that will reply (the rest drop mid-round)
    dropped: np.ndarray
    sent: dict[str, torch.Tensor]  # the global and group tensors sent (a snapshot)
    load: torch.Tensor  # (L, K) the previous round's routing shares, sent for the balance loss


def plan_round(
    state: ServerState,
    n_clients: int,
    strategy: StrategyConfig,
    shared: Mapping[str, torch.Tensor],
) -> RoundPlan:
    """Sample the round's clients, drop some, and snapshot what they are sent."""
    clients = np.arange(n_clients)
    if strategy.sampling == "poisson":
        participants = poisson_sample(clients, strategy.fraction, state.rng)
    else:
        participants = sample_clients(clients, strategy.fraction, strategy.min_clients, state.rng)
    if participants.size:
        survivors, dropped = drop_clients(participants, strategy.drop_rate, state.rng)
    else:  # a Poisson draw may take nobody: the round updates nothing (DP still adds noise)
        survivors, dropped = participants, participants
    sent = {name: tensor.detach().clone() for name, tensor in shared.items()}
    number = len(state.records) + 1
    return RoundPlan(number, participants, survivors, dropped, sent, state.load)


def chunk_clients(
    population: ClientPopulation,
    positions: np.ndarray,
    round_: int,
    config: FederationConfig,
) -> Iterator[np.ndarray]:
    """The clients at ``positions`` grouped into the chunks the simulator trains together.

    The simulator, each Flower node (its own clients) and the Flower server (ordering the
    uploads it received, so float sums run in the simulator's order) chunk alike.
    """
    return population.chunks(
        positions,
        round_,
        chunk_windows=config.chunk_windows,
        # The fused engine's memory grows with positions, not with clients.
        count_positions=config.engine == "linear",
    )


def finish_round(
    state: ServerState,
    plan: RoundPlan,
    aggregator: RoundAggregator,
    shared: Mapping[str, torch.Tensor],
    ownership: Ownership,
    config: FederationConfig,
    extra: Mapping[str, Any] | None = None,
) -> float:
    """Aggregate, move the live ``shared`` tensors, keep the routing load and the records.

    Returns the participants' example-weighted local loss. ``extra`` adds engine-specific
    fields to the round's record (Flower: failed nodes, bytes on the wire).
    """
    if aggregator.empty and aggregator.release is None:
        loss = state.losses[-1] if state.losses else 0.0  # nobody trained: nothing moves
        received_clients = 0
    else:
        new, _ = aggregator.finish(plan.sent, state.optimizer)
        with torch.no_grad():
            for name, value in new.items():
                shared[name].copy_(value)
        received = aggregator.received
        received_clients = int(received.positions.shape[0])
        counts = received.routing_counts
        if config.balance_load and counts.shape[0] and received_clients:
            state.load = shares(counts)
        loss = received.loss_sum / max(received.examples, 1.0)
    if state.participations.size:
        state.participations[plan.survivors] += 1
    state.losses.append(loss)
    state.records.append(
        {
            "participants": int(plan.participants.shape[0]),
            "dropped": int(plan.dropped.shape[0]),
            "bytes_up": received_clients * upload_bytes(ownership),
            "bytes_down": int(plan.participants.shape[0]) * download_bytes(ownership),
            **(extra or {}),
        }
    )
    return loss


def shares(counts: torch.Tensor) -> torch.Tensor:
    """(L, K) float32 rows summing to 1 from routing counts (noisy DP counts clipped at 0)."""
    # float32 throughout: exact counts give exactly routing_load's shares
    counts = counts.to(torch.float32).clamp(min=0.0)
    total = counts.sum(dim=1, keepdim=True)
    uniform = torch.full_like(counts, 1.0 / counts.shape[1])
    return torch.where(total > 0, counts / total.clamp(min=1e-12), uniform)


def routing_load(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Share of participants routed to each group at each layer.

    Parameters
    ----------
    groups : torch.Tensor
        (C, L) int: each participant's chosen group at each layer.
    n_groups : int
        K.

    Returns
    -------
    torch.Tensor
        (L, K) float32, rows summing to 1: MRFF's balance-loss load term for
        the next round (see :func:`fedllmrec.models.mrff.balance_loss`).
    """
    if groups.ndim != 2 or groups.shape[0] == 0:
        raise ValueError(f"groups must be (C, L) with C >= 1, got {tuple(groups.shape)}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups!r}")
    if groups.is_floating_point() or groups.dtype == torch.bool:
        raise ValueError(f"groups must be integer group ids, got dtype {groups.dtype}")
    if groups.min() < 0 or groups.max() >= n_groups:
        raise ValueError(f"group ids must be in [0, {n_groups}), got {groups.unique().tolist()}")
    counts = F.one_hot(groups.long(), n_groups).sum(dim=0)  # (L, K)
    return counts.to(torch.float32) / groups.shape[0]
