"""The ServerApp: the federation's server, running :mod:`fedllmrec.federated.round`'s rounds.

The ServerApp reads a recipe (``recipe`` plus ``set`` overrides in the run config) and
sends its text with every message, so nodes rebuild the same model from the same seed
without sharing files. Nodes are found with a ``query`` message; a round is the
simulator's plan (:meth:`FederationServer.plan_round`: the same seeded sampling
and dropout), one ``train`` message per node with participants, the received uploads
fed chunk by chunk (the simulator's chunks, so float sums run in its order) into the
same :class:`~fedllmrec.federated.aggregation.RoundAggregator`, and the simulator's
finish (:meth:`FederationServer.finish_round`). Flower only carries the messages.
The end is one ``evaluate`` message per node for click models (each node predicts its
own users' held-out exposures with their private rows; the server pools AUC and
LogLoss); other models (next-item rankers, the LLM) skip it. Every federation a recipe
builds runs here, the sequential models' and the LLM adapters': the apps use only the
node hooks of :class:`~fedllmrec.federated.server.FederationServer`.

With ``federated.privacy.secure_aggregation = true`` a round's local training runs as
flwr's SecAgg+ instead (:func:`run_secure_round`: ``SecAggPlusWorkflow`` on the legacy
workflow path, with a :class:`~flwr.server.LegacyContext` and a :class:`PlanStrategy`
that sends each node its share of the plan and receives the unmasked sum): every node is
one party, and the server learns only the sum of the nodes' vectors (:mod:`.secagg`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict, UserConfig
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ClientManager, LegacyContext, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save as save_safetensors

from fedllmrec.apps.flower.config import (
    AppConfig,
    RecipeSource,
    check_flower_privacy,
    record_int,
    set_threads,
    tensor_record,
)
from fedllmrec.apps.flower.secagg import (
    CLIP_REFUSAL,
    CLIPPING_RANGE,
    SecureCodec,
    SecureSettings,
    reconstruction_threshold,
)
from fedllmrec.errors import FedLLMRecError
from fedllmrec.eval.metrics import click_metrics
from fedllmrec.federated.aggregation import RoundAggregator
from fedllmrec.federated.ownership import SHARED
from fedllmrec.federated.privacy import unpack
from fedllmrec.federated.round import RoundPlan
from fedllmrec.federated.server import FederationServer
from fedllmrec.federated.uploads import ClientUpload, ProtectedSum, Uploads, UploadSum
from fedllmrec.io import atomic_write_bytes, atomic_write_json

# Called with each secure round's plan and what the server received: the unmasked sum.
SumObserver = Callable[[RoundPlan, UploadSum | ProtectedSum], None]


@dataclass
class Nodes:
    """Which SuperNode holds which partition of the clients."""

    node_of: dict[int, int]  # partition-id -> node id
    parts: int

    def owner(self, position: int) -> int:
        return self.node_of[position % self.parts]


def _discover(grid: Grid, timeout: float) -> Nodes:
    """Ask every connected SuperNode for its partition until all partitions answered."""
    deadline = time.monotonic() + timeout
    answered: dict[int, tuple[int, int]] = {}  # node id -> (partition, partitions)
    failed: set[int] = set()
    while True:
        new = [n for n in grid.get_node_ids() if n not in answered and n not in failed]
        asks = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in new]
        wait = max(1.0, deadline - time.monotonic())
        for reply in grid.send_and_receive(asks, timeout=wait) if asks else ():
            node = reply.metadata.src_node_id
            if reply.has_error():
                failed.add(node)
                log(WARNING, "node %s has no partition: %s", node, reply.error.reason)
                continue
            info = reply.content.config_records["node"]
            answered[node] = (record_int(info["partition-id"]), record_int(info["num-partitions"]))
        counts = {parts for _, parts in answered.values()}
        if len(counts) > 1:
            raise FedLLMRecError(f"SuperNodes disagree on num-partitions: {sorted(counts)}")
        if counts:
            parts = counts.pop()
            node_of: dict[int, int] = {}
            for node, (part, _) in sorted(answered.items()):
                if part in node_of:
                    raise FedLLMRecError(f"nodes {node_of[part]} and {node} both claim {part=}")
                node_of[part] = node
            if len(node_of) == parts:
                return Nodes(node_of, parts)
        if time.monotonic() > deadline:
            raise FedLLMRecError(
                f"after {timeout:.0f} s, partitions answered: {sorted(answered.values())}; "
                f"nodes without a partition: {sorted(failed)}"
            )
        time.sleep(0.5)


def _by_node(plan: RoundPlan, nodes: Nodes) -> dict[int, list[int]]:
    """The round's surviving clients, by the node that holds them."""
    by_node: dict[int, list[int]] = {}
    for pos in plan.survivors.tolist():
        by_node.setdefault(nodes.owner(pos), []).append(pos)
    return by_node


