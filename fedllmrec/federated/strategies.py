"""Server-side aggregation shared by the in-process vmap simulator and the Flower ServerApp.

Every function works on *stacked* client uploads: axis 0 is the client axis
``C``, so one call aggregates a whole round whatever produced the uploads
(``torch.func.vmap`` over clients, or Flower ``FitRes`` messages stacked by the
server). Nothing here imports Flower.

Clients upload deltas ``w_local - w_global``; the server combines them with
:func:`aggregate` (FedAvg ``mean``, or the robust ``median`` and
``trimmed_mean``) and moves the global model with :func:`apply_delta`. MRFF's
group FFNs are aggregated group by group over the clients routed to each
group (:func:`aggregate_groups`), and :func:`routing_load` turns a round's
routing into the balance loss's load term for the next round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch.nn import functional as F

AggregatorName = Literal["mean", "median", "trimmed_mean"]
Weighting = Literal["examples", "uniform"]
ServerOptimizerName = Literal["sgd", "adam"]

AGGREGATORS: tuple[str, ...] = get_args(AggregatorName)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
SERVER_OPTIMIZERS: tuple[str, ...] = get_args(ServerOptimizerName)


@dataclass
class StrategyConfig:
    """How the server combines client deltas."""

    aggregator: AggregatorName = "mean"
    # FedAvg weights clients by examples; MRFF's released code averages unweighted.
    weighting: Weighting = "examples"
    trim_fraction: float = 0.1  # per side, for trimmed_mean
    server_lr: float = 1.0  # sgd: new = old + server_lr * aggregated delta; adam: Adam's lr
    # FedOpt (fedopt.py): "adam" is FedAdam, Adam on the pseudo-gradient -delta.
    server_optimizer: ServerOptimizerName = "sgd"
    server_betas: tuple[float, float] = (0.9, 0.999)
    server_eps: float = 1e-8
    fraction: float = 1.0  # share of clients sampled per round
    min_clients: int = 1
    drop_rate: float = 0.0  # share of sampled clients that fail mid-round
    proximal_mu: float = 0.0  # FedProx: the client adds mu/2 ||w - w_global||^2

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            _bad("aggregator", self.aggregator, f"one of {AGGREGATORS}")
        if self.weighting not in WEIGHTINGS:
            _bad("weighting", self.weighting, f"one of {WEIGHTINGS}")
        # Written as `not (...)` so NaN fails every range check.
        if not 0.0 <= self.trim_fraction < 0.5:
            _bad("trim_fraction", self.trim_fraction, "in [0, 0.5)")
        if not self.server_lr > 0.0:
            _bad("server_lr", self.server_lr, "> 0")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            _bad("server_optimizer", self.server_optimizer, f"one of {SERVER_OPTIMIZERS}")
        betas = tuple(self.server_betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            _bad("server_betas", self.server_betas, "two numbers in [0, 1)")
        self.server_betas = (float(betas[0]), float(betas[1]))
        if not self.server_eps > 0.0:
            _bad("server_eps", self.server_eps, "> 0")
        if not 0.0 < self.fraction <= 1.0:
            _bad("fraction", self.fraction, "in (0, 1]")
        if isinstance(self.min_clients, bool) or not isinstance(self.min_clients, int):
            _bad("min_clients", self.min_clients, "an int")
        if self.min_clients < 1:
            _bad("min_clients", self.min_clients, ">= 1")
        if not 0.0 <= self.drop_rate < 1.0:
            _bad("drop_rate", self.drop_rate, "in [0, 1)")
        if not self.proximal_mu >= 0.0:
            _bad("proximal_mu", self.proximal_mu, ">= 0")


def _bad(name: str, value: object, expected: str) -> None:
    raise ValueError(f"StrategyConfig.{name} must be {expected}, got {value!r}")


def client_weights(n_examples: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """Per-client aggregation weights.

    Parameters
    ----------
    n_examples : torch.Tensor
        (C,) number of training examples each client used.
    weighting : {"examples", "uniform"}
        Proportional to ``n_examples`` (FedAvg), or ``1 / C``.

    Returns
    -------
    torch.Tensor
        (C,) float64 weights summing to 1; under "examples" a client with no
        examples gets weight 0.
    """
    if n_examples.ndim != 1 or n_examples.numel() == 0:
        raise ValueError(
            f"n_examples must be a non-empty (C,) tensor, got {tuple(n_examples.shape)}"
        )
    counts = n_examples.to(torch.float64)
    if (counts < 0).any():
        raise ValueError(f"n_examples must be >= 0, got {n_examples.tolist()}")
    if weighting == "uniform":
        return torch.full_like(counts, 1.0 / counts.numel())
    if weighting != "examples":
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("every client has 0 examples: 'examples' weighting is undefined")
    return counts / total


def aggregate(deltas: torch.Tensor, weights: torch.Tensor, config: StrategyConfig) -> torch.Tensor:
    """Combine stacked client deltas into one.

    Parameters
    ----------
    deltas : torch.Tensor
        (C, *shape) one delta per client.
    weights : torch.Tensor
        (C,) client weights; normalised here and used by "mean" only (the
        robust aggregators are unweighted).
    config : StrategyConfig
        ``aggregator`` and, for "trimmed_mean", ``trim_fraction``.

    Returns
    -------
    torch.Tensor
        (*shape) aggregated delta, in the dtype of ``deltas``.
    """
    if deltas.ndim < 1 or deltas.shape[0] == 0:
        raise ValueError(f"deltas must be (C, ...) with C >= 1, got {tuple(deltas.shape)}")
    n_clients = deltas.shape[0]
    if weights.shape != (n_clients,):
        raise ValueError(f"weights must be ({n_clients},), got {tuple(weights.shape)}")

    if config.aggregator == "mean":
        w = weights.to(device=deltas.device, dtype=torch.float64)
        total = w.sum()
        if total <= 0:
            raise ValueError(f"weights must have a positive sum, got {weights.tolist()}")
        # float64 so many small weighted deltas do not lose the low bits of each other.
        out = torch.tensordot(w / total, deltas.to(torch.float64), dims=1)  # (*shape)
        return out.to(deltas.dtype)

    ordered = deltas.sort(dim=0).values  # (C, *shape), per coordinate
    if config.aggregator == "median":
        mid = n_clients // 2
        if n_clients % 2:
            return ordered[mid].clone()
        # torch.median returns the lower middle value; the textbook median averages both.
        pair = ordered[mid - 1 : mid + 1].to(torch.float64)  # (2, *shape)
        return pair.mean(dim=0).to(deltas.dtype)
    if config.aggregator == "trimmed_mean":
        cut = int(config.trim_fraction * n_clients)  # floor; trim_fraction < 0.5 keeps >= 1
        kept = ordered[cut : n_clients - cut].to(torch.float64)  # (C - 2 cut, *shape)
        return kept.mean(dim=0).to(deltas.dtype)
    raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {config.aggregator!r}")


def aggregate_groups(
    deltas: torch.Tensor, routed: torch.Tensor, weights: torch.Tensor, config: StrategyConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate MRFF's group parameters group by group.

    Parameters
    ----------
    deltas : torch.Tensor
        (C, K, *shape) each client's delta of every group (zeros where not routed).
    routed : torch.Tensor
        (C, K) bool: which group slices each client trained and uploaded.
    weights : torch.Tensor
        (C,) client weights, renormalised over each group's routed clients.
    config : StrategyConfig
        The aggregator, as in :func:`aggregate`.

    Returns
    -------
    tuple of torch.Tensor
        (K, *shape) aggregated deltas and (K,) bool ``updated``. A group with no
        routed client (or, under "mean", only zero-weight ones) gets a zero delta
        and ``updated`` False, so it stays as it was.
    """
    if deltas.ndim < 2:
        raise ValueError(f"deltas must be (C, K, ...), got {tuple(deltas.shape)}")
    n_clients, n_groups = deltas.shape[:2]
    if routed.shape != (n_clients, n_groups):
        raise ValueError(f"routed must be ({n_clients}, {n_groups}), got {tuple(routed.shape)}")
    if weights.shape != (n_clients,):
        raise ValueError(f"weights must be ({n_clients},), got {tuple(weights.shape)}")

    routed = routed.to(device=deltas.device, dtype=torch.bool)
    weights = weights.to(deltas.device)
    out = torch.zeros(deltas.shape[1:], dtype=deltas.dtype, device=deltas.device)  # (K, *shape)
    updated = torch.zeros(n_groups, dtype=torch.bool, device=deltas.device)  # (K,)
    # K is small (a handful of groups) and each group has its own client subset,
    # so a loop is clearer than padding subsets to a common size.
    for k in range(n_groups):
        members = routed[:, k]  # (C,)
        if not members.any():
            continue
        group_weights = weights[members]  # (C_k,)
        if config.aggregator == "mean" and not group_weights.sum() > 0:
            continue
        out[k] = aggregate(deltas[members, k], group_weights, config)
        updated[k] = True
    return out, updated


