"""What every engine receives and what it must do: one round's local training."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fedllmrec.federated.config import FederationConfig
from fedllmrec.federated.net import ClientNet
from fedllmrec.federated.ownership import Ownership
from fedllmrec.federated.population import ClientPopulation
from fedllmrec.federated.uploads import Uploads, UploadSum

Emit = Callable[[Uploads | UploadSum], None]


@dataclass(frozen=True)
class LocalJob:
    """One round's local training of some clients, as an engine receives it.

    Parameters
    ----------
    net : ClientNet
        The model. Its private tables hold the clients' current private rows; the
        engine writes each trained client's new rows back into them (client state,
        never uploaded). Its shared tensors are not read: clients start from ``sent``.
    ownership : Ownership
        Owners of every tensor of ``net``.
    population : ClientPopulation
        The clients' windows, example counts and window draws.
    chunks : sequence of np.ndarray
        The clients to train (positions), grouped into chunks trained together.
    round : int
        The round number (from 1): seeds the clients' window draws.
    sent : mapping
        The global and group tensors the server sent (unbatched); FedProx's anchor.
    load : torch.Tensor
        (L, K) routing shares of the previous round (zeros: no balance loss).
    config : FederationConfig
        Local steps, learning rate, optimiser, weighting and FedProx.
    """

    net: ClientNet
    ownership: Ownership
    population: ClientPopulation
    chunks: Sequence[np.ndarray]
    round: int
    sent: Mapping[str, torch.Tensor]
    load: torch.Tensor
    config: FederationConfig


class Engine(Protocol):
    """Computes a round's local training and emits what the clients upload.

    ``fused`` engines emit one :class:`UploadSum` for the whole round (they never form a
    client's delta); the others emit :class:`Uploads` chunk by chunk.
    """

    @property
    def name(self) -> str:
        """The recipe's ``federated.engine`` value."""
        ...

    @property
    def fused(self) -> bool:
        """Whether it emits the round's sum instead of each client's upload."""
        ...

    def run(self, job: LocalJob, emit: Emit) -> None:
        """Train every client of ``job``, write back its private rows, emit its uploads."""
        ...
