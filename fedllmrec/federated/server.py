"""Server side of a round: stack client uploads and aggregate them into new shared tensors.

The simulator (from its batched chunks) and the Flower ServerApp (from the
uploads it received) both build a :class:`Stacked` and call
:func:`aggregate_round`, so both engines aggregate with the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedllmrec.federated.client import ChunkResult, ClientUpload
from fedllmrec.federated.fedopt import ServerOptimizer
from fedllmrec.federated.ownership import Owner, Ownership
from fedllmrec.federated.strategies import (
    StrategyConfig,
    aggregate,
    aggregate_groups,
    client_weights,
)


@dataclass
class Stacked:
    """Uploads of C clients stacked on axis 0: what :func:`aggregate_round` combines."""

    n_examples: torch.Tensor  # (C,)
    routing: torch.Tensor  # (C, L)
    global_delta: dict[str, torch.Tensor]  # (C, *shape)
    group_delta: dict[str, torch.Tensor]  # (C, K, *shape), zero where not routed
    routed: dict[str, torch.Tensor]  # (C, K) bool


def aggregate_round(
    server: Mapping[str, torch.Tensor],
    uploads: Stacked,
    ownership: Ownership,
    strategy: StrategyConfig,
    optimizer: ServerOptimizer | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[bool]]]:
    """New global and group tensors from one round's uploads.

    Global tensors combine every upload; group ``k`` of a group tensor combines
    the uploads routed to ``k`` at its layer and stays unchanged if none was.
    ``optimizer`` moves the tensors by the combined deltas (it holds FedAdam's
    state across rounds; default a stateless FedAvg step). Returns the new
    tensors and, per group tensor, which groups changed.
    """
    optimizer = _optimizer(optimizer, strategy)
    weights = client_weights(uploads.n_examples, strategy.weighting)
    new: dict[str, torch.Tensor] = {}
    updated: dict[str, list[bool]] = {}
    for name in ownership.names(Owner.GLOBAL):
        delta = aggregate(uploads.global_delta[name], weights, strategy)
        new[name] = optimizer.step(name, server[name], delta)
    for name in ownership.names(Owner.GROUP):
        delta, changed = aggregate_groups(
            uploads.group_delta[name], uploads.routed[name], weights, strategy
        )
        new[name] = optimizer.step(name, server[name], delta, changed)
        updated[name] = changed.tolist()
    return new, updated


def _optimizer(optimizer: ServerOptimizer | None, strategy: StrategyConfig) -> ServerOptimizer:
    if optimizer is not None:
        return optimizer
    if strategy.server_optimizer != "sgd":
        raise ValueError(f"server_optimizer {strategy.server_optimizer!r} needs a ServerOptimizer")
    return ServerOptimizer(strategy)


def stack_chunks(
    results: list[ChunkResult], n_examples: torch.Tensor, ownership: Ownership
) -> Stacked:
    """Chunk results -> :class:`Stacked`, keeping of each group tensor only the routed slice."""
    routing = torch.cat([r.routing for r in results])
    group_delta, routed = {}, {}
    for name in ownership.names(Owner.GROUP):
        spec = ownership[name]
        assert spec.layer is not None
        mask = torch.nn.functional.one_hot(routing[:, spec.layer], spec.shape[0]).bool()  # (C, K)
        delta = torch.cat([r.shared_delta[name] for r in results])  # (C, K, ...)
        view = mask.reshape(*mask.shape, *([1] * (delta.dim() - 2)))
        group_delta[name], routed[name] = delta * view, mask
    return Stacked(
        n_examples=n_examples,
        routing=routing,
        global_delta={
            name: torch.cat([r.shared_delta[name] for r in results])
            for name in ownership.names(Owner.GLOBAL)
        },
        group_delta=group_delta,
        routed=routed,
    )


def stack_uploads(uploads: list[ClientUpload], ownership: Ownership) -> Stacked:
    """Uploads -> the stacked form the server aggregates (shared by simulator and Flower)."""
    stacked = Stacked(
        n_examples=torch.tensor([u.n_examples for u in uploads], dtype=torch.float64),
        routing=torch.tensor([u.routing for u in uploads], dtype=torch.long),
        global_delta={
            name: torch.stack([u.arrays[name] for u in uploads])
            for name in ownership.names(Owner.GLOBAL)
        },
        group_delta={},
        routed={},
    )
    for name in ownership.names(Owner.GROUP):
        shape = ownership[name].shape
        deltas = torch.zeros(len(uploads), *shape)
        routed = torch.zeros(len(uploads), shape[0], dtype=torch.bool)
        for c, upload in enumerate(uploads):
            for k in range(shape[0]):
                key = f"{name}/{k}"
                if key in upload.arrays:
                    deltas[c, k] = upload.arrays[key]
                    routed[c, k] = True
        stacked.group_delta[name], stacked.routed[name] = deltas, routed
    return stacked


class MeanAccumulator:
    """The "mean" aggregation of :func:`aggregate_round`, one chunk of clients at a time.

    A weighted mean needs only running sums, so the simulator never holds the
    deltas of all clients at once (robust aggregators need them all: they use
    :func:`aggregate_round` on the stacked uploads). Per group, the weights are
    renormalised over the clients routed to it, as in ``aggregate_groups``.
    """

    def __init__(self, ownership: Ownership, strategy: StrategyConfig) -> None:
        if strategy.aggregator != "mean":
            raise ValueError(f"streaming aggregation is for 'mean', not {strategy.aggregator!r}")
        self.ownership, self.strategy = ownership, strategy
        self.sums: dict[str, torch.Tensor] = {}
        self.group_weight: dict[str, torch.Tensor] = {}  # (K,) summed weight of routed clients
        self.total = 0.0

    def add(self, result: ChunkResult, raw_weights: torch.Tensor) -> None:
        """Fold in a chunk's deltas with unnormalised weights (C,) (examples, or ones)."""
        w = raw_weights.to(torch.float32)
        self.total += float(raw_weights.double().sum())
        for name in self.ownership.names(Owner.GLOBAL):
            part = torch.tensordot(w, result.shared_delta[name], dims=1)  # (*shape)
            self.sums[name] = self.sums[name] + part if name in self.sums else part
        for name in self.ownership.names(Owner.GROUP):
            spec = self.ownership[name]
            assert spec.layer is not None
            routed = result.routing[:, spec.layer]  # (C,)
            chosen = (routed[:, None] == torch.arange(spec.shape[0])).to(torch.float32)  # (C, K)
            wk = w[:, None] * chosen  # (C, K): a client counts only for its routed group
            part = torch.einsum("ck,ck...->k...", wk, result.shared_delta[name])
            self.sums[name] = self.sums[name] + part if name in self.sums else part
            weight = wk.sum(0).double()
            self.group_weight[name] = self.group_weight.get(name, 0) + weight

    def add_sums(
        self,
        sums: Mapping[str, torch.Tensor],
        total: float,
        group_weight: Mapping[str, torch.Tensor],
    ) -> None:
        """Fold in weighted sums of deltas made elsewhere (the ``linear`` engine).

        ``sums`` holds, per shared tensor, the sum of weight x delta (for a group
        tensor, group k summed over the clients routed to k), ``total`` the summed
        weight, and ``group_weight`` (K,) per group tensor the summed weight per group.
        """
        self.total += total
        for name, part in sums.items():
            self.sums[name] = self.sums[name] + part if name in self.sums else part
        for name, weight in group_weight.items():
            self.group_weight[name] = self.group_weight.get(name, 0) + weight.double()

    def finish(
        self, server: Mapping[str, torch.Tensor], optimizer: ServerOptimizer | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[bool]]]:
        """New tensors and which groups changed, as :func:`aggregate_round` returns them."""
        if self.total <= 0:
            raise ValueError("no client weight was accumulated")
        optimizer = _optimizer(optimizer, self.strategy)
        new: dict[str, torch.Tensor] = {}
        updated: dict[str, list[bool]] = {}
        for name in self.ownership.names(Owner.GLOBAL):
            new[name] = optimizer.step(name, server[name], self.sums[name] / self.total)
        for name in self.ownership.names(Owner.GROUP):
            weight = self.group_weight[name]  # (K,)
            changed = weight > 0
            scale = torch.where(changed, 1.0 / weight.clamp(min=1e-300), 0.0).to(torch.float32)
            view = scale.reshape(-1, *([1] * (self.sums[name].dim() - 1)))
            new[name] = optimizer.step(name, server[name], self.sums[name] * view, changed)
            updated[name] = changed.tolist()
        return new, updated
