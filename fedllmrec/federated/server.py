"""The server side every federation shares: the upload seam, aggregation, DP, records.

:class:`FederationServer` is a mixin of the simulators (:class:`~fedllmrec.federated.
simulator.FederatedRecommender` for the sequential models, :class:`~fedllmrec.federated.
adapters.FederatedLLM` for the LLM's adapters): whatever a client trains, its upload
passes the same seam (:meth:`FederationServer.open_seam`: withheld tensors, transforms,
the client's protections, the secure sum) into the same aggregator, the same DP release
and accounting, and the same round records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.aggregation import RoundAggregator
from fedllmrec.federated.config import FederationConfig
from fedllmrec.federated.ownership import Owner, Ownership
from fedllmrec.federated.privacy import Accountant, ClientPrivacy, DPRelease, SecureSum
from fedllmrec.federated.round import RoundPlan, ServerState, finish_round, plan_round
from fedllmrec.federated.uploads import (
    Part,
    Uploads,
    UploadSum,
    UploadTransform,
    download_bytes,
    transform_uploads,
    upload_bytes,
)


class FederationServer:
    """Seam, aggregation, DP and records over a federation's ownership and server state.

    A subclass provides ``federation``, ``transforms``, ``n_clients`` and
    ``shared_tensors()``, sets ``_ownership`` and ``_server`` and calls
    :meth:`setup_privacy` in its setup.

    The node hooks (:meth:`node_training`, :meth:`upload_chunks`, :meth:`private_rows`,
    :meth:`write_private_rows`, :meth:`client_examples`, :attr:`clients`) are what a
    real engine (the Flower apps) needs of any federation: a node trains its clients
    and keeps their private state, the server orders the uploads it receives as the
    simulator sums them.
    """

    federation: FederationConfig
    transforms: Sequence[UploadTransform]
    # Set by setup_privacy(); the defaults make "call setup() first" the error before it.
    _release: DPRelease | None = None
    _client_privacy: ClientPrivacy | None = None
    _withheld: tuple[str, ...] = ()

    unit: ClassVar[str] = "round"  # the trainer's logs and curve call a train_epoch() a round
    _ownership: Ownership | None = None
    _server: ServerState | None = None

    def train_round(self) -> float:
        """One federated round; returns the participants' example-weighted local loss."""
        raise NotImplementedError

    def train_epoch(self) -> float:
        """The trainer's unit of training: one round (:meth:`train_round`)."""
        return self.train_round()

    @property
    def ownership(self) -> Ownership:
        """Owners of every tensor of the federated model."""
        if self._ownership is None:
            raise RuntimeError("call setup() first")
        return self._ownership

    @property
    def server(self) -> ServerState:
        """What the server keeps across rounds: optimiser, routing load, generator, records."""
        if self._server is None:
            raise RuntimeError("call setup() first")
        return self._server

    @property
    def losses(self) -> list[float]:
        """Each round's participants' example-weighted local loss (none before setup)."""
        return self._server.losses if self._server is not None else []

    @property
    def n_clients(self) -> int:
        """How many clients the federation has."""
        raise NotImplementedError

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """The live global and group tensors: what the server holds and sends."""
        raise NotImplementedError

    # ------------------------------------------------------------------ node hooks

    @property
    def clients(self) -> np.ndarray:
        """The clients' ids (users or domains), by position."""
        raise NotImplementedError

    def client_examples(self) -> np.ndarray:
        """(n_clients,) each client's training examples (its upload weight's unit)."""
        raise NotImplementedError

    def node_training(
        self,
        positions: np.ndarray,
        round_: int,
        sent: Mapping[str, torch.Tensor],
        load: torch.Tensor,
        emit: Callable[[Part], None],
        cohort: int | None = None,
        secure: bool | None = None,
    ) -> None:
        """A node's local training of the clients at ``positions``, as real clients run it:
        each client's own upload through the seam (``emit`` gets ``Uploads`` of single
        clients, or one sum under ``secure``); ``load`` is the routing load sent."""
        raise NotImplementedError

    def upload_chunks(self, positions: np.ndarray, round_: int) -> Iterator[np.ndarray]:
        """The received uploads of ``positions`` in the groups and order the simulator adds
        them to the aggregator (so float sums run in its order)."""
        raise NotImplementedError

    def private_rows(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """Copies of the trainable private state (C, ...) of the clients at ``positions``."""
        raise NotImplementedError

    def write_private_rows(self, positions: np.ndarray, rows: Mapping[str, torch.Tensor]) -> None:
        """Set the trainable private state (C, ...) of the clients at ``positions``."""
        raise NotImplementedError

    @property
    def predicts_clicks(self) -> bool:
        """Whether the model predicts held-out click probabilities (the Flower evaluation)."""
        return False

    def check_shared(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Refuse received shared tensors whose names are not exactly the model's."""
        live = self.shared_tensors()
        if tensors.keys() != live.keys():
            raise FedLLMRecError(
                f"shared tensors differ from the model's: {sorted(set(tensors) ^ set(live))}"
            )

    def load_shared(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the live shared tensors (a node receiving the server's model)."""
        self.check_shared(tensors)
        live = self.shared_tensors()
        with torch.no_grad():
            for name, value in tensors.items():
                live[name].copy_(value)

    def plan_round(self) -> RoundPlan:
        """Sample and drop this round's clients; snapshot the tensors they are sent."""
        return plan_round(
            self.server, self.n_clients, self.federation.strategy, self.shared_tensors()
        )

    def setup_privacy(self, withheld: Sequence[str] = ()) -> None:
        """The server's DP release and the clients' protections from ``federation.privacy``;
        ``withheld``: shared tensors whose deltas are zeroed before the seam."""
        privacy = self.federation.privacy
        if privacy.enabled and self.transforms:
            raise FedLLMRecError(
                "upload transforms run before the privacy seam; combine them in one place"
            )
        self._release = None
        if privacy.dp != "none":
            self._release = DPRelease(
                privacy, self.ownership, self.expected_clients, self.federation.seed
            )
        self._client_privacy = ClientPrivacy(privacy, self._release, self.federation.seed)
        self._withheld = tuple(withheld)

    @property
    def withheld(self) -> tuple[str, ...]:
        """Shared tensors whose deltas are zeroed: attribute tables outside a secure sum."""
        return self._withheld

    def open_seam(
        self, round_: int, cohort: int, emit: Callable[[Part], None], secure: bool | None = None
    ) -> tuple[Callable[[Uploads | UploadSum], None], Callable[[], None]]:
        """The seam of one round's local training on one node: ``(add, close)``.

        ``add`` passes a part of the uploads through the withheld tensors, the upload
        transforms and the client's protections (risk weight, clipping, DP noise), then
        emits it or, under secure aggregation, adds it to the secure sum, which ``close``
        emits once (the protocol's output). ``cohort``: the round's participants
        (distributed DP's noise share); ``secure`` overrides the configured secure sum.
        """
        protect = self._client_privacy
        if protect is None:
            raise RuntimeError("call setup() first")
        secure = self.federation.privacy.secure_aggregation if secure is None else secure
        summed = SecureSum(self.ownership, self.federation.strategy.weighting) if secure else None

        def add(part: Uploads | UploadSum) -> None:
            part = withhold(part, self._withheld)
            out: Part = transform_uploads(part, self.transforms, round_)
            if isinstance(out, Uploads):
                out = protect(out, round_, cohort)
            if summed is not None:
                summed.add(out)
            else:
                emit(out)

        def close() -> None:
            if summed is not None and (total := summed.result()) is not None:
                emit(total)

        return add, close

    @property
    def expected_clients(self) -> float:
        """Expected uploads per round: the DP mean's fixed denominator."""
        strategy = self.federation.strategy
        n = self.n_clients
        sampled = strategy.fraction * n
        if strategy.sampling == "fixed":
            sampled = min(n, max(strategy.min_clients, round(strategy.fraction * n)))
        return sampled * (1.0 - strategy.drop_rate)

    def new_aggregator(self, round_: int) -> RoundAggregator:
        """The server's aggregator for round ``round_`` (with the DP mechanism, if on)."""
        return RoundAggregator(self.ownership, self.federation.strategy, self._release, round_)

    def finish_round(
        self, plan: RoundPlan, aggregator: RoundAggregator, extra: Mapping[str, Any] | None = None
    ) -> float:
        """Aggregate the round's uploads into the live model; keep load and records."""
        loss = finish_round(
            self.server,
            plan,
            aggregator,
            self.shared_tensors(),
            self.ownership,
            self.federation,
            extra,
        )
        if self.accountant is not None:
            self.server.records[-1]["epsilon"] = self.epsilon()
        return loss

    # ------------------------------------------------------------------ privacy

    @property
    def release(self) -> DPRelease | None:
        """The server's DP mechanism (header code, noise scale); None without DP."""
        return self._release

    @property
    def accountant(self) -> Accountant | None:
        """The DP accountant of this federation (None without DP)."""
        privacy, strategy = self.federation.privacy, self.federation.strategy
        if privacy.dp == "none":
            return None
        return Accountant(
            privacy.noise_multiplier, strategy.fraction, privacy.delta, local=privacy.dp == "local"
        )

    def epsilon(self, rounds: int | None = None) -> float:
        """Epsilon at the configured delta after ``rounds`` (default: those run so far).

        Local DP reports the worst client's (its participations); infinite without DP.
        """
        accountant = self.accountant
        if accountant is None:
            return float("inf")
        server = self.server
        if rounds is None:
            rounds = (
                int(server.participations.max(initial=0))
                if accountant.local
                else len(server.records)
            )
        return accountant.epsilon(rounds)

    def budget_spent(self) -> bool:
        """Whether one more round would take epsilon past ``privacy.epsilon_budget``."""
        budget = self.federation.privacy.epsilon_budget
        if not budget or self.accountant is None:
            return False
        if self.accountant.local:
            # Worst case: the most frequent client takes part in the next round too.
            rounds = int(self.server.participations.max(initial=0)) + 1
        else:
            rounds = len(self.server.records) + 1
        return self.epsilon(rounds) > budget

    # ------------------------------------------------------------------ records

    def epoch_info(self) -> dict[str, Any]:
        """The latest round's participation and traffic (a row of metrics.json's history)."""
        records = self.server.records
        return dict(records[-1]) if records else {}

    def run_info(self) -> dict[str, Any]:
        """Totals for metrics.json: participation, traffic, parameter owners."""
        own, records = self.ownership, self.server.records
        full = 4 * own.numel(Owner.GLOBAL, Owner.GROUP, Owner.PRIVATE)
        return {
            "federated": {
                "clients": self.n_clients,
                "rounds": len(records),
                "dropped_total": sum(r["dropped"] for r in records),
                "bytes_up_total": sum(r["bytes_up"] for r in records),
                "bytes_down_total": sum(r["bytes_down"] for r in records),
                "upload_bytes_per_client": upload_bytes(own),
                "download_bytes_per_client": download_bytes(own),
                "full_model_bytes": full,
                "scalars_by_owner": own.summary(),
            },
            "privacy": self.privacy_info(),
        }

    def privacy_info(self) -> dict[str, Any]:
        """The run's protections and its epsilon at delta (metrics.json's ``privacy``)."""
        privacy = self.federation.privacy
        info: dict[str, Any] = {
            "secure_aggregation": privacy.secure_aggregation,
            "dp": privacy.dp,
            "aware": privacy.aware,
        }
        accountant, release = self.accountant, self._release
        if accountant is not None and release is not None:
            info |= {
                "clip": privacy.clip,
                "noise_multiplier": privacy.noise_multiplier,
                "sensitivity": release.sensitivity,
                "noise_std": release.std,
                "expected_clients": release.expected_clients,
                "sampling": accountant.sampling,
                "delta": privacy.delta,
                "epsilon": self.epsilon(),
                "epsilon_budget": privacy.epsilon_budget,
                "budget_spent": self.budget_spent(),
            }
        return info


def withhold(part: Uploads | UploadSum, names: Sequence[str]) -> Uploads | UploadSum:
    """``part`` with the deltas of ``names`` zeroed: they carry nothing, the tensors stay."""
    if not names:
        return part
    if isinstance(part, UploadSum):
        sums = {n: torch.zeros_like(v) if n in names else v for n, v in part.sums.items()}
        return replace(part, sums=sums)
    deltas = {n: torch.zeros_like(v) if n in names else v for n, v in part.deltas.items()}
    return replace(part, deltas=deltas)
