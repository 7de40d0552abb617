"""Per-client engines: each client's own local update, batched over a chunk or looped.

The same function trains one client (Flower's ClientApp, the reference loop)
or a chunk of C clients at once (the simulator): every per-client tensor is
stacked on a leading client axis, gradients come from ``torch.func.grad`` on
one client's functional loss, either ``vmap``-ed over the chunk or looped
client by client (the oracle the vmapped path is tested against), and the
optimiser is elementwise, so stacking clients changes nothing per client.

A user client (the MRFF setting) holds one user: its private rows are row ``u``
of each private table, seen by the model as a one-row table (local user id 0).
A domain client holds many users and has no private tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from fedllmrec.federated.config import LocalConfig
from fedllmrec.federated.engines.base import Emit, LocalJob
from fedllmrec.federated.net import ClientNet
from fedllmrec.federated.ownership import SHARED, Owner, Ownership
from fedllmrec.federated.uploads import Uploads
from fedllmrec.models.mrff import group_ffn_mode
from fedllmrec.models.sasrec import trim_left_padding
from fedllmrec.models.sequential import BatchLoss

Mode = Literal["vmap", "loop"]


@dataclass(frozen=True)
class PerClientEngine:
    """Each client's own gradient and optimiser steps (``"vmap"`` batched, ``"loop"``)."""

    name: Mode = "vmap"
    fused: bool = False

    def run(self, job: LocalJob, emit: Emit) -> None:
        net, own, population = job.net, job.ownership, job.population
        tensors = net.recommender.training_tensors()
        every = net.tensors()
        private_names = own.names(Owner.PRIVATE)
        for chunk in job.chunks:
            batches = [
                stack_client_rows(tensors, rows) for rows in population.windows(chunk, job.round)
            ]
            # Columns that are padding in every window of the chunk change nothing: cut them.
            batches = [trim_left_padding(batch) for batch in batches]
            if population.kind == "user":
                for batch in batches:  # each client sees its own private row as row 0
                    batch["user"] = torch.zeros_like(batch["user"])
            users = torch.from_numpy(population.ids[chunk])
            private = {name: every[name].detach()[users][:, None] for name in private_names}
            result = train_clients(
                net,
                own,
                job.sent,
                private,
                batches if len(batches) > 1 else batches[0],
                job.load,
                job.config.local,
                job.config.strategy.proximal_mu,
                self.name,
                client_seeds=[(population.seed, job.round, int(c)) for c in population.ids[chunk]],
            )
            with torch.no_grad():  # the client keeps its new private rows: never uploaded
                for name, rows in result.private.items():
                    every[name][users] = rows[:, 0]  # (C, 1, ...) one row per client
            n_examples = torch.from_numpy(population.examples[chunk]).to(torch.float64)
            emit(
                Uploads.dense(
                    chunk, n_examples, result.loss, result.routing, result.shared_delta, own
                )
            )


@dataclass
class ChunkResult:
    """A chunk of C clients after local training."""

    shared_delta: dict[str, torch.Tensor]  # name -> (C, *shape) local minus received
    private: dict[str, torch.Tensor]  # trainable private name -> (C, *row shape) new rows
    routing: torch.Tensor  # (C, L) group chosen at each layer (user-level), empty if no groups
    loss: torch.Tensor  # (C,) mean local task loss over the steps


