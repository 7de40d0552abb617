"""Cost of the privacy seam: a protected round against the unprotected one, in one run.

Every configuration is set up once; their rounds then alternate (A, B, C, A, B, C, ...)
so that the machine's drift hits each alike, and each configuration's median round
time is reported with its ratio to the first (the unprotected baseline).

    python scripts/bench_privacy_speed.py --recipe recipes/mrff-fed-kuaisar.toml \\
        --config none: --config secagg:federated.privacy.secure_aggregation=true \\
        --config central-dp:federated.privacy.dp=central,federated.privacy.clip=1.0,...

A ``--config`` is ``label:key=value,key=value`` (recipe overrides on top of ``--set``).
Results (machine, command, date, commit, per-round seconds) go to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from benchlib import machine, set_up_recipe

from fedllmrec.federated.simulator import FederatedRecommender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--set", action="append", default=[], help="override for every config")
    parser.add_argument("--config", action="append", required=True, help="label:k=v,k=v")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per config")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_privacy/speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    feds: dict[str, FederatedRecommender] = {}
    for spec in args.config:
        label, _, overrides = spec.partition(":")
        extra = [o for o in overrides.split(",") if o]
        _, _, _, model = set_up_recipe(args.recipe, [*args.set, *extra])
        assert isinstance(model, FederatedRecommender)
        feds[label] = model
    seconds: dict[str, list[float]] = {label: [] for label in feds}
    for step in range(args.warmup + args.rounds):
        for label, fed in feds.items():
            start = time.perf_counter()
            fed.train_round()
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                seconds[label].append(elapsed)
            participants = fed.server.records[-1]["participants"]
            print(f"{label:>16} round {step + 1}: {elapsed:.3f} s, {participants} clients")
    base = statistics.median(next(iter(seconds.values())))
    rows = {}
    for label, times in seconds.items():
        median = statistics.median(times)
        per_client = [
            t / max(r["participants"], 1)
            for t, r in zip(times, feds[label].server.records[args.warmup :], strict=True)
        ]
        rows[label] = {
            "median_s": median,
            "ratio": median / base,
            "median_s_per_client": statistics.median(per_client),
            "seconds": times,
        }
        print(
            f"{label:>16}: median {median:.3f} s/round ({median / base:.2f}x), "
            f"{statistics.median(per_client) * 1000:.2f} ms/client"
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    record = {
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "threads": args.threads,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
