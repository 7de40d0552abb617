"""The server's view of a federation, rebuilt by replaying its rounds.

:func:`replay_server_view` runs rounds 1..R of a freshly set-up
:class:`~fedllmrec.federated.simulator.FederatedRecommender` exactly as its server
would receive them (plan, local training on the per-client engine, every upload
through the seam, aggregate, finish) and keeps, for each client, compact features
of what arrived, never the uploads themselves:

* per shared tensor, the L2 norm of each row of the client's delta (the item table
  gives an (n_items + 1,) vector per client; a 1-D tensor its absolute values);
* its header: the routing one-hot per layer and ``log1p`` of the example count of a
  plain upload, or the bounded header vector of a DP-protected one;
* per text adaptor (a shared weight that multiplies frozen item text vectors, given as
  ``projections``), the norm of each item's gradient column estimated from its delta
  (:func:`projected_norms`), under ``"<name> @ text"``: an (n_items + 1,) vector per
  client, like an item table's.

A part that is a sum (:class:`~fedllmrec.federated.uploads.UploadSum` under secure
aggregation, a DP :class:`~fedllmrec.federated.uploads.ProtectedSum`) tells the server
nothing per client: each of its participants is given the round's aggregate, the
same for all. A client absent from a round contributes nothing to it.

The fused ``linear`` engine is a simulator shortcut that never forms a client's
upload, so the replay always trains on the per-client engine a real client runs
(``fed.client_engine()``): the same mathematics, each upload as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedllmrec.federated.engines import Engine
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import Part, ProtectedSum, ProtectedUploads, Uploads, UploadSum
from fedllmrec.models.items import ItemEmbedding


def item_projector(text: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """(rows, text_dim) text -> (text_dim, rows) ``(V^T V + ridge I)^{-1} V^T``, float64.

    An adaptor's gradient is ``G V^T``: per-item gradient sums ``G`` (D, rows) times the
    known text vectors ``V``. ``delta @ projector`` is the least-squares estimate of
    ``G`` (item text vectors are correlated, so whitening separates them). It depends on
    the text only: computed once per adaptor, applied to every upload.
    """
    text = text.double()
    gram = text.T @ text
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram, text.T)


def projected_norms(delta: torch.Tensor, projector: torch.Tensor) -> torch.Tensor:
    """(C, D, text_dim) adaptor deltas -> (C, rows) per-item scores: the norm of each
    item's estimated gradient column (``projector`` from :func:`item_projector`)."""
    return torch.linalg.vector_norm(delta.double() @ projector, dim=1).float()


def row_norms(delta: torch.Tensor) -> torch.Tensor:
    """(C, *shape) deltas -> (C, rows): the L2 norm over the last axis, flattened.

    A 1-D tensor (C, n) gives its absolute values; an item table (C, I + 1, D) one
    norm per item row; a group tensor (C, K, a, b) one per (group, row).
    """
    if delta.dim() <= 2:
        return delta.abs().reshape(delta.shape[0], -1).float()
    return torch.linalg.vector_norm(delta.float(), dim=-1).reshape(delta.shape[0], -1)


@dataclass
class ServerView:
    """Per-client features of what the server received over ``rounds`` rounds.

    Rows are the clients at :attr:`positions` (population positions), in that order.
    ``first_*`` hold round 1 (zeros where the client was absent), ``total_*`` the sum
    over every replayed round. ``first_aggregate`` holds each tensor's row norms of the
    round-1 sum of all uploads (user-independent: what secure aggregation reveals),
    ``total_aggregate`` those norms summed over the rounds.
    """

    positions: np.ndarray  # (n,)
    rounds: int
    first_norms: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n, rows)
    total_norms: dict[str, np.ndarray] = field(default_factory=dict)
    first_header: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (n, h)
    total_header: dict[str, np.ndarray] = field(default_factory=dict)
    first_aggregate: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (rows,)
    total_aggregate: dict[str, np.ndarray] = field(default_factory=dict)
    present: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # (n, R)
    per_client: list[bool] = field(default_factory=list)  # per round: per-client uploads seen

    def norms(self, which: str = "first") -> dict[str, np.ndarray]:
        """Row norms of round 1 (``"first"``) or summed over the rounds (``"total"``)."""
        return self.first_norms if which == "first" else self.total_norms

    def aggregate(self, which: str = "first") -> dict[str, np.ndarray]:
        """Row norms of the round-1 sum of uploads (``"first"``) or summed over rounds."""
        return self.first_aggregate if which == "first" else self.total_aggregate

    def header(self, which: str = "first") -> dict[str, np.ndarray]:
        """Header features of round 1 (``"first"``) or summed over the rounds (``"total"``)."""
        return self.first_header if which == "first" else self.total_header

    def features(self, which: str = "first") -> np.ndarray:
        """Everything the server saw of each client as one (n, d) float32 matrix."""
        parts = [*self.norms(which).values(), *self.header(which).values()]
        return np.concatenate(parts, axis=1).astype(np.float32)