def apply_delta(param: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
    """Return ``param + server_lr * delta`` as a new tensor in ``param``'s dtype."""
    if param.shape != delta.shape:
        # Broadcasting here would silently corrupt the global model.
        raise ValueError(f"delta shape {tuple(delta.shape)} != param shape {tuple(param.shape)}")
    return param + server_lr * delta.to(param.dtype)


def proximal_term(
    params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's proximal penalty ``mu/2 * sum_n ||params[n] - anchor[n]||^2``.

    Works under ``torch.func.vmap`` with per-client ``params`` and an unbatched
    ``anchor`` (the global model): broadcasting does the rest.

    Parameters
    ----------
    params : Mapping[str, torch.Tensor]
        The client's trainable parameters.
    anchor : Mapping[str, torch.Tensor]
        The round's global parameters, same names; no gradient flows into them.
    mu : float
        Proximal strength; 0 gives a zero scalar.

    Returns
    -------
    torch.Tensor
        Scalar penalty.
    """
    if params.keys() != anchor.keys():
        missing = sorted(set(params) ^ set(anchor))
        raise KeyError(f"params and anchor names differ: {missing}")
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    first = next(iter(params.values()), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    device = first.device if first is not None else None
    if mu == 0 or first is None:
        return torch.zeros((), dtype=dtype, device=device)
    total = torch.zeros((), dtype=dtype, device=device)
    for name, value in params.items():
        total = total + (value - anchor[name].detach()).pow(2).sum()
    return 0.5 * mu * total


def sample_clients(
    clients: np.ndarray, fraction: float, min_clients: int, rng: np.random.Generator
) -> np.ndarray:
    """Sample this round's participants without replacement.

    Parameters
    ----------
    clients : np.ndarray
        (N,) distinct client ids available this round.
    fraction, min_clients : float, int
        Sample ``max(min_clients, round(fraction * N))`` clients, capped at N.
    rng : np.random.Generator
        Consumed only when there is a choice to make, so a run with everyone
        participating leaves the generator untouched.

    Returns
    -------
    np.ndarray
        Sorted sampled ids.
    """
    clients = np.asarray(clients)
    if clients.ndim != 1 or clients.size == 0:
        raise ValueError(f"clients must be a non-empty 1-D array, got shape {clients.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if min_clients < 1:
        raise ValueError(f"min_clients must be >= 1, got {min_clients!r}")
    if np.unique(clients).size != clients.size:
        raise ValueError("clients must be distinct ids")
    n = min(clients.size, max(min_clients, round(fraction * clients.size)))
    if n == clients.size:
        return np.sort(clients)
    return np.sort(rng.choice(clients, size=n, replace=False))


def drop_clients(
    participants: np.ndarray, drop_rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate clients failing mid-round.

    Each participant fails independently with probability ``drop_rate``; if all
    would fail, the first participant survives so the round still has an update.
    ``drop_rate == 0`` consumes no randomness.

    Returns
    -------
    tuple of np.ndarray
        ``(survivors, dropped)``, each sorted; together they partition
        ``participants``.
    """
    participants = np.asarray(participants)
    if participants.ndim != 1 or participants.size == 0:
        raise ValueError(f"participants must be a non-empty 1-D array, got {participants.shape}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    if drop_rate == 0:
        return np.sort(participants), participants[:0].copy()
    fails = rng.random(participants.size) < drop_rate  # (P,)
    if fails.all():
        fails[0] = False
    return np.sort(participants[~fails]), np.sort(participants[fails])


def routing_load(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Share of participants routed to each group at each layer.

    Parameters
    ----------
    groups : torch.Tensor
        (C, L) int: each participant's chosen group at each layer.
    n_groups : int
        K.

    Returns
    -------
    torch.Tensor
        (L, K) float32, rows summing to 1: MRFF's balance-loss load term for
        the next round (see :func:`fedllmrec.models.mrff.balance_loss`).
    """
    if groups.ndim != 2 or groups.shape[0] == 0:
        raise ValueError(f"groups must be (C, L) with C >= 1, got {tuple(groups.shape)}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups!r}")
    if groups.is_floating_point() or groups.dtype == torch.bool:
        raise ValueError(f"groups must be integer group ids, got dtype {groups.dtype}")
    if groups.min() < 0 or groups.max() >= n_groups:
        raise ValueError(f"group ids must be in [0, {n_groups}), got {groups.unique().tolist()}")
    counts = F.one_hot(groups.long(), n_groups).sum(dim=0)  # (L, K)
    return counts.to(torch.float32) / groups.shape[0]
