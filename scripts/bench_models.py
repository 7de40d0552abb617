"""Benchmark: train recipes to early stopping; test metrics at the best validation epoch.

Each recipe runs through ``fedllmrec train`` (same trainer, checkpoints and
resume), into ``--out/<recipe name>``; an interrupted benchmark resumes.

    python scripts/bench_models.py recipes/sasrec-ml100k.toml recipes/mrff-ml100k.toml
    python scripts/bench_models.py recipes/mrff-ml100k.toml --set model.gate=balance_only
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import torch
from benchlib import machine

from fedllmrec.io import atomic_write_json
from fedllmrec.recipes.recipe import load_recipe, run_recipe


def _row(name: str, metrics: dict[str, Any]) -> str:
    test, valid = metrics["test"], metrics["valid"]
    keys = [k for k in test if k.endswith(("HR@10", "NDCG@10", "AUC", "LogLoss"))]
    cells = " | ".join(f"{k} {test[k]:.4f}" for k in keys)
    monitor = metrics["monitor"]
    return (
        f"| {name} | {metrics['best_epoch']}/{metrics['stopped_epoch']} | "
        f"{metrics['train_seconds']:.0f} | {monitor} {valid.get(monitor, float('nan')):.4f} | "
        f"{cells} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--tag", default="", help="suffix of each run folder (variants)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_models"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for path in args.recipes:
        recipe = load_recipe(path, args.overrides)
        name = path.stem + args.tag
        metrics = run_recipe(recipe, args.out / name, data_dir=args.data_dir, quiet=True)
        results[name] = metrics
        print(_row(name, metrics), flush=True)
    atomic_write_json(
        args.out / f"summary{args.tag}-{'+'.join(p.stem for p in args.recipes)}.json"[:200],
        {
            "date": dt.date.today().isoformat(),
            "machine": machine(),
            "command": "python " + " ".join(sys.argv),
            "results": {
                k: {
                    f: v[f]
                    for f in ("best_epoch", "stopped_epoch", "train_seconds", "valid", "test")
                }
                for k, v in results.items()
            },
        },
    )


if __name__ == "__main__":
    main()
