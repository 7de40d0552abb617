"""The federation on Flower (flwr 1.41 Message API): a ServerApp and a ClientApp.

The rounds are those of :class:`~fedllmrec.federated.simulator.FederatedRecommender`,
with messages in place of function calls: the same seeded sampling and dropout,
the same local update (:meth:`FederatedRecommender.train_chunk`, i.e.
:func:`~fedllmrec.federated.client.train_clients`), the same uploads
(:func:`~fedllmrec.federated.client.make_upload`, sent in their safetensors wire
format) and the same aggregation (:func:`~fedllmrec.federated.server.stack_uploads`
and :func:`~fedllmrec.federated.server.aggregate_round`), so a Flower run and the
in-process simulator agree up to float rounding.

* Every SuperNode is a silo holding a share of the clients (users): positions
  ``partition-id::num-partitions`` of :attr:`FederatedRecommender.clients`, from
  its node config. Each client's private rows (user embeddings, user FFNs) stay
  in the node's ``context.state`` and are never sent.
* The ServerApp reads a recipe (``recipe`` plus ``set`` overrides in the run
  config) and sends its text with every message, so nodes rebuild the same model
  from the same seed without sharing files. Nodes are found with a ``query``
  message; a round is one ``train`` message per node with participants; the end
  is one ``evaluate`` message per node (click models: each node predicts its own
  users' held-out exposures with their private rows; the server pools AUC and
  LogLoss).

Run configuration (``[tool.flwr.app.config]``; :data:`RUN_CONFIG_DEFAULTS`)::

    num-server-rounds  rounds to run
    recipe             recipe TOML (relative: to the working directory, else the project)
    set                recipe overrides "key=value", separated by ";" (as ``--set``)
    data-dir           raw data folder for server and nodes ("" = recipe / $FEDLLMREC_DATA);
                       a node's own ``data-dir`` node config wins
    out-dir            where the server writes history.json, server.safetensors and
                       predictions ("" = nowhere)
    eval-role          held-out role evaluated after the last round ("" = none)
    num-threads        torch CPU threads of server and nodes (0 = torch's default)
    node-timeout       seconds to wait until every partition's SuperNode has answered
    round-timeout      seconds to wait for a round's replies (0 = no limit); late nodes'
                       clients count as dropped
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    UserConfig,
    UserConfigValue,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save as save_safetensors

import fedllmrec
from fedllmrec.errors import FedLLMRecError
from fedllmrec.eval.metrics import click_metrics
from fedllmrec.federated.client import ClientUpload, download_bytes, make_upload, upload_bytes
from fedllmrec.federated.server import aggregate_round, stack_uploads
from fedllmrec.federated.simulator import (
    FederatedRecommender,
    FederationConfig,
)
from fedllmrec.federated.strategies import (
    client_weights,
    drop_clients,
    routing_load,
    sample_clients,
)
from fedllmrec.io import atomic_write_bytes, atomic_write_json
from fedllmrec.models.sequential import SequentialRecommender
from fedllmrec.recipes.recipe import Recipe, load_recipe

__all__ = [
    "RUN_CONFIG_DEFAULTS",
    "AppConfig",
    "RecipeSource",
    "build_federation",
    "client_app",
    "make_server_app",
    "node_partition",
    "partition_positions",
    "server_app",
]

RUN_CONFIG_DEFAULTS: dict[str, UserConfigValue] = {
    "num-server-rounds": 3,
    "recipe": "recipes/mrff-fed-kuaisar.toml",
    "set": "",
    "data-dir": "",
    "out-dir": "",
    "eval-role": "valid",
    "num-threads": 1,
    "node-timeout": 300.0,
    "round-timeout": 0.0,
}

PRIVATE_STATE = "fedllmrec.private"  # context.state key of a node's private rows
PROJECT_ROOT = Path(fedllmrec.__file__).resolve().parents[1]


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AppConfig:
    """The run configuration, typed (see the module docstring for the keys)."""

    num_server_rounds: int
    recipe: str
    overrides: tuple[str, ...]
    data_dir: str
    out_dir: str
    eval_role: str
    num_threads: int
    node_timeout: float
    round_timeout: float

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, UserConfigValue]) -> AppConfig:
        """Parse ``run_config`` on top of :data:`RUN_CONFIG_DEFAULTS`."""
        merged = {**RUN_CONFIG_DEFAULTS, **run_config}
        unknown = sorted(set(merged) - set(RUN_CONFIG_DEFAULTS))
        if unknown:
            raise FedLLMRecError(
                f"unknown run config keys {unknown}; known: {sorted(RUN_CONFIG_DEFAULTS)}"
            )
        rounds = int(merged["num-server-rounds"])
        if rounds < 1:
            raise FedLLMRecError(f"num-server-rounds must be >= 1, got {rounds}")
        return cls(
            num_server_rounds=rounds,
            recipe=str(merged["recipe"]),
            overrides=split_overrides(str(merged["set"])),
            data_dir=str(merged["data-dir"]),
            out_dir=str(merged["out-dir"]),
            eval_role=str(merged["eval-role"]),
            num_threads=int(merged["num-threads"]),
            node_timeout=float(merged["node-timeout"]),
            round_timeout=float(merged["round-timeout"]),
        )


def split_overrides(text: str) -> tuple[str, ...]:
    """``"a.b=1; c=2"`` -> ``("a.b=1", "c=2")`` (run config values cannot be lists)."""
    return tuple(part.strip() for part in re.split(r"[;\n]", text) if part.strip())


@dataclass(frozen=True)
class RecipeSource:
    """A recipe as text plus overrides: what the server sends so every node builds alike."""

    name: str
    text: str
    overrides: tuple[str, ...] = ()
    data_dir: str = ""

    @classmethod
    def read(
        cls, path: str | Path, overrides: Iterable[str] = (), data_dir: str = ""
    ) -> RecipeSource:
        """Read a recipe file; a relative path is tried in the working directory, then the
        project (the folder holding the ``fedllmrec`` package, which a FAB also ships)."""
        path = Path(path).expanduser()
        candidates = [path] if path.is_absolute() else [path, PROJECT_ROOT / path]
        for candidate in candidates:
            if candidate.is_file():
                text = candidate.read_text(encoding="utf-8")
                return cls(candidate.name, text, tuple(overrides), data_dir)
        raise FedLLMRecError(f"recipe {path} not found (looked in {[str(c) for c in candidates]})")

    def load(self) -> Recipe:
        """The checked :class:`Recipe` (overrides applied, ``data_dir`` replaced if set)."""
        with tempfile.TemporaryDirectory(prefix="fedllmrec-recipe-") as tmp:
            path = Path(tmp) / self.name
            path.write_text(self.text, encoding="utf-8")
            recipe = load_recipe(path, self.overrides)
        if self.data_dir:
            data = dataclasses.replace(recipe.data, data_dir=self.data_dir)
            recipe = dataclasses.replace(recipe, data=data)
        return recipe

    def to_record(self) -> ConfigRecord:
        # Overrides travel newline-joined: an empty list has no wire type.
        return ConfigRecord(
            {
                "name": self.name,
                "text": self.text,
                "set": "\n".join(self.overrides),
                "data-dir": self.data_dir,
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord, data_dir: str = "") -> RecipeSource:
        """The source a message carries; a node's own ``data_dir`` replaces the server's."""
        return cls(
            str(record["name"]),
            str(record["text"]),
            split_overrides(str(record["set"])),
            data_dir or str(record["data-dir"]),
        )


def build_federation(source: RecipeSource) -> FederatedRecommender:
    """Prepare the data and build the seeded federation exactly as the simulator does.

    A recipe without a ``[federated]`` table trains with :class:`FederationConfig`
    defaults, seeded by ``trainer.seed`` as the recipe loader would.
    """
    recipe = source.load()
    prepared = recipe.prepare()
    model = recipe.build_model(prepared)
    if isinstance(model, FederatedRecommender):
        fed = model
    elif isinstance(model, SequentialRecommender):
        fed = FederatedRecommender(model, FederationConfig(seed=recipe.trainer.seed))
    else:
        raise FedLLMRecError(
            f"recipe {source.name}: model kind {recipe.model_kind!r} cannot train federated"
        )
    return fed.setup(prepared.split)


def node_partition(node_config: Mapping[str, UserConfigValue]) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` of a SuperNode, checked."""
    try:
        part, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as err:
        raise FedLLMRecError(
            f"SuperNode node config lacks {err.args[0]!r}: start it with "
            "--node-config 'partition-id=0 num-partitions=2'"
        ) from None
    if not 0 <= part < parts:
        raise FedLLMRecError(f"partition-id {part} not in [0, num-partitions={parts})")
    return part, parts


