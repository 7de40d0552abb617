"""``fedllmrec audit``: every attack on one federated run, with its baseline, as one report.

:func:`audit_run` replays the run's first rounds as its server saw them
(:mod:`.views`), loads its final model, and runs the attacks of :mod:`.attacks` and
:mod:`.membership`; it writes the result to ``RUN_DIR/audit.json``.
:func:`audit_table` renders it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from fedllmrec.audits.attacks import (
    attribute_inference,
    attribute_targets,
    code_recovery,
    itemset_reconstruction,
    multi_hot,
)
from fedllmrec.audits.domain import domain_popularity
from fedllmrec.audits.membership import membership_inference
from fedllmrec.audits.views import ServerView, item_tables, replay_server_view, text_adaptors
from fedllmrec.data.prepare import Prepared
from fedllmrec.data.split import TRAIN, Split
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.io import atomic_write_json
from fedllmrec.models.click import ClickRecommender
from fedllmrec.train.trainer import load_checkpoint

AUDIT = "audit.json"
USER_FEATURE_TABLE = "model.user_feature_embs.{}.weight"


def final_checkpoint(run_dir: Path) -> Path:
    """The run's final model: ``best.pt``, else ``last.pt``."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise FedLLMRecError(f"{run_dir}: no best.pt or last.pt to audit the final model")


def training_items(split: Split, users: np.ndarray) -> list[np.ndarray]:
    """Each user's distinct training items."""
    ds = split.dataset
    rows = split.rows(TRAIN)
    order = np.argsort(ds.user[rows], kind="stable")
    by_user, items = ds.user[rows][order], ds.item[rows][order]
    bounds = np.searchsorted(by_user, np.arange(ds.n_users + 1))
    return [np.unique(items[bounds[u] : bounds[u + 1]]) for u in users.tolist()]


def top_k_lists(
    fed: FederatedRecommender, split: Split, users: np.ndarray, k: int = 10, batch: int = 128
) -> list[np.ndarray]:
    """Each user's top-``k`` full-ranking list from the final model with its private state.

    Candidates are every item the user never touched in any role (the deployed list
    recommends new items); the model reads the user's train and validation history.
    """
    ds = split.dataset
    history, touched = split.observed("test"), split.touched
    catalogue = np.arange(ds.n_items)
    out: list[np.ndarray] = []
    for lo in range(0, users.shape[0], batch):
        u = users[lo : lo + batch]
        items = np.broadcast_to(catalogue, (u.shape[0], ds.n_items))
        scores = np.asarray(fed.score(u, items, history), dtype=np.float64)
        scores[touched.grid_hits(u, catalogue)] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        out.extend(np.sort(row) for row in top)
    return out


def _private_features(fed: FederatedRecommender, positions: np.ndarray) -> np.ndarray:
    rows = fed.private_rows(positions)  # trainable private rows only, never the feature codes
    flat = [value.reshape(value.shape[0], -1).numpy() for value in rows.values()]
    return np.concatenate(flat, axis=1) if flat else np.zeros((positions.shape[0], 0))


