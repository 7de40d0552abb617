"""Adapter uploads: which items a domain client trained the LLM on, from its global delta.

A domain client of :class:`~fedllmrec.federated.adapters.FederatedLLM` uploads the
change of the global tensors (the global adapter's ``B``, its ``A`` too under naive
aggregation, and the soft tokens' projectors), never its private adapter. The server
holds the frozen LLM and the tensors it sent, so it can apply an upload and ask the
adapted LLM how each item's title moved: the ranking loss raises each training row's
target above its negatives, so a title whose likelihood rose is likely a target the
client trained on. A domain's catalogue is public; which of its items its users bought
is the domain's own data.

:func:`adapter_item_inference` replays one round from the run's final model (each
survivor trains as usual; the rows each one trained on are the ground truth,
``TunedLLMRecommender.last_rows``) and scores every item as the server can: its
title's length-normalised log-likelihood as a candidate in neutral prompts (no
history, ``group`` items listed, the same seeded grouping before and after), with the
sent tensors and with the sent tensors plus the upload. The attack score is the rise.
Members: the targets the client's upload trained on; non-members: as many times more of
the domain's items that occur in none of the client's training rows. Reported per domain:
the AUC (random: 0.5) from the client's own upload and from the round's aggregate (the
server's next model: all that secure aggregation shows). The prompts carry no soft token
(the item tokens need the domain's private ID table), so the attack reads the adapters,
not the projectors.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from fedllmrec.audits.attacks import ranking_auc
from fedllmrec.audits.report import AUDIT, final_checkpoint
from fedllmrec.errors import FedLLMRecError
from fedllmrec.federated.adapters import FederatedLLM
from fedllmrec.federated.uploads import Part, ProtectedUploads, Uploads
from fedllmrec.io import atomic_write_json
from fedllmrec.train.trainer import load_checkpoint


@dataclass(frozen=True)
class AdapterAuditConfig:
    """Sizes of the adapter attack.

    Parameters
    ----------
    members : int
        At most this many trained targets per client are scored.
    non_members : int
        Non-members scored per member.
    group : int
        Items listed in each neutral prompt (the evaluation lists 20).
    seed : int
        Seeds the non-member draw and the grouping.
    """

    members: int = 64
    non_members: int = 4
    group: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.members, self.non_members, self.group) < 1:
            raise FedLLMRecError(f"adapter audit sizes must be >= 1, got {self}")


@torch.no_grad()
def title_scores(fed: FederatedLLM, items: np.ndarray, order: np.ndarray, group: int) -> np.ndarray:
    """(n,) each item's score as a candidate in neutral prompts, with the live tensors
    (and the fresh private adapter): ``items[order]`` cut into prompts of ``group``."""
    rec = fed.recommender
    if rec.prompts is None or rec.model is None:
        raise RuntimeError("call setup() first")
    out = np.empty(items.shape[0], dtype=np.float64)
    for lo in range(0, order.shape[0], group):
        index = order[lo : lo + group]
        shown = items[index]
        prompt = rec.prompts.encode([], shown.tolist())
        embeds = rec.embed_prompt(prompt)  # (P, H), no soft token
        out[index] = rec.score_row(embeds, shown).float().numpy()
    return out


def _applied(sent: Mapping[str, torch.Tensor], part: Part) -> dict[str, torch.Tensor]:
    """The sent tensors plus one client's (unsummed) upload."""
    if not isinstance(part, Uploads | ProtectedUploads) or len(part) != 1:
        raise FedLLMRecError("the adapter audit needs each client's own upload")
    return {name: value + part.deltas[name][0] for name, value in sent.items()}