def partition_positions(n_clients: int, part: int, parts: int) -> np.ndarray:
    """Positions in :attr:`FederatedRecommender.clients` of partition ``part`` of ``parts``."""
    return np.arange(part, n_clients, parts, dtype=np.int64)


def _int(value: object) -> int:
    """A record's integer scalar (records are loosely typed unions)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise FedLLMRecError(f"expected an integer in the message, got {value!r}")
    return value


def _set_threads(n: int) -> None:
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _tensor_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({name: Array(t.detach().cpu().numpy()) for name, t in tensors.items()})


def _record_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    # np.load gives writable arrays, so from_numpy shares memory without warnings.
    return {name: torch.from_numpy(array.numpy()) for name, array in record.items()}


# ---------------------------------------------------------------- ClientApp


@dataclass
class _Local:
    """A node's rebuilt federation and the private tables it was built with."""

    fed: FederatedRecommender
    initial: dict[str, torch.Tensor]


_LOCAL: dict[RecipeSource, _Local] = {}
_LOCAL_LOCK = threading.Lock()


def _local(source: RecipeSource) -> _Local:
    """The federation of ``source``, built once per process (a simulation actor serves
    every round and several nodes; the newest recipe replaces older ones)."""
    with _LOCAL_LOCK:
        if source not in _LOCAL:
            _LOCAL.clear()
            fed = build_federation(source)
            every = dict(fed.net.named_parameters())
            private = fed.ownership.private_parameters()
            initial = {name: every[name].detach().clone() for name in private}
            _LOCAL[source] = _Local(fed, initial)
        return _LOCAL[source]


