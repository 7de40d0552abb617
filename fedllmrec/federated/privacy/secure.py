"""Secure aggregation: the server learns only the sum of the round's uploads.

Every client's upload is a fixed-shape vector: each shared tensor dense (group tensors
over all K slots, zeros where the client was not routed), and its header inside the
same vector: routing one-hot, weight, examples and loss (plain uploads) or the DP header
(:mod:`.release`). A secure aggregation protocol (SecAgg+ on Flower, Bell et al. 2020)
reveals the sum of these vectors over the round's surviving clients and nothing else.

In the simulator :class:`SecureSum` stands for the protocol: it takes the clients'
uploads as they leave them and hands the server only their sum, once, when the round's
local training is over (the protocol's output, stated as such; no masking is simulated).
:func:`pack` and :func:`unpack` are the vectors a real protocol masks and sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedllmrec.federated.ownership import SHARED, Owner, Ownership
from fedllmrec.federated.uploads import (
    ProtectedSum,
    ProtectedUploads,
    Uploads,
    UploadSum,
    raw_weights,
)

Summable = Uploads | UploadSum | ProtectedUploads | ProtectedSum


class SecureSum:
    """The round's uploads summed as a secure aggregation protocol outputs them.

    Parameters
    ----------
    ownership : Ownership
        The shared tensors (the vector's layout).
    weighting : {"examples", "uniform"}
        Each plain upload is multiplied by its client's weight before summing (the
        client does this before masking, and sends the weight inside the vector).
    """

    def __init__(self, ownership: Ownership, weighting: str) -> None:
        self.ownership, self.weighting = ownership, weighting
        self.total: UploadSum | ProtectedSum | None = None

    def add(self, part: Summable) -> None:
        """Fold in the uploads of some clients (what they send, after their protections)."""
        summed: UploadSum | ProtectedSum
        if isinstance(part, Uploads):
            summed = part.summed(raw_weights(part.n_examples, self.weighting), self.ownership)
        elif isinstance(part, ProtectedUploads):
            summed = part.summed()
        else:
            summed = part
        if self.total is None:
            self.total = summed
        elif type(self.total) is not type(summed):
            raise TypeError("a round mixes DP-protected and plain uploads")
        else:
            self.total = self.total + summed  # type: ignore[operator]

    def result(self) -> UploadSum | ProtectedSum | None:
        """The protocol's output: the sum of every upload added (None: nobody took part)."""
        return self.total


# ---------------------------------------------------------------- the masked vectors


@dataclass(frozen=True)
class Layout:
    """Where each part of an upload sits in the fixed-shape vector a protocol sums."""

    names: tuple[str, ...]  # shared tensors, in ownership order
    shapes: tuple[tuple[int, ...], ...]
    routing_shape: tuple[int, int]  # (L, K)
    header: int  # header entries after the tensors
    protected: bool  # a DP header (ProtectedUploads) or the plain one

    @classmethod
    def of(cls, ownership: Ownership, protected: bool, dp_header: int = 0) -> Layout:
        names = tuple(ownership.names(*SHARED))
        n_layers, n_groups = ownership.routing_shape
        # plain: routing one-hot (L*K), weight x one-hot (L*K), weight, examples, examples x loss
        header = dp_header if protected else 2 * n_layers * n_groups + 3
        shapes = tuple(tuple(ownership[name].shape) for name in names)
        return cls(names, shapes, ownership.routing_shape, header, protected)

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes) + self.header


def pack(part: Uploads | ProtectedUploads, layout: Layout, weighting: str) -> np.ndarray:
    """(C, D) float32: each client's upload as the one vector the protocol masks."""
    rows = [part.deltas[name].reshape(len(part), -1) for name in layout.names]
    if isinstance(part, ProtectedUploads):
        header = part.header.float()
    else:
        w = raw_weights(part.n_examples, weighting)
        if part.weight_scale is not None:
            w = w * part.weight_scale.to(torch.float64)
        rows = [r * w.float()[:, None] for r in rows]
        n_groups = layout.routing_shape[1]
        one_hot = torch.nn.functional.one_hot(part.routing.long(), max(n_groups, 1))
        one_hot = one_hot[..., :n_groups].reshape(len(part), -1).double()
        n = part.n_examples.double()
        header = torch.cat(
            [one_hot, w[:, None] * one_hot, torch.stack([w, n, n * part.loss.double()], 1)], 1
        ).float()
    return torch.cat([*rows, header], dim=1).numpy()


def unpack(
    total: np.ndarray, positions: np.ndarray, layout: Layout, ownership: Ownership
) -> UploadSum | ProtectedSum:
    """The summed vector (D,) back as the round's :class:`UploadSum` / :class:`ProtectedSum`."""
    vector = torch.from_numpy(np.asarray(total, dtype=np.float32))
    if vector.shape != (layout.size,):
        raise ValueError(f"a summed upload of {tuple(vector.shape)} for layout {layout.size}")
    sums: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        size = int(np.prod(shape))
        sums[name] = vector[offset : offset + size].reshape(shape).clone()
        offset += size
    header = vector[offset:].double()
    if layout.protected:
        return ProtectedSum(positions, sums, header.float())
    n_layers, n_groups = layout.routing_shape
    lk = n_layers * n_groups
    weighted = header[lk : 2 * lk].reshape(n_layers, n_groups)
    group_weight = {}
    for name in ownership.names(Owner.GROUP):
        layer = ownership[name].layer
        assert layer is not None
        group_weight[name] = weighted[layer].clone()
    weight, examples, loss_sum = (float(v) for v in header[2 * lk :])
    return UploadSum(
        positions=positions,
        sums=sums,
        total_weight=weight,
        group_weight=group_weight,
        routing_counts=header[:lk].reshape(n_layers, n_groups).clone(),
        examples=examples,
        loss_sum=loss_sum,
    )
