"""A/B timing of two checkouts: federated rounds alternating on one core, paired.

This machine's speed drifts by 10% within an hour, so two runs one after the other cannot
resolve a change of a few percent. Here two long-lived processes, one per checkout, train
rounds of the same recipe in turn on the same core (A, B, B, A, ...), and the result is the
median ratio of paired rounds::

    git worktree add /tmp/base HEAD~1
    FEDLLMREC_DATA=../shared/data python scripts/bench_ab.py /tmp/base . --rounds 12 \\
        --recipe recipes/mrff-fedadam-kuaisar.toml

``--set`` overrides both sides; ``--set-b`` only B (e.g. one checkout, two settings).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(recipe: str, overrides: list[str]) -> None:
    """One side: set up, train a warm-up round, then one round per line read; print seconds."""
    import torch
    from benchlib import set_up_recipe

    from fedllmrec.federated.simulator import FederatedRecommender
    from fedllmrec.runtime import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    _, _, _, fed = set_up_recipe(recipe, overrides)
    assert isinstance(fed, FederatedRecommender), "the recipe needs a [federated] table"
    fed.train_epoch()
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        fed.train_epoch()
        print(time.perf_counter() - start, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="checkout A (the baseline)")
    parser.add_argument("b", help="checkout B")
    parser.add_argument("--recipe", default="recipes/mrff-fedadam-kuaisar.toml")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="override, both sides")
    parser.add_argument("--set-b", action="append", default=[], help="override, B only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.recipe, args.set)
        return
    sides = {}
    for name, root, extra in (("A", args.a, []), ("B", args.b, args.set_b)):
        root = str(Path(root).resolve())
        # Each side runs its own checkout's copy of this script: its scripts/ folder comes
        # first on sys.path, so benchlib must be that checkout's too.
        script = Path(root) / "scripts" / Path(__file__).name
        worker_script = str(script if script.is_file() else Path(__file__).resolve())
        command = ["taskset", "-c", str(args.core), sys.executable, worker_script, "a", "b"]
        command.append("--worker")
        command += ["--recipe", args.recipe, *(f"--set={s}" for s in [*args.set, *extra])]
        env = dict(os.environ, PYTHONPATH=f"{root}:{root}/scripts")
        sides[name] = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
    for name, side in sides.items():
        assert side.stdout is not None
        while (line := side.stdout.readline()).strip() != "ready":
            if not line:  # end of output: the worker died while setting up
                raise SystemExit(f"side {name} exited with {side.wait()} before it was ready")
    seconds: dict[str, list[float]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            side = sides[name]
            assert side.stdin is not None and side.stdout is not None
            side.stdin.write("go\n")
            side.stdin.flush()
            seconds[name].append(float(side.stdout.readline()))
    for side in sides.values():
        assert side.stdin is not None
        side.stdin.close()
        side.wait()
    a, b = seconds["A"], seconds["B"]
    result = {
        "a": args.a,
        "b": args.b,
        "median_s": {"A": statistics.median(a), "B": statistics.median(b)},
        "paired_median_b_over_a": statistics.median(y / x for x, y in zip(a, b, strict=True)),
        "seconds": seconds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