def adapter_item_inference(
    fed: FederatedLLM, config: AdapterAuditConfig | None = None
) -> dict[str, Any]:
    """Replay one round from ``fed``'s current model and attack each domain's upload.

    ``fed`` is consumed: its round runs (its server state moves). Returns the round and,
    under ``"domains"``, per domain name the AUC of the own-upload and aggregate views,
    with the member and non-member counts.
    """
    config = config or AdapterAuditConfig()
    rec = fed.recommender
    if fed.federation.partition != "domain" or rec.rows is None or rec.split is None:
        raise FedLLMRecError("the adapter audit attacks domain clients of a set-up FederatedLLM")
    rows, ds = rec.rows, rec.split.dataset
    rng = np.random.default_rng([config.seed, 11])
    plan = fed.plan_round()
    uploads: dict[int, Part] = {}
    trained: dict[int, np.ndarray] = {}
    for position in plan.survivors.tolist():
        parts: list[Part] = []
        # One client at a time: each client's draws are seeded by (seed, round, client),
        # so this is the round the federation runs, with each one's rows known.
        fed.local_training(
            np.array([position]),
            plan.number,
            plan.sent,
            parts.append,
            cohort=len(plan.participants),
            secure=False,
        )
        uploads[position], trained[position] = parts[0], rec.last_rows.copy()

    targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # position -> (items, members)
    for position, trained_rows in trained.items():
        domain = int(fed.clients[position])
        members = np.unique(rows.targets[trained_rows])
        members = np.sort(rng.permutation(members)[: config.members])
        own_rows = rows.of_domain(domain)
        seen = np.unique(
            np.concatenate([rows.targets[own_rows], *[rows.histories[r] for r in own_rows]])
        )
        pool = np.setdiff1d(rec.split.active_items(domain), seen)
        n_out = min(pool.shape[0], config.non_members * members.shape[0])
        outside = np.sort(rng.choice(pool, n_out, replace=False))
        items = np.concatenate([members, outside])
        targets[position] = (items, np.arange(members.shape[0]))
    orders = {p: rng.permutation(items.shape[0]) for p, (items, _) in targets.items()}

    def scored(positions: list[int]) -> dict[int, np.ndarray]:
        return {p: title_scores(fed, targets[p][0], orders[p], config.group) for p in positions}

    fed.load_shared(plan.sent)
    before = scored(list(targets))
    own: dict[int, np.ndarray] = {}
    for position, part in uploads.items():
        fed.load_shared(_applied(plan.sent, part))
        own[position] = scored([position])[position] - before[position]
    fed.load_shared(plan.sent)
    aggregator = fed.new_aggregator(plan.number)
    for position in sorted(uploads):
        aggregator.add(uploads[position])
    fed.finish_round(plan, aggregator)  # the live tensors: the server's next model
    after = scored(list(targets))
    by_domain: dict[str, Any] = {}
    for position, (items, members) in targets.items():
        rise = after[position] - before[position]
        by_domain[str(ds.domains[int(fed.clients[position])])] = {
            "metric": "member AUC",
            "members": int(members.shape[0]),
            "non_members": int(items.shape[0] - members.shape[0]),
            "upload": ranking_auc(own[position], members),
            "aggregate": ranking_auc(rise, members),
            "baseline": 0.5,
            "baseline_kind": "random",
        }
    return {"round": plan.number, "group": config.group, "domains": by_domain}


def audit_adapter_run(
    fed: FederatedLLM, run_dir: str | Path, config: AdapterAuditConfig | None = None
) -> dict[str, Any]:
    """:func:`adapter_item_inference` on a finished LLM run's final model (``best.pt``,
    else ``last.pt``); writes ``run_dir/audit.json``. ``fed``: set up and untrained."""
    run_dir = Path(run_dir)
    checkpoint = final_checkpoint(run_dir)
    start = time.perf_counter()
    fed.load_state_dict(load_checkpoint(checkpoint)["model"])
    report = {
        "run": str(run_dir),
        "checkpoint": checkpoint.name,
        "privacy": fed.privacy_info(),
        "adapter_items": adapter_item_inference(fed, config),
        "seconds": {"adapter_items": time.perf_counter() - start},
    }
    atomic_write_json(run_dir / AUDIT, report)
    return report


def adapter_audit_table(report: Mapping[str, Any], title: str) -> Table:
    """The adapter audit as one table: per domain, the own-upload and aggregate AUCs."""
    table = Table(title=title)
    for column in ("domain", "members / non-members", "own upload AUC", "aggregate AUC",
                   "random"):  # fmt: skip
        table.add_column(column)
    for domain, result in report["adapter_items"]["domains"].items():
        table.add_row(
            domain,
            f"{result['members']} / {result['non_members']}",
            f"{result['upload']:.3f}",
            f"{result['aggregate']:.3f}",
            f"{result['baseline']:.1f}",
        )
    return table
