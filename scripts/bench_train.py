"""Benchmark: a sequential model (SASRec or GRU4Rec) on ml-100k, quality against wall time.

Trains for ``--epochs`` epochs, evaluating validation and test (full rank and
1+99) after every ``--every`` epochs; training time excludes evaluation. Reports
the training time until validation (and test) full-rank HR@10 / NDCG@10 first
reach RecBole 1.2.1's SASRec after 5 epochs = 555 s on this machine
(``--target-hr 0.101 --target-ndcg 0.045``), and the epoch of the best validation
NDCG@10 within the run.

    python scripts/bench_train.py --epochs 30 --every 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch
from benchlib import machine

from fedllmrec.data.prepare import prepare
from fedllmrec.eval import evaluate_ranking
from fedllmrec.io import atomic_write_json
from fedllmrec.models.sequential import SequentialRecommender, SequentialTrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--architecture", choices=["sasrec", "gru4rec", "mrff"], default="sasrec")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-hr", type=float, default=0.101)
    parser.add_argument("--target-ndcg", type=float, default=0.045)
    parser.add_argument("--reference-seconds", type=float, default=555.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prepared = prepare(args.dataset, data_dir=args.data_dir)
    rows = []
    train_seconds = 0.0
    model = SequentialRecommender(
        architecture=args.architecture, train=SequentialTrainConfig(epochs=args.every)
    )
    for epoch in range(args.every, args.epochs + 1, args.every):
        start = time.perf_counter()
        if epoch == args.every:
            model.fit(prepared.split)
        else:
            model.resume(args.every)
        train_seconds += time.perf_counter() - start
        row = {"epoch": epoch, "train_seconds": round(train_seconds, 1)}
        for role in ("valid", "test"):
            for mode in ("full", "sampled"):
                metrics = evaluate_ranking(model, prepared, role=role, mode=mode)["metrics"]
                row[f"{role} {mode}"] = {k: round(v, 4) for k, v in metrics.items()}
        rows.append(row)
        print(row, flush=True)
    reached = {}
    for role in ("valid", "test"):
        hit = [
            r for r in rows
            if r[f"{role} full"]["HR@10"] >= args.target_hr
            and r[f"{role} full"]["NDCG@10"] >= args.target_ndcg
        ]  # fmt: skip
        reached[role] = hit[0]["train_seconds"] if hit else None
    best = max(rows, key=lambda r: r["valid full"]["NDCG@10"])
    summary = {
        "seconds_to_target": reached,
        "reference_seconds": args.reference_seconds,
        "best_valid_epoch": best["epoch"],
        "best_valid_train_seconds": best["train_seconds"],
    }
    print(summary)
    atomic_write_json(
        args.out,
        {
            "date": dt.date.today().isoformat(),
            "machine": machine(),
            "command": "python " + " ".join(sys.argv),
            "summary": summary,
            "rows": rows,
        },
    )
    print("| epoch | train s | valid full HR@10 | valid full NDCG@10 | test full HR@10 | "
          "test full NDCG@10 | test 1+99 HR@10 | test 1+99 NDCG@10 |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vf, tf, ts = r["valid full"], r["test full"], r["test sampled"]
        print(f"| {r['epoch']} | {r['train_seconds']} | {vf['HR@10']} | {vf['NDCG@10']} | "
              f"{tf['HR@10']} | {tf['NDCG@10']} | {ts['HR@10']} | {ts['NDCG@10']} |")  # fmt: skip


if __name__ == "__main__":
    main()