def run_round(
    grid: Grid, fed: FederationServer, nodes: Nodes, common: RecordDict, timeout: float
) -> float:
    """One round of :mod:`fedllmrec.federated.round`, with the local training on the nodes."""
    plan = fed.plan_round()
    own = fed.ownership
    shared, load = tensor_record(plan.sent), tensor_record({"load": plan.load})
    by_node = _by_node(plan, nodes)
    messages = []
    for node, positions in by_node.items():
        content = RecordDict(
            {
                "recipe": common.config_records["recipe"],
                "run": ConfigRecord(
                    {**common.config_records["run"], "round": plan.number, "clients": positions}
                ),
                "shared": shared,
                "load": load,
            }
        )
        messages.append(
            Message(content, dst_node_id=node, message_type="train", group_id=str(plan.number))
        )
    uploads: dict[int, ClientUpload] = {}
    asked = set(plan.survivors.tolist())
    wire = 0
    for reply in grid.send_and_receive(messages, timeout=timeout or None):
        if reply.has_error():
            node, reason = reply.metadata.src_node_id, reply.error.reason
            log(WARNING, "round %d: node %s failed, its clients dropped: %s", plan.number, node,
                reason)  # fmt: skip
            continue
        for key, data in reply.content.config_records["uploads"].items():
            if int(key) not in asked or not isinstance(data, bytes):
                raise FedLLMRecError(f"round {plan.number}: unexpected upload {key!r}")
            uploads[int(key)] = ClientUpload.from_bytes(data)
            wire += len(data)
    if not uploads:
        raise FedLLMRecError(f"round {plan.number}: no client upload arrived")
    done = np.array(sorted(uploads), dtype=np.int64)
    aggregator = RoundAggregator(own, fed.federation.strategy)
    for chunk in fed.upload_chunks(done, plan.number):
        aggregator.add(Uploads.stack([uploads[pos] for pos in chunk.tolist()], chunk, own))
    failed = int(plan.survivors.shape[0] - done.shape[0])
    loss = fed.finish_round(plan, aggregator, {"failed": failed, "wire_bytes_up": wire})
    log(INFO, "round %d: %d clients, loss %.6f", plan.number, done.shape[0], loss)
    return loss


