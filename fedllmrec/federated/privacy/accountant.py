"""Epsilon of client-level DP, from Google's ``dp-accounting`` (RDP), never written here.

Each round releases one Gaussian mechanism on the sum of the clipped uploads, with noise
multiplier sigma (noise std / sensitivity):

* central and distributed DP: the round's cohort is drawn by Poisson sampling at rate q
  (amplification by subsampling: ``PoissonSampledDpEvent``), or is every client (no
  amplification: a plain ``GaussianDpEvent`` per round), composed over the rounds;
* local DP: each client's own upload is a Gaussian mechanism, and the server knows who
  took part, so there is no amplification: a client's epsilon composes over the rounds it
  took part in, and the run reports the worst client's.

The neighbouring relation is add-or-remove one client (user-level DP: all of a user's
history at once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting import rdp

# Orders below 2 make the subsampled-Gaussian series fail to converge at small sigma (the
# library then drops them with a warning); at the epsilons reported here they never bind.
ORDERS: tuple[float, ...] = (
    *np.linspace(2.0, 12.0, 41).tolist(),
    14.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
)  # fmt: skip


@dataclass(frozen=True)
class Accountant:
    """Epsilon at ``delta`` after a number of rounds.

    Parameters
    ----------
    noise_multiplier : float
        sigma of every round's Gaussian mechanism.
    sampling_rate : float
        q, the probability a client takes part in a round (1: every client, no
        amplification); ignored for local DP.
    delta : float
        The delta of (epsilon, delta)-DP.
    local : bool
        Local DP: compose over one client's participations, without amplification.
    """

    noise_multiplier: float
    sampling_rate: float
    delta: float
    local: bool = False

    def epsilon(self, rounds: int) -> float:
        """Epsilon after ``rounds`` rounds (a local client's: rounds it took part in)."""
        if rounds <= 0:
            return 0.0
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        event: dp_accounting.DpEvent = gaussian
        if not self.local and self.sampling_rate < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        accountant = rdp.RdpAccountant(list(ORDERS))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)  # a non-converging order is dropped, and says so
        try:
            return float(accountant.get_epsilon(self.delta))
        finally:
            absl.setLevel(level)

    @property
    def sampling(self) -> str:
        """The sampling the epsilon assumes, in words (for metrics.json)."""
        if self.local:
            return "local: no amplification, worst client's participations"
        if self.sampling_rate < 1.0:
            return f"Poisson sampling, q = {self.sampling_rate:g}"
        return "every client every round (no amplification)"
