"""The client's side of the protections: risk weight, clipping, noise, before any upload.

:class:`ClientPrivacy` runs on every client (in the simulator right after local
training, on a Flower node before the upload leaves it), after the federation's generic
upload transforms and before the secure sum:

1. personality-aware weighting (``aware = "norm"``): a client scales its own upload by
   ``w = 1 / (1 + |u| / aware_scale)``. A large update is the one the released model
   reflects most, so it is the most exposed to membership and attribute inference. The
   weight is a function of the client's own upload alone, so it is computed client-side
   (secure aggregation never shows the server a norm), and under DP it is applied before
   clipping, which leaves the sensitivity unchanged: inside the accounting.
2. client-level DP: the whole upload clipped to C as one vector, the header coded as a
   bounded vector (:class:`~fedllmrec.federated.privacy.release.HeaderCode`), and the
   client's noise added: all of it (local DP) or its share (distributed DP, which the
   secure sum then adds up to the full noise).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fedllmrec.federated.config import PrivacyConfig
from fedllmrec.federated.privacy.release import DPRelease, client_seed
from fedllmrec.federated.uploads import ProtectedUploads, Uploads


def upload_norms(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """(C,) each client's whole-upload L2 norm (every tensor as one vector)."""
    squares = [d.reshape(d.shape[0], -1).double().pow(2).sum(1) for d in deltas.values()]
    return torch.stack(squares).sum(0).sqrt()


def clip_deltas(
    deltas: dict[str, torch.Tensor], bound: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each client's upload scaled to L2 norm at most ``bound``; also the norms before."""
    norms = upload_norms(deltas)  # (C,)
    factor = (bound / norms.clamp(min=1e-12)).clamp(max=1.0).float()  # (C,)
    clipped = {name: d * factor.reshape(-1, *([1] * (d.dim() - 1))) for name, d in deltas.items()}
    return clipped, norms


class ClientPrivacy:
    """What every client does to its upload before it leaves (see the module docstring).

    Parameters
    ----------
    config : PrivacyConfig
        The federation's protections.
    release : DPRelease or None
        The DP mechanism (its header code and noise scale); None without DP.
    seed : int
        Seeds each client's noise per round (:func:`client_seed`).
    """

    def __init__(self, config: PrivacyConfig, release: DPRelease | None, seed: int) -> None:
        if (config.dp != "none") != (release is not None):
            raise ValueError("a DPRelease is needed exactly when dp is on")
        self.config, self.release, self.seed = config, release, seed

    def risk_weight(self, uploads: Uploads) -> torch.Tensor:
        """(C,) the personality-aware weight of each upload (ones when off)."""
        if self.config.aware == "none":
            return torch.ones(len(uploads), dtype=torch.float64)
        return 1.0 / (1.0 + upload_norms(uploads.deltas) / self.config.aware_scale)

    def __call__(self, uploads: Uploads, round_: int, cohort: int) -> Uploads | ProtectedUploads:
        """The uploads as they leave the clients; ``cohort``: clients sent the round."""
        weight = self.risk_weight(uploads)
        if self.release is None:
            if self.config.aware == "none":
                return uploads
            return replace(uploads, weight_scale=weight)
        deltas = uploads.deltas
        if self.config.aware != "none":  # weight, then clip: w <= 1 keeps the sensitivity
            scale = weight.float()
            deltas = {
                name: d * scale.reshape(-1, *([1] * (d.dim() - 1))) for name, d in deltas.items()
            }
        deltas, _ = clip_deltas(deltas, self.config.clip)
        header = self.release.code.encode(uploads.routing, uploads.loss)
        std = self.release.client_noise_std(cohort)
        if std > 0:
            deltas, header = self._add_noise(uploads, deltas, header, round_, std)
        return ProtectedUploads(uploads.positions, deltas, header)

    def _add_noise(
        self,
        uploads: Uploads,
        deltas: dict[str, torch.Tensor],
        header: torch.Tensor,
        round_: int,
        std: float,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """N(0, std^2) on every coordinate, each client from its own seeded stream."""
        noisy = {name: d.clone() for name, d in deltas.items()}
        header = header.clone()
        for c, position in enumerate(uploads.positions.tolist()):
            gen = torch.Generator().manual_seed(client_seed(self.seed, round_, position))
            for name in noisy:
                row = noisy[name][c]
                row.add_(torch.randn(row.shape, generator=gen), alpha=std)
            header[c].add_(torch.randn(header[c].shape, generator=gen), alpha=std)
        return noisy, header