class PlanStrategy(Strategy):
    """The legacy ``Strategy`` of one secure round: each node's share of the plan out, the
    unmasked sum in.

    ``configure_fit`` sends every node with participants the round's tensors (the
    ``parameters``: every shared tensor in ownership order, then the routing load) and a
    config: the recipe, the round, the node's clients, the cohort size, the most clients
    any node trains and the public bounds. ``aggregate_fit`` receives what
    ``SecAggPlusWorkflow`` unmasked: the ``num_examples``-weighted mean of the node
    vectors; every node says 1, so the sum is that mean times the number of results.
    """

    def __init__(self, by_node: dict[int, list[int]], config: dict[str, Scalar]) -> None:
        self.by_node, self.config = by_node, config
        self.total: np.ndarray | None = None  # the unmasked sum of the scaled node vectors
        self.summed: list[int] = []  # the nodes in it

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        proxies = client_manager.all()
        return [
            (proxies[str(node)], FitIns(parameters, {**self.config, "clients": _csv(positions)}))
            for node, positions in self.by_node.items()
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:
            if any(res.num_examples != 1 for _, res in results):
                raise FedLLMRecError("a SecAgg+ party sent num_examples != 1: the sum is lost")
            arrays = parameters_to_ndarrays(results[0][1].parameters)
            if len(arrays) != 1:
                raise FedLLMRecError(f"SecAgg+ unmasked {len(arrays)} arrays, expected 1")
            self.total = np.asarray(arrays[0], dtype=np.float64) * len(results)
            self.summed = [proxy.node_id for proxy, _ in results]
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


def _csv(values: list[int]) -> str:
    return ",".join(map(str, values))


class _Workflow(SecAggPlusWorkflow):
    """``SecAggPlusWorkflow`` keeping its state, so the server can say why a round failed."""

    state: WorkflowState | None = None

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        self.state = state
        return super().setup_stage(grid, context, state)


def _reasons(state: WorkflowState | None) -> list[str]:
    """The nodes' errors of a SecAgg+ round, one line each."""
    reasons = []
    for failure in state.failures if state is not None else []:
        error = failure.args[0] if failure.args else failure
        text = str(getattr(error, "reason", error))
        refusal = re.search(re.escape(CLIP_REFUSAL) + r"[^'\n]*", text)
        reasons.append(refusal.group(0) if refusal else " ".join(text.split())[-300:])
    return reasons


@dataclass
class SecureRun:
    """What a run's secure rounds share: the nodes as legacy client proxies, the bounds."""

    manager: ClientManager
    settings: SecureSettings = field(default_factory=SecureSettings)
    observe: SumObserver | None = None

    @classmethod
    def of(
        cls, grid: Grid, nodes: Nodes, settings: SecureSettings, observe: SumObserver | None
    ) -> SecureRun:
        manager = SimpleClientManager()
        for node in nodes.node_of.values():
            manager.register(GridClientProxy(node_id=node, grid=grid, run_id=grid.run.run_id))
        return cls(manager, settings, observe)


def run_secure_round(
    grid: Grid,
    fed: FederationServer,
    nodes: Nodes,
    common: RecordDict,
    context: Context,
    secure: SecureRun,
    timeout: float,
) -> float:
    """One round of :mod:`fedllmrec.federated.round` whose local training is SecAgg+'s.

    The plan and the finish are the simulator's; between them ``SecAggPlusWorkflow`` runs
    on a fresh :class:`LegacyContext` with a :class:`PlanStrategy`, every node with
    participants one party (strict-majority reconstruction threshold, every party sharing
    with every other). The server decodes the unmasked sum (:class:`SecureCodec`) into the
    round's ``UploadSum`` / ``ProtectedSum`` for the aggregator: it never sees a node's
    vector, let alone a client's upload.
    """
    plan = fed.plan_round()
    by_node = _by_node(plan, nodes)
    aggregator = fed.new_aggregator(plan.number)
    if not by_node:  # a Poisson draw may take nobody: an empty round (DP still adds noise)
        return fed.finish_round(plan, aggregator, {"failed": 0, "wire_bytes_up": 0})
    settings = secure.settings
    parties = len(by_node)
    if parties < 2:
        raise FedLLMRecError(
            f"round {plan.number}: every participant is on one SuperNode; secure aggregation "
            "needs participants on >= 2 (a single party's sum is its own vector)"
        )
    levels = settings.quantization_range(parties)
    node_clients = max(len(positions) for positions in by_node.values())
    cohort = len(plan.participants)
    codec = SecureCodec.of(fed, node_clients, cohort, settings)
    recipe = common.config_records["recipe"]
    config: dict[str, Scalar] = {f"recipe.{key}": str(value) for key, value in recipe.items()}
    config |= {
        "num-threads": record_int(common.config_records["run"]["num-threads"]),
        "round": plan.number,
        "cohort": cohort,
        "node-clients": node_clients,
        **settings.to_config(),
    }
    strategy = PlanStrategy(by_node, config)
    fresh = Context(context.run_id, context.node_id, context.node_config, RecordDict(), {})
    legacy = LegacyContext(fresh, strategy=strategy, client_manager=secure.manager)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: plan.number}
    )
    names = fed.ownership.names(*SHARED)
    arrays = [plan.sent[name].detach().cpu().numpy() for name in names] + [plan.load.numpy()]
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(arrays), keep_input=True
    )
    workflow = _Workflow(
        num_shares=1.0,
        reconstruction_threshold=reconstruction_threshold(parties),
        max_weight=1.0,
        clipping_range=CLIPPING_RANGE,
        quantization_range=levels,
        modulus_range=settings.modulus_range,
        timeout=timeout or None,
    )
    workflow(grid, legacy)
    reasons = _reasons(workflow.state)
    refusals = [reason for reason in reasons if reason.startswith(CLIP_REFUSAL)]
    if refusals:
        raise FedLLMRecError(f"round {plan.number}: a SuperNode refused: {refusals[0]}")
    if strategy.total is None:
        raise FedLLMRecError(
            f"round {plan.number}: SecAgg+ halted without a sum; nodes' errors: "
            f"{'; '.join(reasons) or 'none'} (too few parties left for threshold "
            f"{reconstruction_threshold(parties)} of {parties}?)"
        )
    summed = len(strategy.summed)
    for node in sorted(set(by_node) - set(strategy.summed)):
        log(WARNING, "round %d: node %s dropped out of SecAgg+, its clients dropped", plan.number,
            node)  # fmt: skip
    done = np.array(sorted(p for node in strategy.summed for p in by_node[node]), dtype=np.int64)
    total = unpack(codec.decode(strategy.total, summed, levels), done, codec.layout, fed.ownership)
    if secure.observe is not None:
        secure.observe(plan, total)
    aggregator.add(total)
    extra = {
        "failed": int(plan.survivors.shape[0] - done.shape[0]),
        "wire_bytes_up": summed * 8 * (codec.layout.size + 1),  # masked int64 vectors
        "secagg_parties": summed,
        "secagg_quantization_range": levels,
    }
    loss = fed.finish_round(plan, aggregator, extra)
    log(INFO, "round %d: %d clients on %d SecAgg+ parties, loss %.6f", plan.number,
        done.shape[0], summed, loss)  # fmt: skip
    return loss


