"""What clients upload, and the seam every upload passes before aggregation.

Local training emits its results as :class:`Uploads`: the uploads of a chunk of C
clients, stacked on a client axis. Before the server aggregates them, they pass
through an ordered list of :class:`UploadTransform` (identity by default), and the
aggregator (:class:`~fedllmrec.federated.aggregation.RoundAggregator`) sees only what
the last transform emits (:func:`transform_uploads`). Clipping, noise, secure-
aggregation masking and adapter filtering plug in there, so the simulator and
Flower, and every model, get them alike.

* An upload holds shared tensors only: a global tensor's delta, and for a group
  tensor a delta dense over its K groups, zero wherever the client was not routed,
  so every client's upload of a tensor has one fixed shape. Private tensors are
  never part of it.
* :class:`ClientUpload` is one client's upload on the wire (safetensors): the
  routed group slice only, the example count, routing and loss in its header.
* :class:`UploadSum` is uploads already summed, header included (examples, loss,
  routing counts): what the fused ``linear`` engine computes (it never forms a
  client's delta), and all that secure aggregation reveals. A transform that needs
  each client's upload cannot apply to it: such a federation must use a per-client
  engine.
* :class:`ProtectedUploads` / :class:`ProtectedSum` are the same under client-level
  DP (:mod:`fedllmrec.federated.privacy`): each client's whole upload clipped, its
  header a bounded vector, noise possibly added; no exact per-client field is left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.ownership import SHARED, Owner, Ownership


@dataclass
class Uploads:
    """The uploads of C clients in one round, stacked on axis 0: the seam's unit.

    ``deltas`` maps each shared tensor to (C, *shape); for a group tensor that is
    (C, K, *rest) with zeros in every group slice the client was not routed to.
    """

    positions: np.ndarray  # (C,) the clients' positions in the population
    n_examples: torch.Tensor  # (C,) float64 training targets
    loss: torch.Tensor  # (C,) float32 mean local task loss
    routing: torch.Tensor  # (C, L) group chosen at each layer; (C, 0) without groups
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    # (C,) a factor on each client's aggregation weight (personality-aware weighting)
    weight_scale: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def summed(self, weights: torch.Tensor, ownership: Ownership) -> UploadSum:
        """These uploads as the sum a secure aggregation reveals (``weights``: (C,) raw)."""
        w = weights.to(torch.float64)
        if self.weight_scale is not None:
            w = w * self.weight_scale.to(torch.float64)
        w32 = w.to(torch.float32)
        sums = {name: torch.tensordot(w32, d, dims=1) for name, d in self.deltas.items()}
        group_weight = {
            name: (w[:, None] * routed_mask(self.routing, ownership, name)).sum(0)
            for name in ownership.names(Owner.GROUP)
        }
        return UploadSum(
            positions=self.positions,
            sums=sums,
            total_weight=float(w.sum()),
            group_weight=group_weight,
            **self.header_sums(ownership.routing_shape),
        )

    def header_sums(self, routing_shape: tuple[int, int]) -> dict[str, Any]:
        """The header summed over the clients: routing counts, examples, examples x loss."""
        n = self.n_examples.double()
        return {
            "routing_counts": routing_counts(self.routing, routing_shape),
            "examples": float(n.sum()),
            "loss_sum": float((n * self.loss.double()).sum()),
        }

    @classmethod
    def dense(
        cls,
        positions: np.ndarray,
        n_examples: torch.Tensor,
        loss: torch.Tensor,
        routing: torch.Tensor,
        shared_delta: Mapping[str, torch.Tensor],
        ownership: Ownership,
    ) -> Uploads:
        """Uploads from local training's deltas, zeroing each group slice not routed."""
        deltas: dict[str, torch.Tensor] = {}
        for name in ownership.names(*SHARED):
            delta = shared_delta[name]
            if ownership[name].owner is Owner.GROUP:
                mask = routed_mask(routing, ownership, name)  # (C, K)
                delta = delta * mask.reshape(*mask.shape, *([1] * (delta.dim() - 2)))
            deltas[name] = delta
        return cls(positions, n_examples, loss, routing, deltas)

    def client(self, index: int, client: int, ownership: Ownership) -> ClientUpload:
        """Client ``index`` as sent on the wire: global deltas and the routed group slices."""
        routing = self.routing[index].tolist() if self.routing.numel() else []
        arrays: dict[str, torch.Tensor] = {}
        for name in ownership.names(Owner.GLOBAL):
            arrays[name] = self.deltas[name][index]
        for name in ownership.names(Owner.GROUP):
            layer = ownership[name].layer
            assert layer is not None
            k = routing[layer]
            arrays[f"{name}/{k}"] = self.deltas[name][index, k]
        return ClientUpload(
            client, int(self.n_examples[index]), float(self.loss[index]), routing, arrays
        )

    @classmethod
    def stack(
        cls, uploads: Sequence[ClientUpload], positions: np.ndarray, ownership: Ownership
    ) -> Uploads:
        """Wire uploads of the clients at ``positions`` (same order) as one stacked part."""
        n = len(uploads)
        if n != positions.shape[0] or n == 0:
            raise ValueError(f"{n} uploads for {positions.shape[0]} positions")
        deltas: dict[str, torch.Tensor] = {
            name: torch.stack([u.arrays[name] for u in uploads])
            for name in ownership.names(Owner.GLOBAL)
        }
        for name in ownership.names(Owner.GROUP):
            stacked = torch.zeros(n, *ownership[name].shape)
            for c, upload in enumerate(uploads):
                for k in range(stacked.shape[1]):
                    key = f"{name}/{k}"
                    if key in upload.arrays:
                        stacked[c, k] = upload.arrays[key]
            deltas[name] = stacked
        return cls(
            positions=positions,
            n_examples=torch.tensor([u.n_examples for u in uploads], dtype=torch.float64),
            loss=torch.tensor([u.loss for u in uploads], dtype=torch.float32),
            routing=torch.tensor([u.routing for u in uploads], dtype=torch.long).reshape(n, -1),
            deltas=deltas,
        )


