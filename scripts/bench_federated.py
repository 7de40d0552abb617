"""Federated rounds of a recipe: seconds per round, memory, traffic and quality.

Runs ``--rounds`` rounds of a federated recipe (default: federated MRFF on
KuaiSAR-R in MRFF's configuration) with the in-process simulator, evaluating
validation and test after every round as MRFF's released code does, and
reports per-round seconds, peak resident memory, bytes up/down against the
full model, and test metrics at the best-validation round::

    FEDLLMREC_DATA=../shared/data python scripts/bench_federated.py --threads 1 --rounds 3
    FEDLLMREC_DATA=../shared/data python scripts/bench_federated.py --rounds 30 \
        --out runs/bench_federated/kuaisar-30.json

The result JSON (machine, command, date) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

import torch
from benchlib import machine, set_up_recipe

from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.io import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/mrff-fed-kuaisar.toml")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_federated/result.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recipe, _, evaluator, fed = set_up_recipe(args.recipe, args.set)
    assert isinstance(fed, FederatedRecommender), "the recipe needs a [federated] table"
    monitor, larger = recipe.trainer.monitor, recipe.trainer.direction == "max"
    rows, best = [], None
    for round_ in range(1, args.rounds + 1):
        start = time.perf_counter()
        loss = fed.train_epoch()
        train_s = time.perf_counter() - start
        row = {"round": round_, "loss": loss, "train_s": round(train_s, 3), **fed.epoch_info()}
        if round_ % args.eval_every == 0:
            start = time.perf_counter()
            valid, test = evaluator(fed, "valid"), evaluator(fed, "test")
            row |= {"eval_s": round(time.perf_counter() - start, 3), "valid": valid, "test": test}
            if best is None or (valid[monitor] > best["valid"][monitor]) == larger:
                best = row
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("bytes_up", "bytes_down")}))
        sys.stdout.flush()

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = rows[1:] or rows  # round 1 includes one-off allocation
    evals = [r["eval_s"] for r in timed if "eval_s" in r]
    result = {
        "recipe": args.recipe,
        "overrides": args.set,
        "threads": args.threads,
        "rounds": args.rounds,
        "train_s_per_round": sum(r["train_s"] for r in timed) / len(timed),
        "eval_s_per_round": sum(evals) / len(evals) if evals else None,
        "peak_rss_mib": round(peak_mib),
        "best_round": best and best["round"],
        "best_valid": best and best["valid"],
        "test_at_best_valid": best and best["test"],
        **fed.run_info(),
        "history": rows,
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    summary = {k: result[k] for k in ("train_s_per_round", "eval_s_per_round", "peak_rss_mib")}
    print(json.dumps(summary | {"best_round": result["best_round"]}))


if __name__ == "__main__":
    main()