def evaluate_nodes(
    grid: Grid, fed: FederationServer, nodes: Nodes, common: RecordDict, role: str
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Pool the nodes' held-out predictions into one AUC and LogLoss (click models)."""
    run = ConfigRecord({**common.config_records["run"], "role": role})
    shared = tensor_record(fed.shared_tensors())
    messages = [
        Message(
            RecordDict({"recipe": common.config_records["recipe"], "run": run, "shared": shared}),
            dst_node_id=node,
            message_type="evaluate",
        )
        for node in nodes.node_of.values()
    ]
    parts: dict[str, list[np.ndarray]] = {"user": [], "prob": [], "label": []}
    for reply in grid.send_and_receive(messages):
        if reply.has_error():
            node, reason = reply.metadata.src_node_id, reply.error.reason
            raise FedLLMRecError(f"evaluation failed on node {node}: {reason}")
        record = reply.content.array_records["predictions"]
        for key, values in parts.items():
            values.append(record[key].numpy())
    pooled = {key: np.concatenate(values) for key, values in parts.items()}
    order = np.argsort(pooled["user"], kind="stable")
    pooled = {key: value[order] for key, value in pooled.items()}
    return click_metrics(pooled["label"], pooled["prob"]), pooled


def write_outputs(
    out_dir: Path,
    fed: FederationServer,
    config: AppConfig,
    nodes: Nodes,
    metrics: dict[str, float],
    predictions: dict[str, np.ndarray] | None,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().contiguous() for n, t in fed.shared_tensors().items()}
    atomic_write_bytes(out_dir / "server.safetensors", save_safetensors(tensors))
    history: dict[str, Any] = {
        "recipe": config.recipe,
        "set": list(config.overrides),
        "partitions": nodes.parts,
        "clients": fed.n_clients,
        "losses": list(fed.losses),
        "rounds": [dict(r) for r in fed.server.records],
        "eval_role": config.eval_role,
        "metrics": metrics,
    }
    atomic_write_json(out_dir / "history.json", history)
    if predictions is not None:
        np.savez(
            out_dir / f"predictions_{config.eval_role}.npz",
            user=predictions["user"],
            prob=predictions["prob"],
            label=predictions["label"],
        )


def make_server_app(
    run_config: UserConfig | None = None,
    secure: SecureSettings | None = None,
    observe: SumObserver | None = None,
) -> ServerApp:
    """A ServerApp whose run configuration defaults are ``run_config`` over
    :data:`RUN_CONFIG_DEFAULTS` (what ``run_simulation`` needs: it passes no run config);
    the context's run config (``flwr run``) still wins.

    ``secure`` sets the public bounds of secure rounds (default :class:`SecureSettings`);
    ``observe`` is called with each secure round's plan and the unmasked sum the server
    received, all it learns of the round's uploads (audits, tests).
    """
    defaults = dict(run_config or {})
    settings = secure or SecureSettings()
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = AppConfig.from_run_config({**defaults, **context.run_config})
        set_threads(config.num_threads)
        source = RecipeSource.read(config.recipe, config.overrides, config.data_dir)
        fed = source.load().build_federation()
        check_flower_privacy(fed)
        n_clients = fed.n_clients
        log(INFO, "fedllmrec: %s, %d clients; waiting for SuperNodes", source.name, n_clients)
        nodes = _discover(grid, config.node_timeout)
        log(INFO, "fedllmrec: %d partitions on nodes %s", nodes.parts, nodes.node_of)
        common = RecordDict(
            {
                "recipe": source.to_record(),
                "run": ConfigRecord({"num-threads": config.num_threads}),
            }
        )
        if fed.federation.privacy.secure_aggregation:
            secure_run = SecureRun.of(grid, nodes, settings, observe)
            for _ in range(config.num_server_rounds):
                run_secure_round(
                    grid, fed, nodes, common, context, secure_run, config.round_timeout
                )
        else:
            for _ in range(config.num_server_rounds):
                run_round(grid, fed, nodes, common, config.round_timeout)
        metrics: dict[str, float] = {}
        predictions = None
        if config.eval_role and not fed.predicts_clicks:
            log(INFO, "fedllmrec: the model predicts no clicks: no %s click evaluation",
                config.eval_role)  # fmt: skip
        elif config.eval_role:
            metrics, predictions = evaluate_nodes(grid, fed, nodes, common, config.eval_role)
            log(INFO, "fedllmrec: %s %s", config.eval_role, json.dumps(metrics))
        context.state["fedllmrec.metrics"] = MetricRecord({"loss": list(fed.losses), **metrics})
        if config.out_dir:
            write_outputs(Path(config.out_dir), fed, config, nodes, metrics, predictions)

    return app


server_app = make_server_app()
