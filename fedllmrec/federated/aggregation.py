"""Aggregation: a round's uploads, as the seam emitted them, into new shared tensors.

:class:`RoundAggregator` is the server's side of a round for every engine. It takes
the round's parts one at a time (:class:`~fedllmrec.federated.uploads.Uploads` of a
chunk of clients, or the fused engine's
:class:`~fedllmrec.federated.uploads.UploadSum`) and combines them:

* ``"mean"`` streams: each part is folded into running weighted sums, so the
  simulator never holds every client's delta at once;
* the robust aggregators (``"median"``, ``"trimmed_mean"``) keep every upload and
  combine coordinate-wise at the end (:func:`aggregate`, :func:`aggregate_groups`).

Global tensors combine every upload; group ``k`` of a group tensor combines the
uploads routed to ``k`` at its layer (weights renormalised over them) and stays
unchanged when nobody was. The server optimiser (:mod:`.fedopt`) then moves each
tensor by its combined delta. Nothing here imports Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedllmrec.federated.config import WEIGHTINGS, StrategyConfig, Weighting
from fedllmrec.federated.fedopt import ServerOptimizer
from fedllmrec.federated.ownership import Owner, Ownership
from fedllmrec.federated.privacy.release import DPRelease
from fedllmrec.federated.uploads import (
    Part,
    ProtectedSum,
    ProtectedUploads,
    Uploads,
    UploadSum,
    raw_weights,
    routed_mask,
)


@dataclass
class Received:
    """What a round's uploads said besides the deltas: who, routing counts, examples, loss.

    Summed over the clients, as secure aggregation reveals it (noisy under DP).
    """

    positions: np.ndarray  # (C,) the clients aggregated
    routing_counts: torch.Tensor  # (L, K) clients routed to each group at each layer
    examples: float  # summed training examples (the noisy participant count under DP)
    loss_sum: float  # summed examples x local loss


class RoundAggregator:
    """Combines one round's uploads into new shared tensors (see the module docstring).

    Parameters
    ----------
    ownership : Ownership
        Owners of the model's tensors: which are global and which are group tensors.
    strategy : StrategyConfig
        The aggregator and the client weighting.
    release : DPRelease, optional
        Client-level DP: the parts are DP-protected, summed, noised (central DP) and
        released at a fixed scale (:mod:`fedllmrec.federated.privacy.release`).
    round_ : int
        The round (seeds the central noise).
    """

    def __init__(
        self,
        ownership: Ownership,
        strategy: StrategyConfig,
        release: DPRelease | None = None,
        round_: int = 0,
    ) -> None:
        self.ownership, self.strategy, self.release, self.round = (
            ownership,
            strategy,
            release,
            round_,
        )
        self.streaming = strategy.aggregator == "mean"
        self.sums: dict[str, torch.Tensor] = {}
        self.group_weight: dict[str, torch.Tensor] = {}  # (K,) summed weight of routed clients
        self.total = 0.0
        self.kept: list[Uploads] = []
        self.protected: ProtectedSum | None = None
        self._summaries: list[Received] = []  # headers only: a streamed delta is not kept
        self._released: Received | None = None

    def add(self, part: Part) -> None:
        """Fold in one part of the round (what the seam emitted)."""
        if isinstance(part, ProtectedUploads | ProtectedSum):
            if self.release is None:
                raise ValueError("DP-protected uploads reached an aggregator without DP")
            summed = part.summed() if isinstance(part, ProtectedUploads) else part
            self.protected = summed if self.protected is None else self.protected + summed
            return
        if self.release is not None:
            raise ValueError("an unprotected upload reached a DP aggregator")
        if isinstance(part, UploadSum):
            if not self.streaming:
                raise ValueError(
                    f"aggregator {self.strategy.aggregator!r} needs every client's upload, "
                    "not a sum"
                )
            self._add_sums(part)
            self._summaries.append(
                Received(part.positions, part.routing_counts, part.examples, part.loss_sum)
            )
            return
        self._summaries.append(
            Received(part.positions, **part.header_sums(self.ownership.routing_shape))
        )
        if self.streaming:
            self._add_mean(part)
        else:
            self.kept.append(part)

    def _add_mean(self, part: Uploads) -> None:
        raw = raw_weights(part.n_examples, self.strategy.weighting)
        if part.weight_scale is not None:
            raw = raw * part.weight_scale.to(torch.float64)
        w = raw.to(torch.float32)
        self.total += float(raw.double().sum())
        for name in self.ownership.names(Owner.GLOBAL):
            summed = torch.tensordot(w, part.deltas[name], dims=1)  # (*shape)
            self._accumulate(name, summed)
        for name in self.ownership.names(Owner.GROUP):
            chosen = routed_mask(part.routing, self.ownership, name).to(torch.float32)  # (C, K)
            wk = w[:, None] * chosen  # (C, K): a client counts only for its routed group
            self._accumulate(name, torch.einsum("ck,ck...->k...", wk, part.deltas[name]))
            self.group_weight[name] = self.group_weight.get(name, 0) + wk.sum(0).double()

    def _add_sums(self, part: UploadSum) -> None:
        self.total += part.total_weight
        for name, summed in part.sums.items():
            self._accumulate(name, summed)
        for name, weight in part.group_weight.items():
            self.group_weight[name] = self.group_weight.get(name, 0) + weight.double()

    def _accumulate(self, name: str, summed: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + summed if name in self.sums else summed

    @property
    def received(self) -> Received:
        """The round's summed header (under DP: the released, noisy one, after finish)."""
        if self.release is not None:
            if self._released is None:
                raise ValueError("a DP round's header is released by finish()")
            return self._released
        if not self._summaries:
            raise ValueError("no upload was aggregated")
        parts = self._summaries
        return Received(
            positions=np.concatenate([p.positions for p in parts]),
            routing_counts=sum((p.routing_counts for p in parts[1:]), parts[0].routing_counts),
            examples=sum(p.examples for p in parts),
            loss_sum=sum(p.loss_sum for p in parts),
        )

    @property
    def empty(self) -> bool:
        """No upload arrived (a Poisson round may sample nobody)."""
        return not self._summaries and self.protected is None

    def finish(
        self, current: Mapping[str, torch.Tensor], optimizer: ServerOptimizer | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[bool]]]:
        """New global and group tensors from ``current`` (the values sent this round).

        ``optimizer`` moves the tensors by the combined deltas (it holds FedAdam's state
        across rounds; default a stateless FedAvg step). Returns the new tensors and, per
        group tensor, which groups changed.
        """
        optimizer = _optimizer(optimizer, self.strategy)
        if self.release is not None:
            total = self.protected if self.protected is not None else self.release.empty()
            total = self.release.central_noise(total, self.round)
            released_tensors, released_groups, released = self.release.finish(
                total, current, optimizer
            )
            self._released = Received(
                released.positions,
                released.routing_counts,
                released.participants,
                released.loss_sum,
            )
            return released_tensors, released_groups
        if not self.streaming:
            return self._finish_stacked(current, optimizer)
        if self.total <= 0:
            raise ValueError("no client weight was accumulated")
        new: dict[str, torch.Tensor] = {}
        updated: dict[str, list[bool]] = {}
        for name in self.ownership.names(Owner.GLOBAL):
            new[name] = optimizer.step(name, current[name], self.sums[name] / self.total)
        for name in self.ownership.names(Owner.GROUP):
            weight = self.group_weight[name]  # (K,)
            changed = weight > 0
            scale = torch.where(changed, 1.0 / weight.clamp(min=1e-300), 0.0).to(torch.float32)
            view = scale.reshape(-1, *([1] * (self.sums[name].dim() - 1)))
            new[name] = optimizer.step(name, current[name], self.sums[name] * view, changed)
            updated[name] = changed.tolist()
        return new, updated

    def _finish_stacked(
        self, current: Mapping[str, torch.Tensor], optimizer: ServerOptimizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[bool]]]:
        if not self.kept:
            raise ValueError("no upload was aggregated")
        n_examples = torch.cat([part.n_examples for part in self.kept])
        routing = torch.cat([part.routing for part in self.kept])
        weights = client_weights(n_examples, self.strategy.weighting)
        new: dict[str, torch.Tensor] = {}
        updated: dict[str, list[bool]] = {}
        for name in self.ownership.names(Owner.GLOBAL):
            deltas = torch.cat([part.deltas[name] for part in self.kept])
            new[name] = optimizer.step(
                name, current[name], aggregate(deltas, weights, self.strategy)
            )
        for name in self.ownership.names(Owner.GROUP):
            deltas = torch.cat([part.deltas[name] for part in self.kept])  # (C, K, ...)
            routed = routed_mask(routing, self.ownership, name)
            delta, changed = aggregate_groups(deltas, routed, weights, self.strategy)
            new[name] = optimizer.step(name, current[name], delta, changed)
            updated[name] = changed.tolist()
        return new, updated


