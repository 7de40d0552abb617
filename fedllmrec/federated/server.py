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
from fedllmrec.federated.ownership import Owner, Ownership
from fedllmrec.federated.strategies import (
    StrategyConfig,
    aggregate,
    aggregate_groups,
    apply_delta,
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
) -> tuple[dict[str, torch.Tensor], dict[str, list[bool]]]:
    """New global and group tensors from one round's uploads.

    Global tensors combine every upload; group ``k`` of a group tensor combines
    the uploads routed to ``k`` at its layer and stays unchanged if none was.
    Returns the new tensors and, per group tensor, which groups changed.
    """
    weights = client_weights(uploads.n_examples, strategy.weighting)
    new: dict[str, torch.Tensor] = {}
    updated: dict[str, list[bool]] = {}
    for name in ownership.names(Owner.GLOBAL):
        delta = aggregate(uploads.global_delta[name], weights, strategy)
        new[name] = apply_delta(server[name], delta, strategy.server_lr)
    for name in ownership.names(Owner.GROUP):
        delta, changed = aggregate_groups(
            uploads.group_delta[name], uploads.routed[name], weights, strategy
        )
        new[name] = apply_delta(server[name], delta, strategy.server_lr)
        updated[name] = changed.tolist()
    return new, updated


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
