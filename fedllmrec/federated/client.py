"""Client update: local training of one or many clients, and what they upload.

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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.func import functional_call, grad, vmap

from fedllmrec.federated.ownership import SHARED, Owner, Ownership
from fedllmrec.federated.strategies import proximal_term
from fedllmrec.models.mrff import group_ffn_mode
from fedllmrec.models.sequential import BatchLoss, SequentialRecommender

Engine = Literal["vmap", "loop"]


@dataclass
class LocalConfig:
    """How a client trains in a round: ``steps`` optimiser steps from a fresh optimiser.

    Each step uses all the client's windows (``batch_size = 0``, a user client) or
    ``batch_size`` of them drawn afresh (a domain client holding many users).
    """

    steps: int = 1
    lr: float = 0.1
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"LocalConfig.steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"LocalConfig.lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"LocalConfig.optimizer must be 'adam' or 'sgd', got {self.optimizer}")
        if self.batch_size < 0:
            raise ValueError(f"LocalConfig.batch_size must be >= 0, got {self.batch_size}")


class ClientNet(nn.ModuleDict):
    """The recommender's trained modules under one root, its loss as ``forward``.

    Tensor names are the ownership names ("model.…", "head.…"), so a
    ``functional_call`` with per-client tensors runs one client's loss.
    """

    def __init__(self, recommender: SequentialRecommender) -> None:
        super().__init__(recommender._trained_modules())
        object.__setattr__(self, "recommender", recommender)  # not a submodule
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = False  # functional gradients are dense

    def forward(self, batch: Mapping[str, torch.Tensor], load: torch.Tensor) -> BatchLoss:
        rec: SequentialRecommender = self.__dict__["recommender"]
        return rec.batch_loss(batch, load=load, newest_only=True, gather=False)


@dataclass
class ChunkResult:
    """A chunk of C clients after local training."""

    shared_delta: dict[str, torch.Tensor]  # name -> (C, *shape) local minus received
    private: dict[str, torch.Tensor]  # trainable private name -> (C, *row shape) new rows
    routing: torch.Tensor  # (C, L) group chosen at each layer (user-level), empty if no groups
    loss: torch.Tensor  # (C,) mean local task loss over the steps


@dataclass
class ClientUpload:
    """Exactly what one client sends: shared deltas only, group slices only where routed.

    ``arrays`` names are ``"<name>"`` for a global delta and ``"<name>/<k>"``
    for the delta of group ``k`` of a group tensor.
    """

    client: int
    n_examples: int
    loss: float
    routing: list[int]
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The wire format (safetensors; scalars in its metadata)."""
        meta = {
            "client": str(self.client),
            "n_examples": str(self.n_examples),
            "loss": repr(self.loss),
            "routing": ",".join(map(str, self.routing)),
        }
        arrays = {k: v.detach().contiguous() for k, v in self.arrays.items()}
        return save_safetensors(arrays, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientUpload:
        arrays = load_safetensors(data)
        header = _safetensors_metadata(data)
        routing = [int(g) for g in header["routing"].split(",") if g]
        return cls(
            int(header["client"]), int(header["n_examples"]), float(header["loss"]), routing, arrays
        )

    @property
    def nbytes(self) -> int:
        return len(self.to_bytes())


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    size = int.from_bytes(data[:8], "little")
    meta: dict[str, str] = json.loads(data[8 : 8 + size]).get("__metadata__", {})
    return meta


def make_upload(
    client: int,
    n_examples: int,
    result: ChunkResult,
    index: int,
    ownership: Ownership,
) -> ClientUpload:
    """Client ``index`` of a chunk as an upload: global deltas, and routed group slices."""
    arrays: dict[str, torch.Tensor] = {}
    for name in ownership.names(Owner.GLOBAL):
        arrays[name] = result.shared_delta[name][index]
    routing = result.routing[index].tolist() if result.routing.numel() else []
    for name in ownership.names(Owner.GROUP):
        layer = ownership[name].layer
        assert layer is not None
        k = routing[layer]
        arrays[f"{name}/{k}"] = result.shared_delta[name][index, k]
    return ClientUpload(client, n_examples, float(result.loss[index]), routing, arrays)


def train_clients(
    net: ClientNet,
    ownership: Ownership,
    server: Mapping[str, torch.Tensor],
    private_rows: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    load: torch.Tensor,
    config: LocalConfig,
    proximal_mu: float = 0.0,
    engine: Engine = "vmap",
) -> ChunkResult:
    """Local training of a chunk of C clients from the received shared tensors.

    Parameters
    ----------
    net : ClientNet
        The model whose functional loss is trained.
    ownership : Ownership
        Owners of every tensor of ``net``.
    server : mapping
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
    engine : {"vmap", "loop"}
        Batched over clients, or the per-client reference loop.
    """
    batches = [batch] * config.steps if isinstance(batch, Mapping) else list(batch)
    if len(batches) != config.steps:
        raise ValueError(f"{len(batches)} batches for {config.steps} local steps")
    n_clients = next(iter(batches[0].values())).shape[0]
    shared_names = ownership.names(*SHARED)
    frozen = {
        name: t for name, t in _all_tensors(net).items() if ownership[name].owner is Owner.FROZEN
    }
    private_trained = ownership.private_parameters()
    private_data = {
        n: private_rows[n] for n in ownership.names(Owner.PRIVATE) if n not in private_trained
    }
    anchor = {name: server[name].detach() for name in shared_names}
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

    def gradients(
        trained: dict[str, torch.Tensor], step: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Per-client gradients (C, ...), task losses (C,) and routing (C, L)."""
        batch = batches[step]
        if engine == "vmap" and step == 0:
            # Every client starts from the server's tensors: pass them unbatched, so the
            # forward is one ordinary batched pass and only the gradients are per client.
            shared0 = {name: anchor[name] for name in shared_names}
            private0 = {name: trained[name] for name in private_trained}
            dims = {**dict.fromkeys(shared0, None), **dict.fromkeys(private0, 0)}
            grads, (task, groups) = vmap(step_grad, in_dims=(dims, 0, 0), randomness="different")(
                {**shared0, **private0}, private_data, dict(batch)
            )
            return grads, task, groups
        if engine == "vmap":
            grads, (task, groups) = vmap(step_grad, randomness="different")(
                trained, private_data, dict(batch)
            )
            return grads, task, groups
        if engine != "loop":
            raise ValueError(f"engine must be 'vmap' or 'loop', not {engine!r}")
        per_client = [
            step_grad(
                {k: v[c] for k, v in trained.items()},
                {k: v[c] for k, v in private_data.items()},
                {k: v[c] for k, v in batch.items()},
            )
            for c in range(n_clients)
        ]
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
        if config.optimizer == "adam":
            optimizer = torch.optim.Adam(list(leaves.values()), lr=config.lr, foreach=False)
        else:
            optimizer = torch.optim.SGD(list(leaves.values()), lr=config.lr, foreach=False)
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


def _all_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters()) | dict(module.named_buffers())


def upload_bytes(ownership: Ownership) -> int:
    """Payload bytes of one upload: every global delta and one group slice per group tensor."""
    total = 0
    for name in ownership.names(*SHARED):
        spec = ownership[name]
        per = spec.numel // spec.shape[0] if spec.owner is Owner.GROUP else spec.numel
        total += 4 * per
    return total


def download_bytes(ownership: Ownership) -> int:
    """Payload bytes a client receives: every global and group tensor (it routes itself)."""
    return 4 * ownership.numel(*SHARED)
