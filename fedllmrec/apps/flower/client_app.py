"""The ClientApp: a SuperNode holding a partition of the clients and their private rows.

Every SuperNode is a silo holding a share of the clients (users or domains):
positions ``partition-id::num-partitions`` of the federation's clients, from its node
config. Each client's private state (user embeddings and user FFNs of the sequential
models, the private LoRA adapter of the LLM) stays in the node's ``context.state`` and
is never sent. A ``train`` message runs the round's local training of the named clients
(the federation's :meth:`~fedllmrec.federated.server.FederationServer.node_training`:
the simulator's local training as a real client runs it, through the same seam) and
replies with each client's upload in its wire format. Any federation a recipe builds
runs here (:meth:`~fedllmrec.recipes.Recipe.build_federation`): the apps use only the
node hooks of :class:`~fedllmrec.federated.server.FederationServer`.

Under ``federated.privacy.secure_aggregation = true`` the node instead takes part in
SecAgg+ (flwr's ``secaggplus_mod`` on the ``train`` handler, the legacy fit messages of
``SecAggPlusWorkflow``): its fit trains the same clients and returns one masked vector,
the sum of its clients' fixed-shape uploads (:mod:`.secagg`), so the server learns only
the sum over the nodes. Such a node refuses plain ``train`` messages.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedllmrec.apps.flower.config import (
    RecipeSource,
    check_flower_privacy,
    node_partition,
    partition_positions,
    record_int,
    record_tensors,
    set_threads,
)
from fedllmrec.apps.flower.secagg import SecureCodec, SecureSettings
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.ownership import SHARED
from fedllmrec.federated.server import FederationServer
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import Part, Uploads

PRIVATE_STATE = "fedllmrec.private"  # context.state key of a node's private state


@dataclass
class NodeFederation:
    """A node's rebuilt federation and the private state it was built with."""

    fed: FederationServer
    initial: dict[str, torch.Tensor]  # trainable private name -> (n_clients, ...) initial


_BUILT: dict[RecipeSource, NodeFederation] = {}
_BUILT_LOCK = threading.Lock()


def node_federation(source: RecipeSource) -> NodeFederation:
    """The federation of ``source``, built once per process (a simulation actor serves
    every round and several nodes; the newest recipe replaces older ones)."""
    with _BUILT_LOCK:
        if source not in _BUILT:
            _BUILT.clear()
            fed = source.load().build_federation()
            initial = fed.private_rows(np.arange(fed.n_clients))
            _BUILT[source] = NodeFederation(fed, initial)
        return _BUILT[source]


def _node(
    recipe: ConfigRecord, threads: int, context: Context
) -> tuple[NodeFederation, np.ndarray]:
    """The node's federation and its client positions, from a recipe and the node config."""
    set_threads(threads)
    node_dir = str(context.node_config.get("data-dir", ""))
    node = node_federation(RecipeSource.from_record(recipe, node_dir))
    part, parts = node_partition(context.node_config)
    return node, partition_positions(node.fed.n_clients, part, parts)


def _request(msg: Message, context: Context) -> tuple[NodeFederation, np.ndarray]:
    """The node's federation and its client positions, from a message and the node config."""
    threads = record_int(msg.content.config_records["run"]["num-threads"])
    return _node(msg.content.config_records["recipe"], threads, context)


def _check_clients(positions: np.ndarray, mine: np.ndarray) -> None:
    if not np.isin(positions, mine).all():
        raise FedLLMRecError(f"asked to train clients {positions.tolist()} of another partition")


def _load_private(node: NodeFederation, state: RecordDict, positions: np.ndarray) -> None:
    """Write the clients' private state from the node state (first use: the built model's)."""
    fed = node.fed
    stored = state.array_records.get(PRIVATE_STATE, ArrayRecord())
    clients = fed.clients[positions].tolist()
    rows: dict[str, torch.Tensor] = {}
    for name, initial in node.initial.items():
        keys = [f"{client}/{name}" for client in clients]
        rows[name] = torch.stack(
            [
                torch.from_numpy(stored[key].numpy()) if key in stored else initial[pos]
                for key, pos in zip(keys, positions.tolist(), strict=True)
            ]
        )
    fed.write_private_rows(positions, rows)


def _store_private(fed: FederationServer, state: RecordDict, positions: np.ndarray) -> None:
    """Keep the clients' new private state in the node state (it is never sent)."""
    stored = state.array_records.get(PRIVATE_STATE, ArrayRecord())
    rows = fed.private_rows(positions)
    for i, pos in enumerate(positions.tolist()):
        user = int(fed.clients[pos])
        for name, value in rows.items():
            stored[f"{user}/{name}"] = Array(value[i].numpy())
    state[PRIVATE_STATE] = stored