class _Observer:
    """Reduces one round's parts to per-client features as they arrive (see the module)."""

    def __init__(
        self,
        view: ServerView,
        n_clients: int,
        routing_shape: tuple[int, int],
        projectors: Mapping[str, torch.Tensor],
    ) -> None:
        self.view, self.routing_shape, self.projectors = view, routing_shape, projectors
        # population position -> row of the view (-1: not attacked, not kept)
        self.row = np.full(n_clients, -1, dtype=np.int64)
        self.row[view.positions] = np.arange(view.positions.shape[0])
        self.norms: dict[str, np.ndarray] = {}
        self.header: dict[str, np.ndarray] = {}
        self.summed: dict[str, torch.Tensor] = {}  # the round's sum of every delta
        self.sum_positions: list[np.ndarray] = []  # participants seen only inside a sum
        self.present = np.zeros(view.positions.shape[0], bool)
        self.per_client = False
        self.aggregate: dict[str, np.ndarray] = {}

    def __call__(self, part: Part) -> None:
        if isinstance(part, UploadSum | ProtectedSum):
            for name, value in part.sums.items():
                self._add_sum(name, value.detach())
            self.sum_positions.append(np.asarray(part.positions))
            return
        self.per_client = True
        rows = self.row[np.asarray(part.positions)]
        kept = torch.from_numpy(np.flatnonzero(rows >= 0))
        rows = rows[rows >= 0]
        self.present[rows] = True
        for name, delta in part.deltas.items():
            self._add_sum(name, delta.detach().sum(0))
            if rows.size:
                self._put(self.norms, name, rows, row_norms(delta.detach()[kept]).numpy())
                if name in self.projectors:
                    scores = projected_norms(delta.detach()[kept], self.projectors[name])
                    self._put(self.norms, f"{name} @ text", rows, scores.numpy())
        if rows.size:
            for kind, values in _header(part, self.routing_shape).items():
                self._put(self.header, kind, rows, values[kept.numpy()])

    def _add_sum(self, name: str, value: torch.Tensor) -> None:
        self.summed[name] = self.summed[name] + value if name in self.summed else value.clone()

    def _put(
        self, table: dict[str, np.ndarray], key: str, rows: np.ndarray, values: np.ndarray
    ) -> None:
        if key not in table:
            table[key] = np.zeros((self.view.positions.shape[0], values.shape[1]), np.float32)
        table[key][rows] = values

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """The round's norms and headers per kept client, and which kept clients took part."""
        aggregate = {name: row_norms(value[None])[0].numpy() for name, value in self.summed.items()}
        for name, projector in self.projectors.items():
            if name in self.summed:
                summed = self.summed[name][None]
                aggregate[f"{name} @ text"] = projected_norms(summed, projector)[0].numpy()
        present = self.present
        if self.sum_positions:
            # A sum hides every client's own upload: its participants all see the aggregate.
            rows = self.row[np.concatenate(self.sum_positions)]
            rows = rows[rows >= 0]
            present[rows] = True
            for name, norms in aggregate.items():
                self._put(self.norms, name, rows, np.broadcast_to(norms, (rows.size, norms.size)))
        self.aggregate = aggregate
        return self.norms, self.header, present


