"""Secure aggregation on Flower: what a SuperNode masks, its public scale, the quantisation.

Under ``federated.privacy.secure_aggregation = true`` every SuperNode is one SecAgg+
party (Bell et al. 2020; flwr's ``SecAggPlusWorkflow`` and ``secaggplus_mod``). Its
input is one fixed-shape vector: the sum over the node's clients of their
:func:`~fedllmrec.federated.privacy.pack` rows (every shared tensor dense, group tensors
over all K slots, zeros where a client was not routed; the header with routing one-hot,
weight, examples and loss, or the DP header). The server learns the sum over the nodes
and nothing else; :func:`~fedllmrec.federated.privacy.unpack` turns it into the round's
:class:`~fedllmrec.federated.uploads.UploadSum` / ``ProtectedSum``.

SecAgg+ sums integers: each party clips every entry to ``[-c, c]`` and rounds it
stochastically to one of ``T + 1`` levels (``c`` the clipping range, ``T`` the
quantisation range). So that nothing is clipped, a node sends ``vector / scale`` with
``c = 1``: ``scale`` is public, one value per entry, the most the node's sum of that
entry can be (:class:`SecureCodec`, from the recipe, the round's largest node share
``k`` and :class:`SecureSettings`). An entry over its bound is refused, never clipped.
Each party's rounding moves an entry by less than one level, ``2 c / T`` scaled, so an
entry of the unmasked sum of ``n`` parties is off by less than ``n * 2 * scale / T``
(:meth:`SecureCodec.error_bound`); the entries that are integers by construction
(routing counts, examples, plain weights) are rounded back exactly when that bound is
below 1/2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.privacy import Layout, pack
from fedllmrec.federated.server import FederationServer
from fedllmrec.federated.uploads import Part, ProtectedUploads, Uploads

CLIPPING_RANGE = 1.0  # SecAgg+'s c: every scaled entry is in [-1, 1]
MAX_QUANTIZATION = 2**30  # flwr rounds to int32: T stays well inside it
MIN_QUANTIZATION = 2**16  # fewer levels than this: refuse (too many parties for the modulus)
CLIP_REFUSAL = "secure aggregation would clip"  # how a node's refusal starts


@dataclass(frozen=True)
class SecureSettings:
    """The public bounds of the vector a node masks, and SecAgg+'s modulus.

    Parameters
    ----------
    delta_bound : float
        The most one client's delta may move any coordinate (plain uploads; under DP the
        clip bound ``federated.privacy.clip`` is used instead).
    loss_bound : float
        The largest mean local loss a client may report (plain uploads).
    noise_tail : float
        Under local or distributed DP, a client's noise is bounded by this many of its
        noise standard deviations (10: exceeded with probability ~1e-23 per entry).
    modulus_range : int
        SecAgg+'s modulus M (a power of 2, flwr's default 2**32); the quantisation range
        is the largest power of 2 ``T <= 2**30`` with ``parties * T < M``.
    """

    delta_bound: float = 8.0
    loss_bound: float = 100.0
    noise_tail: float = 10.0
    modulus_range: int = 2**32

    def __post_init__(self) -> None:
        if not (self.delta_bound > 0 and self.loss_bound > 0 and self.noise_tail > 0):
            raise FedLLMRecError(f"secure aggregation bounds must be > 0, got {self}")
        m = self.modulus_range
        if m < 2 * MIN_QUANTIZATION or m & (m - 1):
            raise FedLLMRecError(f"modulus_range must be a power of 2 >= 2**17, got {m}")

    def to_config(self) -> dict[str, float]:
        """The bounds as they travel in a node's fit config (``secagg.*``)."""
        return {
            "secagg.delta-bound": self.delta_bound,
            "secagg.loss-bound": self.loss_bound,
            "secagg.noise-tail": self.noise_tail,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> SecureSettings:
        def number(key: str) -> float:
            value = config[key]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise FedLLMRecError(f"expected a number for {key!r}, got {value!r}")
            return float(value)

        return cls(
            number("secagg.delta-bound"), number("secagg.loss-bound"), number("secagg.noise-tail")
        )

    def quantization_range(self, parties: int) -> int:
        """T for a round of ``parties`` SecAgg+ parties: the unmasked sum stays below M."""
        if parties < 2:
            raise FedLLMRecError(
                f"secure aggregation needs participants on >= 2 SuperNodes, got {parties}"
            )
        levels = min(MAX_QUANTIZATION, (self.modulus_range - 1) // parties)
        levels = 1 << (levels.bit_length() - 1)  # a power of 2 below the bound
        if levels < MIN_QUANTIZATION:
            raise FedLLMRecError(
                f"{parties} SecAgg+ parties leave {levels} quantisation levels under modulus "
                f"{self.modulus_range} (need >= {MIN_QUANTIZATION}): raise modulus_range"
            )
        return levels


def reconstruction_threshold(parties: int) -> int:
    """Shares needed to unmask: a strict majority of the parties (at least 2)."""
    return max(2, parties // 2 + 1)


@dataclass(frozen=True)
class SecureCodec:
    """A node's vector as SecAgg+ sums it: scaled by public per-entry bounds into [-1, 1].

    ``scale[j]`` is the most entry ``j`` of a node's sum can be: ``k`` (the most clients
    any node trains this round) times one client's bound, which is

    * plain uploads (``W`` the largest client weight: 1 for ``weighting = "uniform"``,
      else ``E``, the largest client's training examples in the recipe's population):
      ``W * delta_bound`` for a tensor entry, 1 for a routing count, ``W`` for a weighted
      count and the weight, ``E`` for the examples and ``E * loss_bound`` for the loss
      sum;
    * DP-protected uploads (``s`` the client's noise std, :meth:`DPRelease.client_noise_std`,
      ``z`` the noise tail): ``clip + z * s`` for a tensor entry (the clipped upload's norm
      bounds every entry) and ``header_scale + z * s`` for a header entry.
    """

    layout: Layout
    scale: np.ndarray  # (D,) float64
    integral: np.ndarray  # (D,) bool: integers by construction (rounded after the sum)
    segments: tuple[tuple[str, int, int], ...]  # (what, start, stop) for refusal messages
    weighting: str

    @classmethod
    def of(
        cls,
        fed: FederationServer,
        node_clients: int,
        cohort: int,
        settings: SecureSettings,
    ) -> SecureCodec:
        """The codec of a round where no node trains more than ``node_clients`` clients."""
        own, release = fed.ownership, fed.release
        layout = Layout.of(own, release is not None, release.code.size if release else 0)
        tensors = layout.size - layout.header
        k = float(max(node_clients, 1))
        segments: list[tuple[str, float, bool, int]] = []  # (what, bound, integral, length)
        if release is None:
            privacy = fed.federation.privacy
            examples = max(float(fed.client_examples().max(initial=0)), 1.0)
            weight = 1.0 if fed.federation.strategy.weighting == "uniform" else examples
            exact_weight = privacy.aware == "none"  # 1 or an example count: integers
            lk = int(np.prod(layout.routing_shape))
            segments += [
                ("tensor delta", weight * settings.delta_bound, False, tensors),
                ("routing count", 1.0, True, lk),
                ("weighted routing count", weight, exact_weight, lk),
                ("weight", weight, exact_weight, 1),
                ("examples", examples, True, 1),
                ("loss sum", examples * settings.loss_bound, False, 1),
            ]
        else:
            tail = settings.noise_tail * release.client_noise_std(cohort)
            segments += [
                ("clipped tensor delta", release.config.clip + tail, False, tensors),
                ("DP header", release.code.scale + tail, False, layout.header),
            ]
        scale = np.concatenate([np.full(n, k * bound) for _, bound, _, n in segments])
        integral = np.concatenate([np.full(n, exact) for _, _, exact, n in segments])
        bounds, start = [], 0
        for what, _, _, n in segments:
            bounds.append((what, start, start + n))
            start += n
        assert scale.shape == (layout.size,)
        weighting = fed.federation.strategy.weighting
        return cls(layout, scale, integral.astype(bool), tuple(bounds), weighting)

    def node_vector(self, parts: Sequence[Part]) -> np.ndarray:
        """(D,) float64: the sum of the :func:`pack` rows of a node's clients."""
        total = np.zeros(self.layout.size, dtype=np.float64)
        for part in parts:
            if not isinstance(part, Uploads | ProtectedUploads):
                raise FedLLMRecError("a client engine emitted a summed upload")
            if isinstance(part, ProtectedUploads) != self.layout.protected:
                raise FedLLMRecError("a node's uploads do not match the round's DP layout")
            total += pack(part, self.layout, self.weighting).sum(0, dtype=np.float64)
        return total

    def encode(self, vector: np.ndarray) -> np.ndarray:
        """``vector / scale``, the node's SecAgg+ input; refuses an entry out of [-1, 1].

        The refusal (which the server sees) names the kind of entry and its public bound,
        neither the entry nor its value.
        """
        scaled = np.asarray(vector, dtype=np.float64) / self.scale
        bad = ~(np.abs(scaled) <= CLIPPING_RANGE)  # NaN is out of range too
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            what = next(what for what, start, stop in self.segments if start <= first < stop)
            raise FedLLMRecError(
                f"{CLIP_REFUSAL} a {what} summed on this node at its public bound "
                f"{float(self.scale[first]):.4g}; raise the SecureSettings bounds"
            )
        return scaled

    def error_bound(self, parties: int, quantization_range: int) -> np.ndarray:
        """(D,) the most SecAgg+'s rounding moves each entry of a sum of ``parties``."""
        step = 2.0 * CLIPPING_RANGE / quantization_range
        return parties * step * self.scale

    def decode(self, total: np.ndarray, parties: int, quantization_range: int) -> np.ndarray:
        """The unmasked sum of scaled vectors back in the vector's units (float64)."""
        vector = np.asarray(total, dtype=np.float64) * self.scale
        exact = self.integral & (self.error_bound(parties, quantization_range) < 0.5)
        vector[exact] = np.round(vector[exact])
        return vector