client_app = ClientApp()


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Report the node's partition, so the server knows whose clients it holds."""
    part, parts = node_partition(context.node_config)
    reply = RecordDict({"node": ConfigRecord({"partition-id": part, "num-partitions": parts})})
    return Message(reply, reply_to=msg)


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """flwr's ``secaggplus_mod`` on SecAgg+ messages; plain ``train`` messages pass by."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


@client_app.train(mods=[secure_mod])
def train(msg: Message, context: Context) -> Message:
    """Local training of this node's participating clients; replies with their uploads
    (plain rounds) or, as a SecAgg+ party, with their summed vector (:func:`secure_fit`)."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:  # secaggplus_mod's fit stage
        return secure_fit(msg, context)
    node, mine = _request(msg, context)
    fed = node.fed
    if fed.federation.privacy.secure_aggregation:
        raise FedLLMRecError(
            "the recipe sets federated.privacy.secure_aggregation: this node sends "
            "SecAgg+-masked sums only, never a client's upload"
        )
    check_flower_privacy(fed)
    run = msg.content.config_records["run"]
    positions = np.sort(np.asarray(run["clients"], dtype=np.int64))
    _check_clients(positions, mine)
    sent = record_tensors(msg.content.array_records["shared"])
    fed.check_shared(sent)  # clients start from ``sent``: the live tensors stay as they are
    load = record_tensors(msg.content.array_records["load"])["load"]
    _load_private(node, context.state, positions)
    parts: list[Part] = []
    round_ = record_int(run["round"])
    fed.node_training(positions, round_, sent, load, parts.append)
    uploads = ConfigRecord()
    own = fed.ownership
    for part in parts:
        if not isinstance(part, Uploads):  # a client engine emits each client's upload
            raise FedLLMRecError("a client engine emitted a summed upload")
        for i, pos in enumerate(part.positions.tolist()):
            uploads[str(pos)] = part.client(i, int(fed.clients[pos]), own).to_bytes()
    _store_private(fed, context.state, positions)
    return Message(RecordDict({"uploads": uploads}), reply_to=msg)


def secure_fit(msg: Message, context: Context) -> Message:
    """A NumPyClient-style fit as SecAgg+ party: train the named clients, return their sum.

    The fit instructions (``FitIns``) carry the round's tensors (every shared tensor in
    ownership order, then the routing load) and, in its config, the recipe, the round,
    the node's clients, the cohort size and the public bounds. The reply's only array is
    the node's vector scaled into [-1, 1] (:class:`SecureCodec`), which ``secaggplus_mod``
    quantises and masks before it leaves; ``num_examples`` is 1 so that SecAgg+'s
    weighted mean is the plain mean of the node vectors (the server multiplies it back).
    """
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config: Mapping[str, object] = fitins.config
    recipe = ConfigRecord(
        {k.removeprefix("recipe."): v for k, v in fitins.config.items() if k.startswith("recipe.")}
    )  # the recipe's text, overrides and data folder, as the plain messages carry it
    node, mine = _node(recipe, record_int(config["num-threads"]), context)
    fed = node.fed
    if not fed.federation.privacy.secure_aggregation:
        raise FedLLMRecError("a SecAgg+ round for a recipe without secure_aggregation")
    positions = np.sort(np.array(str(config["clients"]).split(","), dtype=np.int64))
    _check_clients(positions, mine)
    node_clients, cohort = record_int(config["node-clients"]), record_int(config["cohort"])
    if positions.shape[0] > node_clients:
        raise FedLLMRecError(f"{positions.shape[0]} clients over the round's bound {node_clients}")
    arrays = parameters_to_ndarrays(fitins.parameters)
    names = fed.ownership.names(*SHARED)
    if len(arrays) != len(names) + 1:
        raise FedLLMRecError(f"{len(arrays)} arrays for {len(names)} shared tensors and the load")
    sent = {name: torch.from_numpy(a.copy()) for name, a in zip(names, arrays[:-1], strict=True)}
    fed.check_shared(sent)
    load = torch.from_numpy(arrays[-1].copy())
    _load_private(node, context.state, positions)
    parts: list[Part] = []
    round_ = record_int(config["round"])
    fed.node_training(positions, round_, sent, load, parts.append, cohort=cohort, secure=False)
    codec = SecureCodec.of(fed, node_clients, cohort, SecureSettings.from_config(config))
    vector = codec.encode(codec.node_vector(parts))  # refuses before anything is stored
    _store_private(fed, context.state, positions)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector]), 1, {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Click probabilities of this node's users' held-out exposures, with their private rows.

    Replies with users, probabilities and labels (an ``ArrayRecord``); empty for a
    model that does not predict clicks.
    """
    node, mine = _request(msg, context)
    fed = node.fed
    role = str(msg.content.config_records["run"]["role"])
    shared = record_tensors(msg.content.array_records["shared"])
    users = np.zeros(0, dtype=np.int64)
    probs = labels = np.zeros(0, dtype=np.float64)
    if (
        isinstance(fed, FederatedRecommender)
        and fed.predicts_clicks
        and (split := fed.recommender.split) is not None
    ):
        _load_private(node, context.state, mine)
        fed.load_shared(shared)
        all_probs, all_labels = fed.predict(role)
        all_users = split.dataset.user[split.rows(role)].astype(np.int64)
        keep = np.isin(all_users, fed.clients[mine])
        users, probs, labels = all_users[keep], all_probs[keep], all_labels[keep]
    record = ArrayRecord({"user": Array(users), "prob": Array(probs), "label": Array(labels)})
    return Message(RecordDict({"predictions": record}), reply_to=msg)
