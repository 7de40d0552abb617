"""The ``linear`` engine: a round of one-step SGD clients as one backward pass.

When every client takes one SGD step from the server's tensors and the server
averages, the round is linear in the clients' gradients: the weighted mean of
the updates ``-lr * g_c`` is ``-lr`` times the gradient of ``sum_c w_c L_c``
divided by ``sum_c w_c``. So no per-client gradient of any shared tensor is
needed: ordinary batched forward and backward passes over all clients' windows,
with groups routed sparsely, give the round's summed upload
(:class:`~fedllmrec.federated.uploads.UploadSum`; FedAdam then steps on the mean,
:mod:`~fedllmrec.federated.fedopt`). Two things keep it equal to the per-client
engines:

* a group tensor learns only from positions routed as their client is (a
  client uploads only its routed group's slice), see ``GroupFFN.route_rows``;
* private rows are disjoint per client, so each row's gradient is its own
  client's, scaled by the client's weight, which is divided out.

The per-client engines remain the oracle: a test checks both give the same round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedllmrec.federated.aggregation import raw_weights
from fedllmrec.federated.engines.base import Emit, LocalJob
from fedllmrec.federated.ownership import SHARED, Owner
from fedllmrec.federated.uploads import UploadSum, routing_counts
from fedllmrec.models.mrff import MRFF, Routing, UserRows, balance_loss, group_ffn_mode
from fedllmrec.models.sasrec import trim_left_padding


@dataclass(frozen=True)
class LinearEngine:
    """One backward pass of the weighted summed client losses per round (see module doc)."""

    name: str = "linear"
    fused: bool = True

    def run(self, job: LocalJob, emit: Emit) -> None:
        """Train the clients of ``job`` for one round; emit the round's summed upload.

        Private rows are updated in place. The sum's header holds the clients (positions),
        their routing (C, L) and local task losses (C,), as the per-client engines report.
        """
        own, cfg, net, population = job.ownership, job.config, job.net, job.population
        rec = net.recommender
        lr = cfg.local.lr
        params = dict(net.named_parameters())
        private = own.private_parameters()
        private_tensors = own.names(Owner.PRIVATE)  # trainable rows and private buffers
        mrff = rec.model.config if isinstance(rec.model, MRFF) else None
        tensors = rec.training_tensors()
        net.zero_grad(set_to_none=True)
        done_parts, routing_parts, loss_parts, weight_parts = [], [], [], []
        for chunk in job.chunks:
            (rows,) = population.windows(chunk, job.round)  # one step: one list of windows
            counts = np.array([r.shape[0] for r in rows])
            owner = torch.from_numpy(np.repeat(np.arange(len(rows)), counts))  # row -> client
            newest = torch.from_numpy(np.cumsum(counts) - counts)  # client -> its newest row
            index = np.concatenate(rows)
            batch = trim_left_padding({k: v[torch.from_numpy(index)] for k, v in tensors.items()})
            row_targets = torch.from_numpy(population.window_targets[index]).double()  # (B,)
            targets = torch.zeros(len(rows), dtype=torch.float64).index_add(0, owner, row_targets)
            examples = torch.from_numpy(population.examples[chunk])
            weight = raw_weights(examples, cfg.strategy.weighting)  # (C,) as the aggregator
            # Each client's mean loss, weighted: w_c / n_c on each of its targets.
            row_weight = (weight / targets.clamp(min=1.0))[owner].float()
            users = torch.from_numpy(population.ids[chunk])  # (C,)
            if private_tensors:
                batch["user"] = owner  # user clients: row -> its client's position in ``users``
            # One window per client: the chunk's rows are the batch's, in batch order.
            aligned = len(index) == len(chunk)
            # Group tensors learn only from positions routed as their row's client is.
            with (
                group_ffn_mode(net, route_rows=newest[owner]),
                chunk_rows(net, private_tensors, users) as chunk_private,
                aligned_rows(net, aligned),
            ):
                out = rec.row_weighted_loss(batch, row_weight)
            assert out.row_loss is not None
            loss = out.task
            groups = torch.zeros(len(rows), 0, dtype=torch.long)
            if mrff is not None and out.routing is not None:
                groups = out.routing.groups[:, newest].T  # (C, L) each client's routing
                probs = out.routing.probs[:, newest]
                if job.load.abs().sum() > 0:  # no balance loss before any routing was seen
                    newest_routing = Routing(groups.T, probs)
                    loss = loss + balance_loss(
                        newest_routing, mrff.n_groups, mrff.balance_alpha, job.load, weight.float()
                    )
            loss.backward()
            rows_of = {name: chunk_private[name] for name in private}
            _private_step(params, rows_of, users, weight, lr)
            client_sum = torch.zeros(len(rows), dtype=torch.float64).index_add(
                0, owner, out.row_loss.double()
            )
            done_parts.append(chunk)
            routing_parts.append(groups)
            loss_parts.append((client_sum / targets.clamp(min=1.0)).float())
            weight_parts.append(weight)
        done = np.concatenate(done_parts)
        routing, weights = torch.cat(routing_parts), torch.cat(weight_parts)
        sums: dict[str, torch.Tensor] = {}
        for name in own.names(*SHARED):
            grad = params[name].grad
            sums[name] = torch.zeros_like(params[name]) if grad is None else -lr * grad
        group_weight = {}
        for name in own.names(Owner.GROUP):
            layer = own[name].layer
            assert layer is not None
            k = own[name].shape[0]
            group_weight[name] = torch.zeros(k, dtype=torch.float64).index_add(
                0, routing[:, layer], weights
            )
        net.zero_grad(set_to_none=True)
        n_examples = torch.from_numpy(population.examples[done]).to(torch.float64)
        emit(
            UploadSum(
                positions=done,
                sums=sums,
                total_weight=float(weights.sum()),
                group_weight=group_weight,
                routing_counts=routing_counts(routing, own.routing_shape),
                examples=float(n_examples.sum()),
                loss_sum=float((n_examples * torch.cat(loss_parts).double()).sum()),
            )
        )


@contextlib.contextmanager
def chunk_rows(
    net: nn.Module, names: list[str], users: torch.Tensor
) -> Iterator[dict[str, torch.Tensor]]:
    """Private tensors ``names`` (axis 0 = user) replaced meanwhile by their rows ``users`` (C,).

    A batch then addresses its clients' rows by position in ``users``. The rows of a
    trainable table are a leaf, so its gradient is just the chunk's (C, ...) rows: no
    gradient (sparse or dense) of every user's row. Yields the rows by name; the tables
    are put back on exit.
    """
    saved, chunk = [], {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = net.get_submodule(module_name)
        table = getattr(module, attr)
        rows = table.detach().index_select(0, users)
        if isinstance(table, nn.Parameter):
            # Assigning a Parameter re-registers it under the same name (nn.Module's API).
            swapped: torch.Tensor = nn.Parameter(rows, requires_grad=table.requires_grad)
        else:
            swapped = rows  # a buffer: assigning a tensor replaces the registered buffer
        setattr(module, attr, swapped)
        chunk[name] = swapped
        saved.append((module, attr, table))
    try:
        yield chunk
    finally:
        for module, attr, table in saved:
            setattr(module, attr, table)


@contextlib.contextmanager
def aligned_rows(net: nn.Module, aligned: bool) -> Iterator[None]:
    """Every :class:`UserRows` table of ``net`` aligned with the batch's rows meanwhile."""
    tables = [m for m in net.modules() if isinstance(m, UserRows)] if aligned else []
    for table in tables:
        table.aligned = True
    try:
        yield
    finally:
        for table in tables:
            table.aligned = False


@torch.no_grad()
def _private_step(
    params: dict[str, nn.Parameter],
    rows_of: dict[str, torch.Tensor],
    users: torch.Tensor,
    weight: torch.Tensor,
    lr: float,
) -> None:
    """Each client's own SGD step on its private rows, its weight divided out.

    ``rows_of`` maps each private table to the chunk's rows (C, ...) that trained, whose
    gradient row c is client c's gradient times its weight. Chunks hold disjoint clients,
    so a chunk's rows are final once its backward is done.
    """
    scale = (-lr / weight).float()  # (C,) the sign folded in: one pass less over the rows
    for name, rows in rows_of.items():
        if rows.grad is not None:
            step = rows.grad.mul_(scale.reshape(-1, *[1] * (rows.dim() - 1)))  # in place
            params[name].index_add_(0, users, step)