def _header(
    part: Uploads | ProtectedUploads, routing_shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Per-client header features of a part that shows each client."""
    if isinstance(part, ProtectedUploads):
        return {"header": part.header.detach().float().numpy()}
    n_layers, n_groups = routing_shape
    out = {"examples": np.log1p(part.n_examples.double().numpy())[:, None].astype(np.float32)}
    if n_layers:
        one_hot = torch.nn.functional.one_hot(part.routing.long(), n_groups)  # (C, L, K)
        out["routing"] = one_hot.reshape(len(part), -1).float().numpy()
    return out


def replay_server_view(
    fed: FederatedRecommender,
    rounds: int,
    positions: np.ndarray | None = None,
    projections: Mapping[str, torch.Tensor] | None = None,
) -> ServerView:
    """Replay rounds 1..``rounds`` of a fresh ``fed`` and keep what its server saw.

    Parameters
    ----------
    fed : FederatedRecommender
        Set up and untrained (``recipe.build_federation(prepared)``); it is trained
        by the replay, as its server would train it.
    rounds : int
        Rounds to replay (>= 1).
    positions : np.ndarray, optional
        Population positions of the clients whose features are kept (default all);
        every client still trains, so the aggregates are the federation's own.
    projections : mapping, optional
        Text adaptors (:func:`text_adaptors`): shared weight name -> the frozen text
        matrix (n_items + 1, text_dim) it multiplies; their deltas are also kept as
        per-item scores (``"<name> @ text"``).

    Returns
    -------
    ServerView
        Per-client features of round 1 and summed over the rounds.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds!r}")
    n_clients = len(fed.population)
    keep = np.arange(n_clients) if positions is None else np.asarray(positions, dtype=np.int64)
    view = ServerView(keep, rounds, present=np.zeros((keep.shape[0], rounds), bool))
    engine = fed.client_engine()
    routing_shape = tuple(fed.server.load.shape)
    projectors = {name: item_projector(text) for name, text in (projections or {}).items()}
    for r in range(rounds):
        shape = (int(routing_shape[0]), int(routing_shape[1]))
        observer = _Observer(view, n_clients, shape, projectors)
        _replay_round(fed, engine, observer)
        norms, header, present = observer.finish()
        view.present[:, r] = present
        view.per_client.append(observer.per_client)
        if r == 0:
            view.first_norms = {k: v.copy() for k, v in norms.items()}
            view.first_header = {k: v.copy() for k, v in header.items()}
            view.first_aggregate = {k: v.copy() for k, v in observer.aggregate.items()}
        _accumulate(view.total_norms, norms)
        _accumulate(view.total_header, header)
        _accumulate(view.total_aggregate, observer.aggregate)
    return view


def _replay_round(fed: FederatedRecommender, engine: Engine, observer: _Observer) -> None:
    """One round as the simulator runs it, every part observed before it is aggregated."""
    plan = fed.plan_round()
    aggregator = fed.new_aggregator(plan.number)

    def emit(part: Part) -> None:
        observer(part)
        aggregator.add(part)

    fed.local_training(
        plan.survivors, plan.number, plan.sent, plan.load, emit, engine=engine,
        cohort=len(plan.participants),
    )  # fmt: skip
    fed.finish_round(plan, aggregator)


def _accumulate(total: dict[str, np.ndarray], part: Mapping[str, np.ndarray]) -> None:
    for key, value in part.items():
        total[key] = total[key] + value if key in total else value.copy()


def text_adaptors(fed: FederatedRecommender) -> dict[str, torch.Tensor]:
    """Shared text-adaptor weights: name -> the frozen text matrix (n_items + 1, text_dim)
    each multiplies (an :class:`~fedllmrec.models.items.ItemEmbedding` with a text part)."""
    shared = fed.shared_tensors()
    out: dict[str, torch.Tensor] = {}
    for prefix, module in fed.net.named_modules():
        weight = module.text_weight if isinstance(module, ItemEmbedding) else None
        if weight is not None and f"{prefix}.{weight[0]}" in shared:
            out[f"{prefix}.{weight[0]}"] = weight[1].detach()
    return out


def item_tables(fed: FederatedRecommender) -> list[str]:
    """Shared tensors with one row per item (+ the padding row 0): the item tables."""
    split = fed.recommender.split
    assert split is not None
    n_rows = split.dataset.n_items + 1
    shared = fed.shared_tensors()
    return [name for name, t in shared.items() if t.dim() == 2 and t.shape[0] == n_rows]