def rebuilt_sets(scores: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Each client's top-``sizes[c]`` items by score: the item set the server rebuilds."""
    return [np.argsort(-row, kind="stable")[: int(k)] for row, k in zip(scores, sizes, strict=True)]


def _seen_by(view_name: str, seen: dict[str, np.ndarray]) -> np.ndarray:
    """The clients a view shows: the server's views only those it saw; the rest, all."""
    if view_name.startswith(("server, round 1", "routing, round 1")):
        return seen["first"]
    if view_name.startswith(("server, rounds", "routing, rounds")):
        return seen["total"]
    return np.ones_like(seen["first"])


def _views(view: ServerView, tables: list[str], n_items: int) -> dict[str, np.ndarray]:
    """The server-side feature sets the attribute attacks are run on."""
    out = {"server, round 1": view.features("first")}
    examples = view.header("first").get("examples")
    if tables and examples is not None:
        # The server's own chain: the header's example count + 1 is the history length,
        # the largest rows the items; then the raw-data attack on the rebuilt sets.
        sizes = np.rint(np.expm1(examples[:, 0])) + 1
        rebuilt = rebuilt_sets(view.norms("first")[tables[0]][:, 1:], sizes)
        out["server, round 1: item set rebuilt"] = multi_hot(rebuilt, n_items, min_users=5)
    if view.rounds > 1:
        out[f"server, rounds 1-{view.rounds}"] = view.features("total")
    for which, label in (("first", "round 1"), ("total", f"rounds 1-{view.rounds}")):
        if which == "total" and view.rounds == 1:
            continue
        header = view.header(which)
        routing = header.get("routing", header.get("header"))
        if routing is not None:
            out[f"routing, {label}"] = routing
    return out


def audit_run(
    fed: FederatedRecommender,
    prepared: Prepared,
    run_dir: str | Path,
    *,
    rounds: int = 1,
    max_users: int | None = None,
    mia_clients: int = 200,
    attributes: Sequence[str] | None = None,
    seed: int = 0,
    quick: bool = False,
) -> dict[str, Any]:
    """Run every attack on a federated run and write ``run_dir/audit.json``.

    Parameters
    ----------
    fed : FederatedRecommender
        The run's federation, set up and untrained (``recipe.build_federation``).
    prepared : Prepared
        Its prepared data (the split the run trained on).
    run_dir : path
        The run folder: ``best.pt`` (else ``last.pt``) holds the final model.
    rounds : int
        Rounds replayed for the server's view.
    max_users : int, optional
        Attack a seeded sample of this many clients (every client still trains).
    mia_clients : int
        Target clients of the membership attack.
    attributes : sequence of str, optional
        Attack only these attributes (default every one :func:`attribute_targets` gives).
    seed : int
        Seeds the samples and the attack folds.
    quick : bool
        Attribute models with a fixed k = 128 and no inner CV: about 12x faster, weaker
        (the demo's audit); ``audit.json`` says ``"quick": true``.
    """
    run_dir = Path(run_dir)
    checkpoint = final_checkpoint(run_dir)
    if fed.server.records:
        raise FedLLMRecError("audit_run needs a fresh federation: its rounds are replayed")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    split, ds = prepared.split, prepared.dataset
    rng = np.random.default_rng(seed)
    positions = np.arange(len(fed.population))
    if max_users is not None and max_users < positions.shape[0]:
        positions = np.sort(rng.choice(positions, max_users, replace=False))
    users = fed.clients[positions]
    torch.manual_seed(seed)  # dropout draws of the replayed local training

    adaptors = text_adaptors(fed)
    view = replay_server_view(fed, rounds, positions, adaptors)
    seconds["replay"] = time.perf_counter() - start
    report: dict[str, Any] = {
        "run": str(run_dir),
        "quick": quick,
        "checkpoint": checkpoint.name,
        "rounds_replayed": rounds,
        "engine_replayed": fed.client_engine().name,
        "users_attacked": int(positions.shape[0]),
        "per_client_uploads_seen": view.per_client,
        "privacy": fed.privacy_info(),
    }

    tables = item_tables(fed)
    if fed.federation.partition == "domain":
        # A client is a whole domain (its catalogue is public): no user-level target, but
        # how often each of its items was bought is the domain's own data.
        keys = [*tables, *(f"{name} @ text" for name in adaptors)]
        report["domain_popularity"] = (
            domain_popularity(view, split, keys, users)
            if keys
            else {"skipped": "no shared item table or text adaptor"}
        )
        for attack in ("itemset", "attributes", "membership"):
            report[attack] = {"skipped": "domain clients: no per-user upload"}
        return _written(report, seconds, run_dir)
    histories = training_items(split, users)
    # The server sees a client only in the rounds it took part in (Poisson sampling takes
    # a share q of them): its attacks are scored on the clients it saw.
    seen: dict[str, np.ndarray] = {
        "first": np.asarray(view.present[:, 0], dtype=bool),
        "total": np.asarray(view.present.any(axis=1), dtype=bool),
    }
    report["clients_seen"] = {k: int(v.sum()) for k, v in seen.items()}
    itemset: dict[str, Any] = {}
    for name in tables:
        for which, label in (("first", "round 1"), ("total", f"rounds 1-{rounds}")):
            if which == "total" and rounds == 1:
                continue
            mask = seen[which]
            scores = view.norms(which)[name][mask, 1:]  # row 0 is the padding item
            key = label if len(tables) == 1 else f"{name}, {label}"
            baseline = view.aggregate(which)[name][1:]
            picked = [histories[i] for i in np.flatnonzero(mask)]
            itemset[key] = itemset_reconstruction(scores, picked, baseline)
    report["itemset"] = itemset or {"skipped": "no shared table with one row per item"}

    features = list(getattr(fed.recommender, "user_features", ()))
    codes = fed.net.tensors().get("model.user_features")
    recovery: dict[str, Any] = {}
    for f, feature in enumerate(features):
        name = USER_FEATURE_TABLE.format(f)
        if name in view.first_norms and codes is not None:
            truth = codes[torch.from_numpy(users), f].numpy()  # the label, not an input
            mask = seen["first"]
            recovery[feature] = code_recovery(view.first_norms[name][mask], truth[mask])
    if recovery:
        report["code_recovery"] = recovery

    fed.load_state_dict(load_checkpoint(checkpoint)["model"])
    views = _views(view, tables, ds.n_items)
    if not isinstance(fed.recommender, ClickRecommender):
        views["top-10 recommendations"] = multi_hot(top_k_lists(fed, split, users), ds.n_items)
    views["private parameters"] = _private_features(fed, positions)
    views["raw: training items"] = multi_hot(histories, ds.n_items, min_users=5)
    seconds["views"] = time.perf_counter() - start - sum(seconds.values())

    targets = attribute_targets(ds)
    if attributes is not None:
        unknown = sorted(set(attributes) - targets.keys())
        if unknown:
            raise FedLLMRecError(f"unknown attribute(s) {unknown}; {ds.name} has {list(targets)}")
        targets = {name: targets[name] for name in attributes}
    masks = {name: _seen_by(name, seen) for name in views}
    report["attributes"] = {
        target: {
            name: attribute_inference(
                x[masks[name]], labels[users][masks[name]], seed=seed, search=not quick
            )
            for name, x in views.items()
        }
        for target, labels in targets.items()
    }
    seconds["attributes"] = time.perf_counter() - start - sum(seconds.values())

    if tables:
        report["membership"] = membership_inference(
            fed, split, tables[0], n_clients=mia_clients, seed=seed
        )
    else:
        report["membership"] = {"skipped": "no shared table with one row per item"}
    seconds["membership"] = time.perf_counter() - start - sum(seconds.values())
    return _written(report, seconds, run_dir)


def _written(report: dict[str, Any], seconds: dict[str, float], run_dir: Path) -> dict[str, Any]:
    """The report with its stage timings, written to ``run_dir/audit.json``."""
    report["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    atomic_write_json(run_dir / AUDIT, report)
    return report


def audit_table(report: dict[str, Any], title: str = "audit") -> Table:
    """The report as one table: attack, what it sees, metric, value, baseline."""
    table = Table(title=title, caption="baseline: random / majority / aggregate, as named")
    for column in ("attack", "view", "metric", "value", "baseline"):
        table.add_column(column, justify="right" if column in ("value", "baseline") else "left")

    def row(attack: str, view: str, result: dict[str, Any]) -> None:
        if "value" not in result:  # skipped: the reason in place of the view
            table.add_row(attack, f"n/a: {result.get('skipped', '-')}", "-", "-", "-")
            return
        base = f"{result['baseline']:.3f} ({result['baseline_kind']})"
        table.add_row(attack, view, result["metric"], f"{result['value']:.3f}", base)

    def row_and_auc(attack: str, view: str, result: dict[str, Any], auc_metric: str) -> None:
        row(attack, view, result)
        auc = {**result, "metric": auc_metric, "value": result["auc"]}
        row(attack, view, auc | {"baseline": result["baseline_auc"]})

    itemset = report.get("itemset", {})
    if "skipped" in itemset:
        row("item set", "", itemset)
    for label, result in itemset.items():
        if isinstance(result, dict):
            row_and_auc("item set", label, result, "ranking AUC")
    popularity = report.get("domain_popularity", {})
    if "skipped" in popularity:
        row("domain item popularity", "", popularity)
    for label, by_view in popularity.items():
        if isinstance(by_view, dict):
            for view, result in by_view.items():
                what = f"{label}: {'own upload' if view == 'upload' else 'aggregate'}, round 1"
                row_and_auc("domain item popularity", what, result, "top-decile AUC")
    for feature, result in report.get("code_recovery", {}).items():
        row(f"code of {feature}", "feature-table delta, round 1", result)
    attributes = report.get("attributes", {})
    if "skipped" in attributes:
        row("attributes", "", attributes)
    for target, by_view in attributes.items():
        if isinstance(by_view, dict):
            for view, result in by_view.items():
                row(target, view, result)
    if "membership" in report:
        membership = report["membership"]
        row("membership (IMIA)", f"round {membership.get('round', '-')}", membership)
    return table
