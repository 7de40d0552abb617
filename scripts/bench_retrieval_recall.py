"""Recall@K of text-semantic candidate retrieval against the held-out item, vs popularity.

Queries are the mean MiniLM embedding of a user's observed history (train +
validation items for test); retrieval is exact inner product over the target
domain's items, excluding every item the user touched except the target.
Cross-domain rows build the query from one domain's history only and retrieve
in the other domain.

    python scripts/bench_retrieval_recall.py --out runs/bench_retrieval_recall.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchlib import machine

from fedllmrec.data.prepare import prepare
from fedllmrec.io import atomic_write_json
from fedllmrec.retrieval import ItemIndex
from fedllmrec.retrieval.history import retrieval_recall
from fedllmrec.semantics import embed_items

KS = (10, 50, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "art-office"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_retrieval_recall.json"))
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name in args.datasets:
        prepared = prepare(name, data_dir=args.data_dir)
        ds = prepared.dataset
        vectors = embed_items(ds)
        index = ItemIndex.build(vectors, domains=ds.item_domain.astype("int64"))
        settings: list[tuple[str, int | None, int | None]] = []
        if len(ds.domains) == 1:
            settings.append((ds.domains[0], None, None))
        else:
            for d, dom in enumerate(ds.domains):
                settings.append((f"{dom} (history: all domains)", None, d))
                settings.append((f"{dom} (history: {dom} only)", d, d))
            for src, dst in ((0, 1), (1, 0)):
                settings.append((f"{ds.domains[dst]} (history: {ds.domains[src]} only)", src, dst))
        for label, query_domain, target_domain in settings:
            res = retrieval_recall(
                index, vectors, prepared, ks=KS, query_domain=query_domain,
                target_domain=target_domain,
            )  # fmt: skip
            results.append({"dataset": name, "target": label, **res})
    seconds = time.perf_counter() - start
    report = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "command": "python " + " ".join(sys.argv),
        "seconds": round(seconds, 1),
        "results": results,
    }
    atomic_write_json(args.out, report)
    print(f"{report['date']}; {report['machine']}; {seconds:.0f} s")
    header = " | ".join(f"text R@{k} | pop R@{k}" for k in KS)
    print(f"| dataset | target domain (query history) | test rows | {header} |")
    print("|---|---|---:|" + "---:|" * (2 * len(KS)))
    for r in results:
        cells = " | ".join(
            f"{r['text'][f'Recall@{k}']:.4f} | {r['popularity'][f'Recall@{k}']:.4f}" for k in KS
        )
        print(f"| {r['dataset']} | {r['target']} | {r['rows']} | {cells} |")


if __name__ == "__main__":
    main()