def _request(msg: Message, context: Context) -> tuple[_Local, np.ndarray]:
    """The node's federation and its client positions, from a message and the node config."""
    _set_threads(_int(msg.content.config_records["run"]["num-threads"]))
    node_dir = str(context.node_config.get("data-dir", ""))
    source = RecipeSource.from_record(msg.content.config_records["recipe"], node_dir)
    local = _local(source)
    part, parts = node_partition(context.node_config)
    return local, partition_positions(local.fed.clients.shape[0], part, parts)


def _load_private(local: _Local, state: RecordDict, positions: np.ndarray) -> None:
    """Write the clients' private rows from the node state (first use: the built model's)."""
    fed = local.fed
    stored = state.array_records.get(PRIVATE_STATE, ArrayRecord())
    every = dict(fed.net.named_parameters())
    with torch.no_grad():
        for user in fed.clients[positions].tolist():
            for name in local.initial:
                key = f"{user}/{name}"
                row = (
                    torch.from_numpy(stored[key].numpy())
                    if key in stored
                    else local.initial[name][user]
                )
                every[name][user] = row


def _load_shared(fed: FederatedRecommender, record: ArrayRecord) -> dict[str, torch.Tensor]:
    received = _record_tensors(record)
    expected = fed.shared_tensors()
    if received.keys() != expected.keys():
        raise FedLLMRecError(
            f"shared tensors differ from the model's: {sorted(set(received) ^ set(expected))}"
        )
    return received


