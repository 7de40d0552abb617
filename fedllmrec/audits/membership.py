"""Interaction-level membership inference against the final shared model, IMIA-style.

After Yuan et al., "Interaction-level Membership Inference Attack Against Federated
Recommender Systems" (WWW'23): the server, holding the global model it sends, simulates
the update an honest client would upload for a candidate item and asks whether the
client's real upload moved that item's row the same way. The construction here:

1. The final shared model (the run's ``best.pt``) is sent in one more round. The target
   clients train on it as usual (per-client engine, the seam and its protections), and
   the server receives their uploads. A sum (secure aggregation) gives each target the
   aggregate only.
2. For every item ``i`` the server simulates one honest client's local training from the
   same model and local configuration: a *shadow* client with a neutral private state
   (its private rows zero: the server never holds a client's) whose one training window
   is a context of the ``context`` items the round's aggregate moved most (a popularity
   estimate the server has) followed by ``i``. Its item-table delta's row ``i`` is the
   simulated update of a client holding ``i``.
3. The score of (client, ``i``) is the cosine between the simulated row and the row the
   client uploaded. Members are the client's training items (up to ``per_client``),
   non-members as many items the client never touched in any role, drawn uniformly.

Reported: the threshold-free AUC of the cosine over all target pairs; the attack proper,
a logistic regression on (cosine, log row norm) fitted on half of the target clients and
scored on the other half; and, as the user-independent baseline, the same pipeline with
each client's upload replaced by the aggregate of all targets' uploads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedllmrec.data.split import TRAIN, Split
from fedllmrec.federated.engines.per_client import train_clients
from fedllmrec.federated.ownership import Owner
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.federated.uploads import Part, ProtectedSum, UploadSum


def simulated_item_updates(
    fed: FederatedRecommender,
    table: str,
    sent: dict[str, torch.Tensor],
    load: torch.Tensor,
    context: np.ndarray,
    chunk: int = 32,
) -> torch.Tensor:
    """(I, D) row ``i`` of a shadow client's delta of ``table`` for a window ending in ``i``.

    ``context`` are item ids (0-based); the candidate is removed from its own context.
    """
    rec, own = fed.recommender, fed.ownership
    n_items = int(own[table].shape[0]) - 1
    width = int(rec.max_len) + 1
    out = torch.empty(n_items, own[table].shape[1])
    private = own.names(Owner.PRIVATE)
    for lo in range(0, n_items, chunk):
        items = np.arange(lo, min(lo + chunk, n_items))
        seq = np.zeros((items.shape[0], width), dtype=np.int64)
        for row, item in enumerate(items.tolist()):
            ctx = [c for c in context.tolist() if c != item][: width - 1]
            window = np.asarray([*ctx, item], dtype=np.int64) + 1  # 0 is padding
            seq[row, width - window.shape[0] :] = window
        batch = {
            "seq": torch.from_numpy(seq)[:, None],  # (C, W = 1, T + 1)
            "user": torch.zeros(items.shape[0], 1, dtype=torch.long),
        }
        rows = {
            name: torch.zeros(items.shape[0], 1, *own[name].shape[1:], dtype=torch.float32)
            for name in private
        }
        fed.net.train()  # as an honest client trains (dropout on)
        try:
            result = train_clients(
                fed.net, own, sent, rows, batch, load, fed.federation.local,
                fed.federation.strategy.proximal_mu,
            )  # fmt: skip
        finally:
            fed.net.eval()
        delta = result.shared_delta[table]  # (C, I + 1, D)
        out[items] = delta[torch.arange(items.shape[0]), torch.from_numpy(items) + 1]
    return out


def membership_inference(
    fed: FederatedRecommender,
    split: Split,
    table: str,
    *,
    n_clients: int = 200,
    per_client: int = 50,
    context: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """IMIA-style membership inference on the loaded final model (see the module docstring).

    ``fed`` must hold the run's final state; the target clients' private rows move by one
    round of local training.
    """
    rng = np.random.default_rng(seed)
    ds = split.dataset
    train = split.role == TRAIN
    positions = np.flatnonzero(fed.population.examples > 0)
    targets = np.sort(rng.choice(positions, min(n_clients, positions.shape[0]), replace=False))
    plan = fed.plan_round()  # the round after the last: what the final model is sent in
    uploads, aggregate = _received(fed, plan.number, plan.sent, plan.load, targets, table)
    norms = torch.linalg.vector_norm(aggregate[1:], dim=1)
    popular = np.argsort(-norms.numpy(), kind="stable")[: context + 1]
    simulated = simulated_item_updates(fed, table, plan.sent, plan.load, popular)

    touched = split.touched
    pairs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (client row, items, labels)
    for row, position in enumerate(targets.tolist()):
        user = int(fed.clients[position])
        members = np.unique(ds.item[train & (ds.user == user)])
        members = rng.permutation(members)[:per_client]
        never = np.flatnonzero(~touched.contains(np.full(ds.n_items, user), np.arange(ds.n_items)))
        others = rng.choice(never, min(members.shape[0], never.shape[0]), replace=False)
        items = np.concatenate([members, others])
        labels = np.r_[np.ones(members.shape[0]), np.zeros(others.shape[0])]
        pairs.append((row, items, labels))

    def features(received: list[torch.Tensor]) -> list[np.ndarray]:
        out = []
        for row, items, _ in pairs:
            got = received[row][torch.from_numpy(items) + 1]  # (m, D)
            sim = simulated[torch.from_numpy(items)]
            cos = torch.nn.functional.cosine_similarity(got, sim, dim=1, eps=1e-12)
            norm = torch.log(torch.linalg.vector_norm(got, dim=1) + 1e-12)
            out.append(torch.stack([cos, norm], dim=1).double().numpy())
        return out

    own_view = features(uploads)
    agg_view = features([aggregate] * len(targets))
    labels = [p[2] for p in pairs]
    half = rng.permutation(len(pairs)) < len(pairs) // 2  # attack model's training clients
    ours, base = _learned(own_view, labels, half), _learned(agg_view, labels, half)
    y = np.concatenate(labels)
    return {
        "n_users": len(pairs),
        "n_pairs": int(y.shape[0]),
        "metric": "AUC",
        "value": ours,
        "baseline": base,
        "baseline_kind": "aggregate",
        "cosine_auc": _auc(y, np.concatenate([f[:, 0] for f in own_view])),
        "norm_auc": _auc(y, np.concatenate([f[:, 1] for f in own_view])),
        "round": plan.number,
    }


def _received(
    fed: FederatedRecommender,
    round_: int,
    sent: dict[str, torch.Tensor],
    load: torch.Tensor,
    targets: np.ndarray,
    table: str,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each target's received delta of ``table`` (the aggregate under a sum) and the sum."""
    per_client: dict[int, torch.Tensor] = {}
    total = torch.zeros(fed.ownership[table].shape)
    sums = False

    def emit(part: Part) -> None:
        nonlocal total, sums
        if isinstance(part, UploadSum | ProtectedSum):
            sums = True
            total = total + part.sums[table]
            return
        delta = part.deltas[table].detach()
        total = total + delta.sum(0)
        for c, position in enumerate(np.asarray(part.positions).tolist()):
            per_client[int(position)] = delta[c].clone()

    fed.local_training(
        targets, round_, sent, load, emit, engine=fed.client_engine(), cohort=len(targets)
    )
    if sums:  # the server learns only the sum: every target looks like the aggregate
        return [total] * len(targets), total
    return [per_client[int(p)] for p in targets.tolist()], total


def _learned(features: list[np.ndarray], labels: list[np.ndarray], train: np.ndarray) -> float:
    """AUC on the held-out clients of a logistic regression fitted on the ``train`` clients."""
    fit = [i for i in range(len(features)) if train[i]]
    test = [i for i in range(len(features)) if not train[i]]
    x_fit = np.concatenate([features[i] for i in fit])
    y_fit = np.concatenate([labels[i] for i in fit])
    x_test = np.concatenate([features[i] for i in test])
    y_test = np.concatenate([labels[i] for i in test])
    x_fit, x_test = np.nan_to_num(x_fit), np.nan_to_num(x_test)
    if np.unique(y_fit).shape[0] < 2:
        return 0.5
    model = LogisticRegression(max_iter=1000).fit(x_fit, y_fit)
    return _auc(y_test, model.predict_proba(x_test)[:, 1])


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    if np.unique(y).shape[0] < 2:
        return 0.5
    return float(roc_auc_score(y, np.nan_to_num(scores)))
