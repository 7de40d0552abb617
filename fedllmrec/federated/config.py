"""How a federation runs: a recipe's ``[federated]`` table and its nested tables, checked.

* :class:`LocalConfig` (``[federated.local]``): each client's local steps;
* :class:`StrategyConfig` (``[federated.strategy]``): sampling, dropout, FedProx,
  aggregation and the server optimiser;
* :class:`PrivacyConfig` (``[federated.privacy]``): secure aggregation, client-level
  differential privacy, personality-aware weighting (:mod:`fedllmrec.federated.privacy`);
* :class:`FederationConfig` (``[federated]``): the engine, the partition into clients
  and the tables above.

A value out of range is an :class:`~fedllmrec.errors.OptionError` naming its field, which
the recipe loader reports at its dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal, get_args

from fedllmrec.errors import check_option

AggregatorName = Literal["mean", "median", "trimmed_mean"]
Weighting = Literal["examples", "uniform"]
ServerOptimizerName = Literal["sgd", "adam"]
EngineName = Literal["vmap", "loop", "linear"]
Partition = Literal["user", "domain"]
Sampling = Literal["fixed", "poisson"]
DPMode = Literal["none", "central", "distributed", "local"]
AwareMode = Literal["none", "norm"]
AttributeTables = Literal["shared", "secure_only"]

AGGREGATORS: tuple[str, ...] = get_args(AggregatorName)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
SERVER_OPTIMIZERS: tuple[str, ...] = get_args(ServerOptimizerName)
ENGINES: tuple[str, ...] = get_args(EngineName)
PARTITIONS: tuple[str, ...] = get_args(Partition)
SAMPLINGS: tuple[str, ...] = get_args(Sampling)
DP_MODES: tuple[str, ...] = get_args(DPMode)
AWARE_MODES: tuple[str, ...] = get_args(AwareMode)
ATTRIBUTE_TABLES: tuple[str, ...] = get_args(AttributeTables)


@dataclass
class LocalConfig:
    """How a client trains in a round: ``steps`` optimiser steps from a fresh optimiser.

    Each step uses all the client's windows (``batch_size = 0``, a user client) or
    ``batch_size`` of them drawn afresh (a domain client holding many users).
    ``length_buckets = B`` (0: off) makes a drawn step hold windows of similar length:
    the client's shuffled windows are cut into runs of B steps, each run sorted by
    length, and the steps shuffled; the engine cuts a step's all-padding columns, so
    short windows cost little (Art-Office: a median in-domain window of 6 of 51 items).
    """

    steps: int = 1
    lr: float = 0.1
    optimizer: Literal["adam", "sgd"] = "adam"
    batch_size: int = 0
    length_buckets: int = 0

    def __post_init__(self) -> None:
        check = partial(check_option, "LocalConfig")
        check("steps", self.steps >= 1, ">= 1", self.steps)
        check("lr", self.lr > 0, "> 0", self.lr)
        check("optimizer", self.optimizer in ("adam", "sgd"), "'adam' or 'sgd'", self.optimizer)
        check("batch_size", self.batch_size >= 0, ">= 0", self.batch_size)
        check("length_buckets", self.length_buckets >= 0, ">= 0", self.length_buckets)


@dataclass
class StrategyConfig:
    """Who takes part in a round and how the server combines their uploads."""

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
    # "fixed": round(fraction * N) clients drawn without replacement; "poisson": each client
    # takes part independently with probability ``fraction`` (DP's amplification by sampling).
    sampling: Sampling = "fixed"
    min_clients: int = 1
    drop_rate: float = 0.0  # share of sampled clients that fail mid-round
    proximal_mu: float = 0.0  # FedProx: the client adds mu/2 ||w - w_global||^2

    def __post_init__(self) -> None:
        check = partial(check_option, "StrategyConfig")
        check(
            "aggregator", self.aggregator in AGGREGATORS, f"one of {AGGREGATORS}", self.aggregator
        )
        check("weighting", self.weighting in WEIGHTINGS, f"one of {WEIGHTINGS}", self.weighting)
        # Written as positive tests so NaN fails every range check.
        check("trim_fraction", 0.0 <= self.trim_fraction < 0.5, "in [0, 0.5)", self.trim_fraction)
        check("server_lr", self.server_lr > 0.0, "> 0", self.server_lr)
        check(
            "server_optimizer",
            self.server_optimizer in SERVER_OPTIMIZERS,
            f"one of {SERVER_OPTIMIZERS}",
            self.server_optimizer,
        )
        betas = tuple(self.server_betas)
        ok = len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)
        check("server_betas", ok, "two numbers in [0, 1)", self.server_betas)
        self.server_betas = (float(betas[0]), float(betas[1]))
        check("server_eps", self.server_eps > 0.0, "> 0", self.server_eps)
        check("fraction", 0.0 < self.fraction <= 1.0, "in (0, 1]", self.fraction)
        check("sampling", self.sampling in SAMPLINGS, f"one of {SAMPLINGS}", self.sampling)
        is_int = isinstance(self.min_clients, int) and not isinstance(self.min_clients, bool)
        check("min_clients", is_int, "an int", self.min_clients)
        check("min_clients", self.min_clients >= 1, ">= 1", self.min_clients)
        check("drop_rate", 0.0 <= self.drop_rate < 1.0, "in [0, 1)", self.drop_rate)
        check("proximal_mu", self.proximal_mu >= 0.0, ">= 0", self.proximal_mu)


@dataclass
class PrivacyConfig:
    """What protects the uploads (a recipe's ``[federated.privacy]``; docs/privacy.md).

    Parameters
    ----------
    secure_aggregation : bool
        The server learns only the round's sum of the fixed-shape uploads (every group
        slot, the routing one-hot, weight, examples and loss inside the summed vector).
    dp : {"none", "central", "distributed", "local"}
        Client-level Gaussian DP on each client's whole upload, clipped to ``clip``:
        noise added by the server to the sum ("central"), shared out among the round's
        clients so the secure sum carries it ("distributed", needs secure aggregation),
        or added by every client to its own upload ("local").
    clip : float
        L2 bound C on a client's whole upload (all its tensors as one vector); 0: none.
    noise_multiplier : float
        sigma: the noise std is sigma times the upload's sensitivity.
    delta : float
        The delta at which epsilon is reported.
    epsilon_budget : float
        Stop training before a round would take epsilon past it (0: no budget).
    aware : {"none", "norm"}
        Personality-aware aggregation: each client weighs its own upload by
        ``1 / (1 + |upload| / aware_scale)`` (a large update exposes its client most),
        from its own upload only, so it works under secure aggregation and keeps the
        DP sensitivity.
    aware_scale : float
        The norm at which an upload's weight halves.
    attribute_tables : {"shared", "secure_only"}
        Global tensors whose delta shows a private attribute (MRFF's user-feature tables:
        a user's update touches only its own feature value's row): averaged like any
        global tensor ("shared"), or sent only under secure aggregation and otherwise
        left untrained, their deltas zero ("secure_only").
    """

    secure_aggregation: bool = False
    dp: DPMode = "none"
    clip: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    epsilon_budget: float = 0.0
    aware: AwareMode = "none"
    aware_scale: float = 1.0
    attribute_tables: AttributeTables = "shared"

    def __post_init__(self) -> None:
        check = partial(check_option, "PrivacyConfig")
        check(
            "attribute_tables",
            self.attribute_tables in ATTRIBUTE_TABLES,
            f"one of {ATTRIBUTE_TABLES}",
            self.attribute_tables,
        )
        check("dp", self.dp in DP_MODES, f"one of {DP_MODES}", self.dp)
        check("clip", self.clip >= 0.0, ">= 0", self.clip)
        check("noise_multiplier", self.noise_multiplier >= 0.0, ">= 0", self.noise_multiplier)
        check("delta", 0.0 < self.delta < 1.0, "in (0, 1)", self.delta)
        check("epsilon_budget", self.epsilon_budget >= 0.0, ">= 0", self.epsilon_budget)
        check("aware", self.aware in AWARE_MODES, f"one of {AWARE_MODES}", self.aware)
        check("aware_scale", self.aware_scale > 0.0, "> 0", self.aware_scale)
        if self.dp != "none":
            check("clip", self.clip > 0.0, "> 0 with dp (the sensitivity)", self.clip)
            check(
                "noise_multiplier",
                self.noise_multiplier > 0.0,
                "> 0 with dp",
                self.noise_multiplier,
            )
        if self.dp == "distributed":
            check(
                "secure_aggregation",
                self.secure_aggregation,
                "true with dp = 'distributed' (each noise share alone protects little)",
                self.secure_aggregation,
            )
        if self.epsilon_budget:
            check("epsilon_budget", self.dp != "none", "0 without dp", self.epsilon_budget)

    @property
    def enabled(self) -> bool:
        """Whether any protection is on (the plain seam otherwise)."""
        return (
            self.secure_aggregation
            or self.dp != "none"
            or self.aware != "none"
            or self.attribute_tables != "shared"
        )


@dataclass
class FederationConfig:
    """How the federation runs (a recipe's ``[federated]`` table).

    Parameters
    ----------
    engine : {"vmap", "loop", "linear"}
        How the simulator computes local training (:mod:`fedllmrec.federated.engines`):
        clients batched with ``torch.func.vmap``, the per-client reference loop, or, for
        one local SGD step and mean aggregation, one backward pass of the weighted summed
        losses ("linear", which emits the round's summed upload instead of per-client ones).
    partition : {"user", "domain"}
        Every user a client (MRFF), or every domain a client holding its users'
        in-domain interactions (cross-domain; models without private state).
    local : LocalConfig
        Each client's local steps, learning rate and optimiser.
    strategy : StrategyConfig
        Aggregation, weighting, sampling, dropout and FedProx.
    balance_load : bool
        MRFF: the balance loss uses the previous round's routing shares (none in round 0).
    chunk_windows : int
        Upper bound on padded windows per batched chunk (bounds memory). The ``linear``
        engine counts positions instead: as many short windows as fit in the positions of
        ``chunk_windows`` full ones (its memory does not grow with clients; the
        per-client engines hold a copy of the shared tensors for every client of a chunk).
    max_clients : int
        Use only the first ``max_clients`` clients by user id (0: all); for
        small experiments and tests. Evaluation still covers every user.
    seed : int
        Seeds client sampling, dropout and clients' draws of local windows.
    privacy : PrivacyConfig
        Secure aggregation, client-level DP and personality-aware weighting.
    """

    engine: EngineName = "vmap"
    partition: Partition = "user"
    local: LocalConfig = field(default_factory=LocalConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    balance_load: bool = True
    chunk_windows: int = 128
    max_clients: int = 0
    seed: int = 0
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        check = partial(check_option, "FederationConfig")
        check("engine", self.engine in ENGINES, f"one of {ENGINES}", self.engine)
        local, aggregator = self.local, self.strategy.aggregator
        if self.engine == "linear" and (
            local.optimizer != "sgd" or local.steps != 1 or aggregator != "mean"
        ):
            raise ValueError(
                "FederationConfig.engine 'linear' needs one local SGD step and the 'mean' "
                "aggregator (the mean update is then one gradient of the summed losses), got "
                f"local.optimizer={self.local.optimizer!r}, local.steps={self.local.steps}, "
                f"strategy.aggregator={self.strategy.aggregator!r}"
            )
        check("partition", self.partition in PARTITIONS, f"one of {PARTITIONS}", self.partition)
        check("chunk_windows", self.chunk_windows >= 1, ">= 1", self.chunk_windows)
        check("max_clients", self.max_clients >= 0, ">= 0", self.max_clients)
        self._check_privacy()

    def _check_privacy(self) -> None:
        """Combinations the protections' mathematics does not allow, refused up front."""
        privacy, strategy = self.privacy, self.strategy
        check = partial(check_option, "FederationConfig")
        fused = self.engine == "linear"
        if privacy.dp != "none" or privacy.aware != "none":
            # Clipping, noise shares and the risk weight need each client's own upload.
            check(
                "engine",
                not fused,
                "'vmap' or 'loop' with dp or aware (each client's upload is clipped)",
                self.engine,
            )
        if privacy.enabled:
            check(
                "strategy.aggregator",
                strategy.aggregator == "mean",
                "'mean' with privacy (a secure or noisy sum has no median)",
                strategy.aggregator,
            )
        if privacy.dp != "none":
            check(
                "strategy.weighting",
                strategy.weighting == "uniform",
                "'uniform' with dp (an example-count weight is unbounded)",
                strategy.weighting,
            )
            check(
                "strategy.sampling",
                strategy.sampling == "poisson" or strategy.fraction == 1.0,
                "'poisson' with dp and fraction < 1 (the accountant's sampling)",
                strategy.sampling,
            )
            check(
                "strategy.min_clients",
                strategy.sampling != "poisson" or strategy.min_clients == 1,
                "1 with poisson sampling",
                strategy.min_clients,
            )
        if privacy.dp == "distributed":
            check(
                "strategy.drop_rate",
                strategy.drop_rate == 0.0,
                "0 with distributed dp (a dropped client's noise share is missing)",
                strategy.drop_rate,
            )