client_app = ClientApp()


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Report the node's partition, so the server knows whose clients it holds."""
    part, parts = node_partition(context.node_config)
    reply = RecordDict({"node": ConfigRecord({"partition-id": part, "num-partitions": parts})})
    return Message(reply, reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of this node's participating clients; replies with their uploads."""
    local, mine = _request(msg, context)
    fed = local.fed
    positions = np.asarray(msg.content.config_records["run"]["clients"], dtype=np.int64)
    if not np.isin(positions, mine).all():
        raise FedLLMRecError(f"asked to train clients {positions.tolist()} of another partition")
    server = _load_shared(fed, msg.content.array_records["shared"])
    fed.load = _record_tensors(msg.content.array_records["load"])["load"].clone()
    _load_private(local, context.state, positions)
    own, net = fed.ownership, fed.net
    stored = context.state.array_records.get(PRIVATE_STATE, ArrayRecord())
    uploads = ConfigRecord()
    net.train()
    try:
        round_ = msg.content.config_records["run"]["round"]
        if not isinstance(round_, int):
            raise FedLLMRecError(f"train message: round must be an integer, not {round_!r}")
        for chunk in fed.chunks(np.sort(positions), round_):
            result = fed.train_chunk(chunk, server, round_)
            for i, pos in enumerate(chunk.tolist()):
                user = int(fed.clients[pos])
                examples = int(fed.client_examples[pos])
                upload = make_upload(user, examples, result, i, own)
                uploads[str(pos)] = upload.to_bytes()
                for name, rows in result.private.items():  # (C, 1, ...) new private rows
                    stored[f"{user}/{name}"] = Array(rows[i, 0].numpy())
    finally:
        net.eval()
    context.state[PRIVATE_STATE] = stored
    return Message(RecordDict({"uploads": uploads}), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Click probabilities of this node's users' held-out exposures, with their private rows.

    Replies with users, probabilities and labels (an ``ArrayRecord``); empty for a
    model that does not predict clicks.
    """
    local, mine = _request(msg, context)
    fed = local.fed
    role = str(msg.content.config_records["run"]["role"])
    shared = _load_shared(fed, msg.content.array_records["shared"])
    predict = getattr(fed.base, "predict", None)
    users = np.zeros(0, dtype=np.int64)
    probs = labels = np.zeros(0, dtype=np.float64)
    if predict is not None and fed.base.split is not None:
        _load_private(local, context.state, mine)
        live = fed.shared_tensors()
        with torch.no_grad():
            for name, value in shared.items():
                live[name].copy_(value)
        all_probs, all_labels = predict(role)
        split = fed.base.split
        all_users = split.dataset.user[split.rows(role)].astype(np.int64)
        keep = np.isin(all_users, fed.clients[mine])
        users, probs, labels = all_users[keep], all_probs[keep], all_labels[keep]
    record = ArrayRecord({"user": Array(users), "prob": Array(probs), "label": Array(labels)})
    return Message(RecordDict({"predictions": record}), reply_to=msg)


# ---------------------------------------------------------------- ServerApp


@dataclass
class _Nodes:
    """Which SuperNode holds which partition of the clients."""

    node_of: dict[int, int]  # partition-id -> node id
    parts: int

    def owner(self, position: int) -> int:
        return self.node_of[position % self.parts]


def _discover(grid: Grid, timeout: float) -> _Nodes:
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
            answered[node] = (_int(info["partition-id"]), _int(info["num-partitions"]))
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
                return _Nodes(node_of, parts)
        if time.monotonic() > deadline:
            raise FedLLMRecError(
                f"after {timeout:.0f} s, partitions answered: {sorted(answered.values())}; "
                f"nodes without a partition: {sorted(failed)}"
            )
        time.sleep(0.5)


def _run_round(
    grid: Grid,
    fed: FederatedRecommender,
    nodes: _Nodes,
    common: RecordDict,
    server_round: int,
    timeout: float,
) -> float:
    """One round, as :meth:`FederatedRecommender.train_epoch` with the chunks on the nodes."""
    own, strategy, cfg = fed.ownership, fed.federation.strategy, fed.federation
    index = np.arange(fed.clients.shape[0])
    participants = sample_clients(index, strategy.fraction, strategy.min_clients, fed.rng)
    survivors, dropped = drop_clients(participants, strategy.drop_rate, fed.rng)
    live = fed.shared_tensors()
    server = {name: t.detach().clone() for name, t in live.items()}
    shared, load = _tensor_record(server), _tensor_record({"load": fed.load})
    by_node: dict[int, list[int]] = {}
    for pos in survivors.tolist():
        by_node.setdefault(nodes.owner(pos), []).append(pos)
    messages = []
    for node, positions in by_node.items():
        content = RecordDict(
            {
                "recipe": common.config_records["recipe"],
                "run": ConfigRecord(
                    {**common.config_records["run"], "round": server_round, "clients": positions}
                ),
                "shared": shared,
                "load": load,
            }
        )
        messages.append(
            Message(content, dst_node_id=node, message_type="train", group_id=str(server_round))
        )
    uploads: dict[int, ClientUpload] = {}
    asked = set(survivors.tolist())
    wire = 0
    for reply in grid.send_and_receive(messages, timeout=timeout or None):
        if reply.has_error():
            node, reason = reply.metadata.src_node_id, reply.error.reason
            log(
                WARNING,
                "round %d: node %s failed, its clients dropped: %s",
                server_round,
                node,
                reason,
            )
            continue
        for key, data in reply.content.config_records["uploads"].items():
            if int(key) not in asked or not isinstance(data, bytes):
                raise FedLLMRecError(f"round {server_round}: unexpected upload {key!r}")
            uploads[int(key)] = ClientUpload.from_bytes(data)
            wire += len(data)
    if not uploads:
        raise FedLLMRecError(f"round {server_round}: no client upload arrived")
    # The simulator's client order (its chunks), so float sums run in the same order.
    done = np.array(sorted(uploads), dtype=np.int64)
    order = [pos for chunk in fed.chunks(done, server_round) for pos in chunk.tolist()]
    ordered = [uploads[pos] for pos in order]
    stacked = stack_uploads(ordered, own)
    new, _ = aggregate_round(server, stacked, own, strategy, fed.server_optimizer)
    with torch.no_grad():
        for name, value in new.items():
            live[name].copy_(value)
    if cfg.balance_load and stacked.routing.shape[1]:
        fed.load = routing_load(stacked.routing, fed.load.shape[1])
    weights = client_weights(stacked.n_examples, "examples")
    losses = torch.tensor([u.loss for u in ordered], dtype=torch.float64)
    loss = float((losses * weights).sum())
    fed.losses.append(loss)
    fed.rounds.append(
        {
            "participants": int(participants.shape[0]),
            "dropped": int(dropped.shape[0]),
            "failed": int(survivors.shape[0] - done.shape[0]),
            "bytes_up": int(done.shape[0]) * upload_bytes(own),
            "bytes_down": int(participants.shape[0]) * download_bytes(own),
            "wire_bytes_up": wire,
        }
    )
    log(INFO, "round %d: %d clients, loss %.6f", server_round, done.shape[0], loss)
    return loss


def _evaluate(
    grid: Grid, fed: FederatedRecommender, nodes: _Nodes, common: RecordDict, role: str
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Pool the nodes' held-out predictions into one AUC and LogLoss (click models)."""
    run = ConfigRecord({**common.config_records["run"], "role": role})
    shared = _tensor_record(fed.shared_tensors())
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


def _write_outputs(
    out_dir: Path,
    fed: FederatedRecommender,
    config: AppConfig,
    nodes: _Nodes,
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
        "clients": int(fed.clients.shape[0]),
        "losses": list(fed.losses),
        "rounds": [dict(r) for r in fed.rounds],
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
        _set_threads(config.num_threads)
        source = RecipeSource.read(config.recipe, config.overrides, config.data_dir)
        fed = build_federation(source)
        n_clients = fed.clients.shape[0]
        log(INFO, "fedllmrec: %s, %d clients; waiting for SuperNodes", source.name, n_clients)
        nodes = _discover(grid, config.node_timeout)
        log(INFO, "fedllmrec: %d partitions on nodes %s", nodes.parts, nodes.node_of)
        common = RecordDict(
            {
                "recipe": source.to_record(),
                "run": ConfigRecord({"num-threads": config.num_threads}),
            }
        )
        for server_round in range(1, config.num_server_rounds + 1):
            _run_round(grid, fed, nodes, common, server_round, config.round_timeout)
        metrics: dict[str, float] = {}
        predictions = None
        if config.eval_role:
            metrics, predictions = _evaluate(grid, fed, nodes, common, config.eval_role)
            log(INFO, "fedllmrec: %s %s", config.eval_role, json.dumps(metrics))
        context.state["fedllmrec.metrics"] = MetricRecord({"loss": list(fed.losses), **metrics})
        if config.out_dir:
            _write_outputs(Path(config.out_dir), fed, config, nodes, metrics, predictions)

    return app


server_app = make_server_app()
