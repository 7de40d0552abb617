"""The privacy table and the utility/privacy frontier, from trained and audited run folders.

Each run folder holds ``metrics.json`` (``fedllmrec train``) and ``audit.json``
(``fedllmrec audit``). The script writes one markdown table (stdout and ``--table``)
and a frontier plot (``--png``): 1+99 HR@10 against epsilon and against the
server's item-set reconstruction F1.

    python scripts/bench_privacy.py "none=runs/privacy/ml-none" \\
        "secure aggregation=runs/privacy/ml-secagg" ... --png docs/privacy-frontier.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _get(tree: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def row_of(label: str, folder: Path) -> dict[str, Any]:
    """One table row: utility from metrics.json, attacks from audit.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    audit_path = folder / "audit.json"
    audit = json.loads(audit_path.read_text()) if audit_path.is_file() else {}
    privacy = metrics.get("privacy", {})
    attributes = audit.get("attributes", {})
    first_attr = next(iter(attributes), None)

    def attr(target: str | None, view: str) -> Any:
        return _get(attributes, target, view, "value") if target else None

    itemset = _get(audit, "itemset", "round 1") or {}
    click = "AUC" in metrics["test"]
    return {
        "label": label,
        "run": str(folder),
        "rounds": f"{metrics['best_epoch']}/{metrics['stopped_epoch']}",
        "hr": metrics["test"].get("sampled/HR@10"),
        "ndcg": metrics["test"].get("sampled/NDCG@10"),
        "full_hr": metrics["test"].get("full/HR@10"),
        "auc": metrics["test"].get("AUC") if click else None,
        "itemset_f1": itemset.get("value"),
        "itemset_base": itemset.get("baseline"),
        "gender_server": attr("gender", "server, round 1"),
        "age_server": attr("age4", "server, round 1"),
        "gender_routing": attr("gender", "routing, round 1"),
        "gender_top10": attr("gender", "top-10 recommendations"),
        "first_attr": first_attr,
        "attr_server": attr(first_attr, "server, round 1"),
        "attr_routing": attr(first_attr, "routing, round 1"),
        "attr_private": attr(first_attr, "private parameters"),
        "code_recovery": _get(audit, "code_recovery", first_attr or "", "value"),
        "membership": _get(audit, "membership", "value"),
        "epsilon": privacy.get("epsilon", float("inf")),
    }


def markdown(rows: list[dict[str, Any]], click: bool) -> str:
    if click:
        attr = next((r["first_attr"] for r in rows if r["first_attr"]), "attribute")
        head = [
            "protection", "rounds", "test AUC", f"{attr}: server view",
            "routing", "private params", "feature code from delta", "epsilon",
        ]  # fmt: skip
        keys = ["rounds", "auc", "attr_server", "attr_routing", "attr_private", "code_recovery",
                "epsilon"]  # fmt: skip
    else:
        head = [
            "protection", "rounds", "1+99 HR@10", "1+99 NDCG@10", "full HR@10",
            "item-set F1 (server)", "gender AUC (server)", "age bal. acc. (server)",
            "gender AUC (routing)", "gender AUC (top-10)", "membership AUC", "epsilon",
        ]  # fmt: skip
        keys = ["rounds", "hr", "ndcg", "full_hr", "itemset_f1", "gender_server", "age_server",
                "gender_routing", "gender_top10", "membership", "epsilon"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"]]
        for key in keys:
            value = row[key]
            cells.append(
                value if isinstance(value, str) else _fmt(value, 2 if key == "epsilon" else 4)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in rows:
        if row["hr"] is None:
            continue
        eps = row["epsilon"]
        x = 60.0 if math.isinf(eps) else eps
        left.scatter(x, row["hr"], s=30)
        left.annotate(row["label"], (x, row["hr"]), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")  # fmt: skip
        if row["itemset_f1"] is not None:
            right.scatter(row["itemset_f1"], row["hr"], s=30)
            right.annotate(row["label"], (row["itemset_f1"], row["hr"]), fontsize=7,
                           xytext=(3, 3), textcoords="offset points")  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("epsilon at delta = 1e-5 (no DP plotted at 60)")
    left.set_ylabel("test 1+99 HR@10")
    left.set_title("utility against epsilon")
    right.set_xlabel("item-set reconstruction F1 from the server's view (round 1)")
    right.set_title("utility against what the server recovers")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=run folder")
    parser.add_argument("--png", help="write the frontier plot here")
    parser.add_argument("--table", help="write the markdown table here")
    args = parser.parse_args()
    rows = []
    for spec in args.runs:
        label, _, folder = spec.rpartition("=")
        rows.append(row_of(label, Path(folder)))
    text = markdown(rows, click=rows[0]["auc"] is not None)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")
    if args.png:
        plot(rows, Path(args.png))
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