@dataclass
class UploadSum:
    """Uploads summed over their clients, header included: all a secure sum reveals.

    ``sums`` holds, per shared tensor, the sum of weight x delta over the clients (for a
    group tensor, group k summed over the clients routed to k); ``total_weight`` the summed
    client weights and ``group_weight`` (K,) per group tensor the summed weight per group.
    ``positions`` says who took part (a secure aggregation protocol knows its survivors);
    nothing else per client is left.
    """

    positions: np.ndarray  # (C,) the clients summed
    sums: dict[str, torch.Tensor]
    total_weight: float
    group_weight: dict[str, torch.Tensor]  # (K,) float64 per group tensor
    routing_counts: torch.Tensor  # (L, K) float64 clients routed to each group, per layer
    examples: float  # summed training examples
    loss_sum: float  # summed examples x mean local loss

    def __add__(self, other: UploadSum) -> UploadSum:
        return UploadSum(
            positions=np.concatenate([self.positions, other.positions]),
            sums={name: value + other.sums[name] for name, value in self.sums.items()},
            total_weight=self.total_weight + other.total_weight,
            group_weight={n: w + other.group_weight[n] for n, w in self.group_weight.items()},
            routing_counts=self.routing_counts + other.routing_counts,
            examples=self.examples + other.examples,
            loss_sum=self.loss_sum + other.loss_sum,
        )


@dataclass
class ProtectedUploads:
    """C clients' uploads under client-level DP: no exact per-client field is left.

    ``deltas`` are dense (group slices zero where not routed), the client's whole upload
    clipped to the bound C; ``header`` (C, H) is the bounded header vector that replaces
    examples, loss and routing (:class:`fedllmrec.federated.privacy.DPRelease` codes and
    decodes it). Local or distributed DP noise is already in both.
    """

    positions: np.ndarray  # (C,)
    deltas: dict[str, torch.Tensor]  # name -> (C, *shape)
    header: torch.Tensor  # (C, H)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def summed(self) -> ProtectedSum:
        return ProtectedSum(
            self.positions,
            {name: d.sum(0) for name, d in self.deltas.items()},
            self.header.sum(0),
        )


@dataclass
class ProtectedSum:
    """:class:`ProtectedUploads` summed over their clients (a secure sum's output)."""

    positions: np.ndarray  # (C,)
    sums: dict[str, torch.Tensor]
    header: torch.Tensor  # (H,)

    def __add__(self, other: ProtectedSum) -> ProtectedSum:
        return ProtectedSum(
            np.concatenate([self.positions, other.positions]),
            {name: value + other.sums[name] for name, value in self.sums.items()},
            self.header + other.header,
        )


Part = Uploads | UploadSum | ProtectedUploads | ProtectedSum


class UploadTransform(Protocol):
    """One step of the upload seam: a chunk's uploads in, what is sent on out.

    A transform sees each client's upload (axis 0 of every delta) and may change
    deltas, drop tensors it filters out, or add fields of its own. It must keep the
    clients and their order.
    """

    def __call__(self, uploads: Uploads, round_: int) -> Uploads: ...


def transform_uploads(
    part: Uploads | UploadSum, transforms: Sequence[UploadTransform], round_: int
) -> Uploads | UploadSum:
    """Pass ``part`` through ``transforms`` in order; what the aggregator may see."""
    if isinstance(part, UploadSum):
        if transforms:
            raise FedLLMRecError(
                "upload transforms need each client's upload; the 'linear' engine emits the "
                "round's sum only: use engine 'vmap'"
            )
        return part
    for transform in transforms:
        out = transform(part, round_)
        if not np.array_equal(out.positions, part.positions):
            raise FedLLMRecError(f"upload transform {transform!r} changed the clients")
        part = out
    return part


def raw_weights(n_examples: torch.Tensor, weighting: str) -> torch.Tensor:
    """Unnormalised client weights (C,) float64: example counts ("examples"), or ones."""
    examples = n_examples.to(torch.float64)
    return examples if weighting == "examples" else torch.ones_like(examples)


def routing_counts(routing: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(L, K) float64: how many of the clients of ``routing`` (C, L) chose each group."""
    n_layers, n_groups = shape
    if not n_layers:
        return torch.zeros(0, n_groups, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(routing.long(), n_groups)  # (C, L, K)
    return one_hot.sum(0).to(torch.float64)


def routed_mask(routing: torch.Tensor, ownership: Ownership, name: str) -> torch.Tensor:
    """(C, K) bool: the group of group tensor ``name`` each client was routed to."""
    spec = ownership[name]
    assert spec.layer is not None
    return torch.nn.functional.one_hot(routing[:, spec.layer], spec.shape[0]).bool()


# ---------------------------------------------------------------- the wire format


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