def _optimizer(optimizer: ServerOptimizer | None, strategy: StrategyConfig) -> ServerOptimizer:
    if optimizer is not None:
        return optimizer
    if strategy.server_optimizer != "sgd":
        raise ValueError(f"server_optimizer {strategy.server_optimizer!r} needs a ServerOptimizer")
    return ServerOptimizer(strategy)


def client_weights(n_examples: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """Per-client aggregation weights.

    Parameters
    ----------
    n_examples : torch.Tensor
        (C,) number of training examples each client used.
    weighting : {"examples", "uniform"}
        Proportional to ``n_examples`` (FedAvg), or ``1 / C``.

    Returns
    -------
    torch.Tensor
        (C,) float64 weights summing to 1; under "examples" a client with no
        examples gets weight 0.
    """
    if n_examples.ndim != 1 or n_examples.numel() == 0:
        raise ValueError(
            f"n_examples must be a non-empty (C,) tensor, got {tuple(n_examples.shape)}"
        )
    counts = n_examples.to(torch.float64)
    if (counts < 0).any():
        raise ValueError(f"n_examples must be >= 0, got {n_examples.tolist()}")
    if weighting == "uniform":
        return torch.full_like(counts, 1.0 / counts.numel())
    if weighting != "examples":
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("every client has 0 examples: 'examples' weighting is undefined")
    return counts / total


def aggregate(deltas: torch.Tensor, weights: torch.Tensor, config: StrategyConfig) -> torch.Tensor:
    """Combine stacked client deltas into one.

    Parameters
    ----------
    deltas : torch.Tensor
        (C, *shape) one delta per client.
    weights : torch.Tensor
        (C,) client weights; normalised here and used by "mean" only (the
        robust aggregators are unweighted).
    config : StrategyConfig
        ``aggregator`` and, for "trimmed_mean", ``trim_fraction``.

    Returns
    -------
    torch.Tensor
        (*shape) aggregated delta, in the dtype of ``deltas``.
    """
    if deltas.ndim < 1 or deltas.shape[0] == 0:
        raise ValueError(f"deltas must be (C, ...) with C >= 1, got {tuple(deltas.shape)}")
    n_clients = deltas.shape[0]
    if weights.shape != (n_clients,):
        raise ValueError(f"weights must be ({n_clients},), got {tuple(weights.shape)}")

    if config.aggregator == "mean":
        w = weights.to(device=deltas.device, dtype=torch.float64)
        total = w.sum()
        if total <= 0:
            raise ValueError(f"weights must have a positive sum, got {weights.tolist()}")
        # float64 so many small weighted deltas do not lose the low bits of each other.
        out = torch.tensordot(w / total, deltas.to(torch.float64), dims=1)  # (*shape)
        return out.to(deltas.dtype)

    ordered = deltas.sort(dim=0).values  # (C, *shape), per coordinate
    if config.aggregator == "median":
        mid = n_clients // 2
        if n_clients % 2:
            return ordered[mid].clone()
        # torch.median returns the lower middle value; the textbook median averages both.
        pair = ordered[mid - 1 : mid + 1].to(torch.float64)  # (2, *shape)
        return pair.mean(dim=0).to(deltas.dtype)
    if config.aggregator == "trimmed_mean":
        cut = int(config.trim_fraction * n_clients)  # floor; trim_fraction < 0.5 keeps >= 1
        kept = ordered[cut : n_clients - cut].to(torch.float64)  # (C - 2 cut, *shape)
        return kept.mean(dim=0).to(deltas.dtype)
    raise ValueError(f"unknown aggregator {config.aggregator!r}")


def aggregate_groups(
    deltas: torch.Tensor, routed: torch.Tensor, weights: torch.Tensor, config: StrategyConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate MRFF's group parameters group by group.

    Parameters
    ----------
    deltas : torch.Tensor
        (C, K, *shape) each client's delta of every group (zeros where not routed).
    routed : torch.Tensor
        (C, K) bool: which group slices each client trained and uploaded.
    weights : torch.Tensor
        (C,) client weights, renormalised over each group's routed clients.
    config : StrategyConfig
        The aggregator, as in :func:`aggregate`.

    Returns
    -------
    tuple of torch.Tensor
        (K, *shape) aggregated deltas and (K,) bool ``updated``. A group with no
        routed client (or, under "mean", only zero-weight ones) gets a zero delta
        and ``updated`` False, so it stays as it was.
    """
    if deltas.ndim < 2:
        raise ValueError(f"deltas must be (C, K, ...), got {tuple(deltas.shape)}")
    n_clients, n_groups = deltas.shape[:2]
    if routed.shape != (n_clients, n_groups):
        raise ValueError(f"routed must be ({n_clients}, {n_groups}), got {tuple(routed.shape)}")
    if weights.shape != (n_clients,):
        raise ValueError(f"weights must be ({n_clients},), got {tuple(weights.shape)}")

    routed = routed.to(device=deltas.device, dtype=torch.bool)
    weights = weights.to(deltas.device)
    out = torch.zeros(deltas.shape[1:], dtype=deltas.dtype, device=deltas.device)  # (K, *shape)
    updated = torch.zeros(n_groups, dtype=torch.bool, device=deltas.device)  # (K,)
    # K is small (a handful of groups) and each group has its own client subset,
    # so a loop is clearer than padding subsets to a common size.
    for k in range(n_groups):
        members = routed[:, k]  # (C,)
        if not members.any():
            continue
        group_weights = weights[members]  # (C_k,)
        if config.aggregator == "mean" and not group_weights.sum() > 0:
            continue
        out[k] = aggregate(deltas[members, k], group_weights, config)
        updated[k] = True
    return out, updated