def train_clients(
    net: ClientNet,
    ownership: Ownership,
    sent: Mapping[str, torch.Tensor],
    private_rows: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    load: torch.Tensor,
    config: LocalConfig,
    proximal_mu: float = 0.0,
    mode: Mode = "vmap",
    client_seeds: Sequence[tuple[int, ...]] | None = None,
) -> ChunkResult:
    """Local training of a chunk of C clients from the received shared tensors.

    Parameters
    ----------
    net : ClientNet
        The model whose functional loss is trained.
    ownership : Ownership
        Owners of every tensor of ``net``.
    sent : mapping
        Received global and group tensors (unbatched), also FedProx's anchor.
    private_rows : mapping
        Private tensor name -> (C, 1, *row) each client's own row(s).
    batch : mapping or sequence of mappings
        Training tensors (C, W, ...), windows padded per chunk; row 0 newest.
        A sequence gives one batch per local step.
    load : torch.Tensor
        (L, K) routing shares of the previous round (zeros: no balance loss).
    config : LocalConfig
        Steps, learning rate and optimiser.
    proximal_mu : float
        FedProx weight (0: plain local training).
    mode : {"vmap", "loop"}
        Batched over clients, or the per-client reference loop.
    client_seeds : sequence of tuple of int, optional
        ``(federation seed, round, client id)`` of each client. The loop reseeds a
        recommender that draws from its own generators (``seeds_clients``) before each
        client's step, so a client draws alike in any chunk and on any Flower node.
    """
    batches = [batch] * config.steps if isinstance(batch, Mapping) else list(batch)
    recommender = net.recommender
    if len(batches) != config.steps:
        raise ValueError(f"{len(batches)} batches for {config.steps} local steps")
    n_clients = next(iter(batches[0].values())).shape[0]
    shared_names = ownership.names(*SHARED)
    frozen = {name: t for name, t in net.tensors().items() if ownership[name].owner is Owner.FROZEN}
    private_trained = ownership.private_parameters()
    private_data = {
        n: private_rows[n] for n in ownership.names(Owner.PRIVATE) if n not in private_trained
    }
    anchor = {name: sent[name].detach() for name in shared_names}
    start = {name: anchor[name].expand(n_clients, *anchor[name].shape) for name in shared_names}

    def client_loss(
        trained: dict[str, torch.Tensor],
        data: dict[str, torch.Tensor],
        client_batch: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out: BatchLoss = functional_call(net, {**trained, **data, **frozen}, (client_batch, load))
        shared = {name: trained[name] for name in shared_names}
        loss = out.task + out.aux + proximal_term(shared, anchor, proximal_mu)
        groups = (
            out.routing.groups[:, 0]
            if out.routing is not None
            else torch.zeros(0, dtype=torch.long)
        )
        return loss, (out.task.detach(), groups)

    step_grad = grad(client_loss, has_aux=True)

    def autograd_step(
        trained: dict[str, torch.Tensor],
        data: dict[str, torch.Tensor],
        client_batch: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``step_grad`` by ordinary autograd: the loop needs no transform, and outside
        one the model's own kernels run (``fast_dropout`` masks, no functorch wrapping)."""
        leaves = {name: t.detach().requires_grad_(True) for name, t in trained.items()}
        loss, aux = client_loss(leaves, data, client_batch)
        grads = torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)
        return dict(zip(leaves, grads, strict=True)), aux

    def gradients(
        trained: dict[str, torch.Tensor], step: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Per-client gradients (C, ...), task losses (C,) and routing (C, L)."""
        batch = batches[step]
        if mode == "vmap" and step == 0:
            # Every client starts from the server's tensors: pass them unbatched, so the
            # forward is one ordinary batched pass and only the gradients are per client.
            shared0 = {name: anchor[name] for name in shared_names}
            private0 = {name: trained[name] for name in private_trained}
            dims = {**dict.fromkeys(shared0, None), **dict.fromkeys(private0, 0)}
            grads, (task, groups) = vmap(step_grad, in_dims=(dims, 0, 0), randomness="different")(
                {**shared0, **private0}, private_data, dict(batch)
            )
            return grads, task, groups
        if mode == "vmap":
            grads, (task, groups) = vmap(step_grad, randomness="different")(
                trained, private_data, dict(batch)
            )
            return grads, task, groups
        if mode != "loop":
            raise ValueError(f"mode must be 'vmap' or 'loop', not {mode!r}")
        # Each client's own all-padding columns are cut too (exact; short windows cost less).
        per_client = []
        for c in range(n_clients):
            if client_seeds is not None and recommender.seeds_clients:
                recommender.seed_client((*client_seeds[c], step))
            per_client.append(
                autograd_step(
                    {k: v[c] for k, v in trained.items()},
                    {k: v[c] for k, v in private_data.items()},
                    trim_left_padding({k: v[c] for k, v in batch.items()}),
                )
            )
        grads = {k: torch.stack([g[k] for g, _ in per_client]) for k in trained}
        task = torch.stack([aux[0] for _, aux in per_client])
        groups = torch.stack([aux[1] for _, aux in per_client])
        return grads, task, groups

    initial = {**start, **{name: private_rows[name] for name in private_trained}}
    with group_ffn_mode(net, dense=True):
        grads, losses, routing = gradients(initial, 0)
        if config.steps == 1:
            # One step from a fresh optimiser has a closed form (Adam: lr * g / (|g| + eps)),
            # which spares C copies of every tensor and the optimiser's state.
            update = {name: _first_step(g, config) for name, g in grads.items()}
            return ChunkResult(
                shared_delta={name: update[name] for name in shared_names},
                private={name: private_rows[name] + update[name] for name in private_trained},
                routing=routing,
                loss=losses,
            )
        leaves = {name: t.clone() for name, t in initial.items()}
        optimizer: torch.optim.Optimizer
        # foreach: the multi-tensor kernels, 1.5x faster on CPU, the same values bit for bit
        # as the per-tensor loop (tests/test_federated.py); not fused: that differs.
        if config.optimizer == "adam":
            optimizer = torch.optim.Adam(list(leaves.values()), lr=config.lr, foreach=True)
        else:
            optimizer = torch.optim.SGD(list(leaves.values()), lr=config.lr, foreach=True)
        for step in range(config.steps):
            if step:
                trained = {name: t.detach() for name, t in leaves.items()}
                grads, task, routing = gradients(trained, step)
                losses = losses + task
            for name, leaf in leaves.items():
                leaf.grad = grads[name]
            optimizer.step()
    return ChunkResult(
        shared_delta={name: leaves[name].detach() - start[name] for name in shared_names},
        private={name: leaves[name].detach() for name in private_trained},
        routing=routing,
        loss=losses / config.steps,
    )


def _first_step(grad: torch.Tensor, config: LocalConfig) -> torch.Tensor:
    """The update of a fresh optimiser's first step (torch.optim's Adam or SGD); reuses ``grad``."""
    if config.optimizer == "sgd":
        return grad.mul_(-config.lr)
    # In place: the per-client gradients are the largest tensors of a round.
    denom = grad.abs().add_(1e-8)
    return grad.div_(denom).mul_(-config.lr)


def proximal_term(
    params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's proximal penalty ``mu/2 * sum_n ||params[n] - anchor[n]||^2``.

    Works under ``torch.func.vmap`` with per-client ``params`` and an unbatched
    ``anchor`` (the global model): broadcasting does the rest.

    Parameters
    ----------
    params : Mapping[str, torch.Tensor]
        The client's trainable parameters.
    anchor : Mapping[str, torch.Tensor]
        The round's global parameters, same names; no gradient flows into them.
    mu : float
        Proximal strength; 0 gives a zero scalar.

    Returns
    -------
    torch.Tensor
        Scalar penalty.
    """
    if params.keys() != anchor.keys():
        missing = sorted(set(params) ^ set(anchor))
        raise KeyError(f"params and anchor names differ: {missing}")
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    first = next(iter(params.values()), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    device = first.device if first is not None else None
    if mu == 0 or first is None:
        return torch.zeros((), dtype=dtype, device=device)
    total = torch.zeros((), dtype=dtype, device=device)
    for name, value in params.items():
        total = total + (value - anchor[name].detach()).pow(2).sum()
    return 0.5 * mu * total


def stack_client_rows(
    tensors: Mapping[str, torch.Tensor], rows: list[np.ndarray]
) -> dict[str, torch.Tensor]:
    """Rows of each client stacked (C, W, ...), zero-padded to the chunk's widest client."""
    width = max(r.shape[0] for r in rows)
    batch = {}
    for key, value in tensors.items():
        padded = value.new_zeros(len(rows), width, *value.shape[1:])
        for i, r in enumerate(rows):
            padded[i, : r.shape[0]] = value[torch.from_numpy(r)]
        batch[key] = padded
    return batch
