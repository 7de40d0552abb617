"""The ServerApp: the federation's server, running :mod:`fedllmrec.federated.round`'s rounds.

The ServerApp reads a recipe (``recipe`` plus ``set`` overrides in the run config) and
sends its text with every message, so nodes rebuild the same model from the same seed
without sharing files. Nodes are found with a ``query`` message; a round is the
simulator's plan (:meth:`FederatedRecommender.plan_round`: the same seeded sampling
and dropout), one ``train`` message per node with participants, the received uploads
fed chunk by chunk (the simulator's chunks, so float sums run in its order) into the
same :class:`~fedllmrec.federated.aggregation.RoundAggregator`, and the simulator's
finish (:meth:`FederatedRecommender.finish_round`). Flower only carries the messages.
The end is one ``evaluate`` message per node (click models: each node predicts its own
users' held-out exposures with their private rows; the server pools AUC and LogLoss).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict, UserConfig
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save as save_safetensors

from fedllmrec.apps.flower.config import (
    AppConfig,
    RecipeSource,
    record_int,
    set_threads,
    tensor_record,
)
from fedllmrec.errors import FedLLMRecError
from fedllmrec.eval.metrics import click_metrics
from fedllmrec.federated.aggregation import RoundAggregator
from fedllmrec.federated.round import chunk_clients
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import ClientUpload, Uploads
from fedllmrec.io import atomic_write_bytes, atomic_write_json


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


def run_round(
    grid: Grid, fed: FederatedRecommender, nodes: Nodes, common: RecordDict, timeout: float
) -> float:
    """One round of :mod:`fedllmrec.federated.round`, with the local training on the nodes."""
    plan = fed.plan_round()
    own = fed.ownership
    shared, load = tensor_record(plan.sent), tensor_record({"load": plan.load})
    by_node: dict[int, list[int]] = {}
    for pos in plan.survivors.tolist():
        by_node.setdefault(nodes.owner(pos), []).append(pos)
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
    for chunk in chunk_clients(fed.population, done, plan.number, fed.federation):
        aggregator.add(Uploads.stack([uploads[pos] for pos in chunk.tolist()], chunk, own))
    failed = int(plan.survivors.shape[0] - done.shape[0])
    loss = fed.finish_round(plan, aggregator, {"failed": failed, "wire_bytes_up": wire})
    log(INFO, "round %d: %d clients, loss %.6f", plan.number, done.shape[0], loss)
    return loss


def evaluate_nodes(
    grid: Grid, fed: FederatedRecommender, nodes: Nodes, common: RecordDict, role: str
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
    fed: FederatedRecommender,
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
        "clients": len(fed.population),
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


def make_server_app(run_config: UserConfig | None = None) -> ServerApp:
    """A ServerApp whose run configuration defaults are ``run_config`` over
    :data:`RUN_CONFIG_DEFAULTS` (what ``run_simulation`` needs: it passes no run config);
    the context's run config (``flwr run``) still wins."""
    defaults = dict(run_config or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = AppConfig.from_run_config({**defaults, **context.run_config})
        set_threads(config.num_threads)
        source = RecipeSource.read(config.recipe, config.overrides, config.data_dir)
        fed = source.load().build_federation()
        n_clients = len(fed.population)
        log(INFO, "fedllmrec: %s, %d clients; waiting for SuperNodes", source.name, n_clients)
        nodes = _discover(grid, config.node_timeout)
        log(INFO, "fedllmrec: %d partitions on nodes %s", nodes.parts, nodes.node_of)
        common = RecordDict(
            {
                "recipe": source.to_record(),
                "run": ConfigRecord({"num-threads": config.num_threads}),
            }
        )
        for _ in range(config.num_server_rounds):
            run_round(grid, fed, nodes, common, config.round_timeout)
        metrics: dict[str, float] = {}
        predictions = None
        if config.eval_role:
            metrics, predictions = evaluate_nodes(grid, fed, nodes, common, config.eval_role)
            log(INFO, "fedllmrec: %s %s", config.eval_role, json.dumps(metrics))
        context.state["fedllmrec.metrics"] = MetricRecord({"loss": list(fed.losses), **metrics})
        if config.out_dir:
            write_outputs(Path(config.out_dir), fed, config, nodes, metrics, predictions)

    return app


server_app = make_server_app()
