"""The ClientApp: a SuperNode holding a partition of the clients and their private rows.

Every SuperNode is a silo holding a share of the clients (users or domains):
positions ``partition-id::num-partitions`` of the federation's client population,
from its node config. Each client's private rows (user embeddings, user FFNs) stay in
the node's ``context.state`` and are never sent. A ``train`` message runs the round's
local training of the named clients (the simulator's
:meth:`~fedllmrec.federated.simulator.FederatedRecommender.local_training`, with the
per-client engine a real client runs, through the same upload transforms) and replies
with each client's upload in its wire format.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedllmrec.apps.flower.config import (
    RecipeSource,
    node_partition,
    partition_positions,
    record_int,
    record_tensors,
    set_threads,
)
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import Part, Uploads

PRIVATE_STATE = "fedllmrec.private"  # context.state key of a node's private rows


@dataclass
class NodeFederation:
    """A node's rebuilt federation and the private rows it was built with."""

    fed: FederatedRecommender
    initial: dict[str, torch.Tensor]  # trainable private name -> every user's initial rows


_BUILT: dict[RecipeSource, NodeFederation] = {}
_BUILT_LOCK = threading.Lock()


def node_federation(source: RecipeSource) -> NodeFederation:
    """The federation of ``source``, built once per process (a simulation actor serves
    every round and several nodes; the newest recipe replaces older ones)."""
    with _BUILT_LOCK:
        if source not in _BUILT:
            _BUILT.clear()
            fed = source.load().build_federation()
            every = dict(fed.net.named_parameters())
            private = fed.ownership.private_parameters()
            initial = {name: every[name].detach().clone() for name in private}
            _BUILT[source] = NodeFederation(fed, initial)
        return _BUILT[source]


def _request(msg: Message, context: Context) -> tuple[NodeFederation, np.ndarray]:
    """The node's federation and its client positions, from a message and the node config."""
    set_threads(record_int(msg.content.config_records["run"]["num-threads"]))
    node_dir = str(context.node_config.get("data-dir", ""))
    source = RecipeSource.from_record(msg.content.config_records["recipe"], node_dir)
    node = node_federation(source)
    part, parts = node_partition(context.node_config)
    return node, partition_positions(len(node.fed.population), part, parts)


def _load_private(node: NodeFederation, state: RecordDict, positions: np.ndarray) -> None:
    """Write the clients' private rows from the node state (first use: the built model's)."""
    fed = node.fed
    stored = state.array_records.get(PRIVATE_STATE, ArrayRecord())
    users = fed.clients[positions].tolist()
    rows: dict[str, torch.Tensor] = {}
    for name, initial in node.initial.items():
        keys = [f"{user}/{name}" for user in users]
        rows[name] = torch.stack(
            [
                torch.from_numpy(stored[key].numpy()) if key in stored else initial[user]
                for key, user in zip(keys, users, strict=True)
            ]
        )
    fed.write_private_rows(positions, rows)


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
    node, mine = _request(msg, context)
    fed = node.fed
    run = msg.content.config_records["run"]
    positions = np.sort(np.asarray(run["clients"], dtype=np.int64))
    if not np.isin(positions, mine).all():
        raise FedLLMRecError(f"asked to train clients {positions.tolist()} of another partition")
    sent = record_tensors(msg.content.array_records["shared"])
    fed.check_shared(sent)  # clients start from ``sent``: the live tensors stay as they are
    load = record_tensors(msg.content.array_records["load"])["load"]
    _load_private(node, context.state, positions)
    parts: list[Part] = []
    round_ = record_int(run["round"])
    fed.local_training(positions, round_, sent, load, parts.append, fed.client_engine())
    stored = context.state.array_records.get(PRIVATE_STATE, ArrayRecord())
    uploads = ConfigRecord()
    own = fed.ownership
    for part in parts:
        if not isinstance(part, Uploads):  # a client engine emits each client's upload
            raise FedLLMRecError("a client engine emitted a summed upload")
        rows = fed.private_rows(part.positions)  # the clients' new rows: kept, never sent
        for i, pos in enumerate(part.positions.tolist()):
            user = int(fed.clients[pos])
            uploads[str(pos)] = part.client(i, user, own).to_bytes()
            for name, value in rows.items():
                stored[f"{user}/{name}"] = Array(value[i].numpy())
    context.state[PRIVATE_STATE] = stored
    return Message(RecordDict({"uploads": uploads}), reply_to=msg)


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
    split = fed.recommender.split
    if hasattr(fed.recommender, "predict") and split is not None:
        _load_private(node, context.state, mine)
        fed.load_shared(shared)
        all_probs, all_labels = fed.predict(role)
        all_users = split.dataset.user[split.rows(role)].astype(np.int64)
        keep = np.isin(all_users, fed.clients[mine])
        users, probs, labels = all_users[keep], all_probs[keep], all_labels[keep]
    record = ArrayRecord({"user": Array(users), "prob": Array(probs), "label": Array(labels)})
    return Message(RecordDict({"predictions": record}), reply_to=msg)
