"""Benchmark: popularity and item-kNN on a dataset, full-rank and 1+99 sampled.

Writes the result records as JSON and prints a markdown table for docs/benchmarks.md.

    python scripts/bench_baselines.py --dataset ml-100k --out runs/bench_baselines_ml100k.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

from benchlib import machine

from fedllmrec.data.prepare import prepare
from fedllmrec.eval.benchmark import run_baselines
from fedllmrec.io import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_baselines.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    prepared = prepare(args.dataset, data_dir=args.data_dir, seed=args.seed)
    records = run_baselines(prepared)
    seconds = time.perf_counter() - start
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report = {
        "dataset": args.dataset,
        "seed": args.seed,
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "commit": commit,
        "command": "python " + " ".join(sys.argv),
        "seconds": round(seconds, 2),
        "records": records,
    }
    atomic_write_json(args.out, report)
    print(f"{args.dataset}, seed {args.seed}, {report['date']}, {report['machine']}, "
          f"commit {commit}, {seconds:.1f} s")  # fmt: skip
    print("| model | protocol | params (chosen on valid) | valid HR@10 | valid NDCG@10 "
          "| test HR@10 | test NDCG@10 | test MRR |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for rec in records:
        params = ", ".join(f"{k}={v}" for k, v in rec["params"].items()) or "-"
        v, t = rec["valid"], rec["test"]
        cells = [rec["model"], rec["mode"], params]
        values = (v["HR@10"], v["NDCG@10"], t["HR@10"], t["NDCG@10"], t["MRR"])
        cells += [f"{x:.4f}" for x in values]
        print("| " + " | ".join(cells) + " |")
        for domain, metrics in rec["test_domains"].items():
            print(f"|  ↳ {domain} | | | | | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} "
                  f"| {metrics['MRR']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
