"""Run baselines under the protocol and report them as one table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from fedllmrec.data.prepare import Prepared
from fedllmrec.eval.ranking import Mode, evaluate_ranking
from fedllmrec.models.base import Recommender
from fedllmrec.models.baselines import ItemKNN, ItemKNNConfig, Popularity

SELECTION_METRIC = "NDCG@10"


def run_baselines(
    prepared: Prepared,
    *,
    modes: Sequence[Mode] = ("full", "sampled"),
    neighbours: Sequence[int] = (10, 20, 50, 100, 200),
    ks: Sequence[int] = (10,),
) -> list[dict[str, Any]]:
    """Popularity and item-kNN, with kNN's neighbourhood size chosen on validation.

    For each mode, every candidate configuration is scored on the validation
    interactions; the one with the best validation NDCG@10 is then scored once
    on test. Returns one record per (model, mode).
    """
    records: list[dict[str, Any]] = []
    popularity = Popularity().fit(prepared.split)
    knn_models: list[tuple[dict[str, Any], Recommender]] = [
        ({"neighbours": k}, ItemKNN(ItemKNNConfig(neighbours=k)).fit(prepared.split))
        for k in neighbours
    ]
    for mode in modes:
        candidates: dict[str, list[tuple[dict[str, Any], Recommender]]] = {
            "popularity": [({}, popularity)],
            "item-knn": knn_models,
        }
        for name, options in candidates.items():
            scored = [
                (evaluate_ranking(model, prepared, role="valid", mode=mode, ks=ks), params, model)
                for params, model in options
            ]
            valid, best_params, best_model = max(
                scored, key=lambda s: s[0]["metrics"][SELECTION_METRIC]
            )
            test = evaluate_ranking(best_model, prepared, role="test", mode=mode, ks=ks)
            records.append(
                {
                    "model": name,
                    "params": best_params,
                    "mode": test["mode"],
                    "valid": valid["metrics"],
                    "test": test["metrics"],
                    "test_domains": test["domains"],
                    "rows": test["rows"],
                }
            )
    return records


def metrics_table(records: Sequence[dict[str, Any]], title: str) -> Table:
    """A rich table with one row per record and test metrics as columns."""
    table = Table(title=title)
    metric_names = list(records[0]["test"]) if records else []
    for column in ("model", "params", "protocol", "test rows"):
        table.add_column(column)
    for name in metric_names:
        table.add_column(f"test {name}", justify="right")
    for rec in records:
        params = ", ".join(f"{k}={v}" for k, v in rec["params"].items()) or "-"
        table.add_row(
            rec["model"],
            params,
            rec["mode"],
            str(rec["rows"]),
            *(f"{rec['test'][m]:.4f}" for m in metric_names),
        )
    return table
