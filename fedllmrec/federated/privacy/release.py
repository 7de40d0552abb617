"""The DP mechanism's two ends: the header code and the server's noisy, fixed-scale mean.

Under client-level DP a client's upload is one vector ``x = [clip_C(delta); header]``:

* ``delta``, every shared tensor (group tensors dense over their K slots, zero where the
  client was not routed), clipped as one vector to L2 norm C;
* ``header = s * [one-hot routing (L*K), 1, min(loss, LOSS_CAP) / LOSS_CAP]``, the routing
  counts, the participant count and the loss the server needs, as a bounded vector;
  ``s`` makes its norm at most ``HEADER_SHARE * C``.

So one client changes the round's sum by at most ``sensitivity = C * sqrt(1 +
HEADER_SHARE^2)``, and one Gaussian mechanism with std ``sigma * sensitivity`` on every
coordinate of the sum covers everything the server learns. The server then releases
(post-processing, free under DP): global tensors' mean over the *expected* cohort size (a
fixed denominator, as DP-FedAvg; McMahan et al. 2018), each group's mean over its noisy
routed count, the routing shares and the mean loss from the noisy header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedllmrec.federated.config import PrivacyConfig
from fedllmrec.federated.fedopt import ServerOptimizer
from fedllmrec.federated.ownership import Owner, Ownership
from fedllmrec.federated.uploads import ProtectedSum

LOSS_CAP = 20.0  # a client's mean local loss, clipped to [0, LOSS_CAP] in its header
HEADER_SHARE = 0.5  # the header's norm bound as a share of C


@dataclass(frozen=True)
class HeaderCode:
    """Encodes routing and loss as a bounded vector; decodes its (noisy) sum."""

    routing_shape: tuple[int, int]  # (L, K)
    scale: float  # s

    @property
    def size(self) -> int:
        n_layers, n_groups = self.routing_shape
        return n_layers * n_groups + 2

    @property
    def norm_bound(self) -> float:
        return self.scale * math.sqrt(self.routing_shape[0] + 2)

    def encode(self, routing: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """(C, H) headers from routing (C, L) and mean local loss (C,)."""
        n_layers, n_groups = self.routing_shape
        n = loss.shape[0]
        one_hot = torch.nn.functional.one_hot(routing.long(), max(n_groups, 1))
        one_hot = one_hot[..., :n_groups].reshape(n, n_layers * n_groups).float()
        tail = torch.stack([torch.ones(n), loss.float().clamp(0.0, LOSS_CAP) / LOSS_CAP], 1)
        return self.scale * torch.cat([one_hot, tail], dim=1)

    def decode(self, header: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Routing counts (L, K), participant count and summed loss of a header sum."""
        n_layers, n_groups = self.routing_shape
        plain = header.double() / self.scale
        counts = plain[: n_layers * n_groups].reshape(n_layers, n_groups)
        return counts, float(plain[-2]), float(plain[-1]) * LOSS_CAP


@dataclass
class Released:
    """What one DP round released besides the model: its (noisy) header, decoded."""

    positions: np.ndarray
    routing_counts: torch.Tensor  # (L, K) noisy; may be negative
    participants: float  # noisy count
    loss_sum: float  # noisy


class DPRelease:
    """The server's side of client-level DP (see the module docstring).

    Parameters
    ----------
    config : PrivacyConfig
        ``dp``, ``clip`` and ``noise_multiplier``.
    ownership : Ownership
        The shared tensors and the routing shape.
    expected_clients : float
        Expected number of uploads per round: the fixed denominator of the global mean.
    seed : int
        Seeds the central noise (round by round, so a replay draws the same).
    """

    def __init__(
        self, config: PrivacyConfig, ownership: Ownership, expected_clients: float, seed: int
    ) -> None:
        if config.dp == "none":
            raise ValueError("DPRelease needs dp != 'none'")
        self.config, self.ownership, self.seed = config, ownership, seed
        self.expected_clients = float(expected_clients)
        n_layers = ownership.routing_shape[0]
        self.code = HeaderCode(
            ownership.routing_shape, HEADER_SHARE * config.clip / math.sqrt(n_layers + 2)
        )
        self.sensitivity = config.clip * math.sqrt(1.0 + HEADER_SHARE**2)
        self.std = config.noise_multiplier * self.sensitivity

    def client_noise_std(self, cohort: int) -> float:
        """The std each client adds to its own upload: local all, distributed a share."""
        if self.config.dp == "local":
            return self.std
        if self.config.dp == "distributed":
            # Shares of N(0, std^2 / m) from the m clients of the cohort sum to N(0, std^2).
            return self.std / math.sqrt(max(cohort, 1))
        return 0.0

    def empty(self) -> ProtectedSum:
        """The sum of no upload (a Poisson round may sample nobody)."""
        shared = self.ownership.names(Owner.GLOBAL, Owner.GROUP)
        return ProtectedSum(
            np.zeros(0, dtype=np.int64),
            {name: torch.zeros(self.ownership[name].shape) for name in shared},
            torch.zeros(self.code.size),
        )

    def central_noise(self, total: ProtectedSum, round_: int) -> ProtectedSum:
        """Central DP: the server adds N(0, std^2) to every coordinate of the sum."""
        if self.config.dp != "central":
            return total
        gen = torch.Generator().manual_seed(_mix(self.seed, round_, -1))
        sums = {
            name: value + self.std * torch.randn(value.shape, generator=gen)
            for name, value in total.sums.items()
        }
        header = total.header + self.std * torch.randn(total.header.shape, generator=gen)
        return ProtectedSum(total.positions, sums, header)

    def finish(
        self,
        total: ProtectedSum,
        current: Mapping[str, torch.Tensor],
        optimizer: ServerOptimizer,
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[bool]], Released]:
        """New shared tensors from the round's (noisy) sum; the decoded header."""
        counts, participants, loss_sum = self.code.decode(total.header)
        own = self.ownership
        new: dict[str, torch.Tensor] = {}
        updated: dict[str, list[bool]] = {}
        for name in own.names(Owner.GLOBAL):
            delta = total.sums[name] / self.expected_clients
            new[name] = optimizer.step(name, current[name], delta)
        for name in own.names(Owner.GROUP):
            layer = own[name].layer
            assert layer is not None
            routed = counts[layer]  # (K,) noisy clients routed to each group
            changed = routed >= 1.0
            scale = torch.where(changed, 1.0 / routed.clamp(min=1.0), 0.0).to(torch.float32)
            view = scale.reshape(-1, *([1] * (total.sums[name].dim() - 1)))
            new[name] = optimizer.step(name, current[name], total.sums[name] * view, changed)
            updated[name] = changed.tolist()
        return new, updated, Released(total.positions, counts, participants, loss_sum)


def _mix(seed: int, round_: int, client: int) -> int:
    """A 63-bit seed for (run seed, round, client): draws independent of chunking."""
    words = np.random.SeedSequence([seed, round_, client + 1]).generate_state(2, np.uint32)
    return int(words[0]) << 31 ^ int(words[1])


def client_seed(seed: int, round_: int, client: int) -> int:
    """The seed of one client's noise in one round (a replay draws the same)."""
    return _mix(seed, round_, client)
