"""Federated rounds of a recipe: seconds per round, memory, traffic and quality.

Runs ``--rounds`` rounds of a federated recipe (default: federated MRFF on
KuaiSAR-R in MRFF's configuration) with the in-process simulator, evaluating
validation and test after every round as MRFF's released code does, and
reports per-round seconds, peak resident memory, bytes up/down against the
full model, and test metrics at the best-validation round::

    FEDLLMREC_DATA=../shared/data python scripts/bench_federated.py --threads 1 --rounds 3
    FEDLLMREC_DATA=../shared/data python scripts/bench_federated.py --rounds 30 \
        --out runs/bench_federated/kuaisar-30.json

The result JSON (machine, command, date) goes to ``--out``. ``--floor`` also counts the
matrix FLOPs any exact implementation spends on a round's local training (forward and
backward of the round's windows, padding cut, groups routed sparsely, no per-client
anything) and measures this core's float32 matmul throughput, which bounds the speed-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import machine, set_up_recipe

from fedllmrec.eval.evaluators import Evaluator
from fedllmrec.federated.simulator import FederatedRecommender
from fedllmrec.io import atomic_write_json
from fedllmrec.runtime import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/mrff-fed-kuaisar.toml")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_federated/result.json")
    parser.add_argument("--floor", action="store_true", help="count a round's FLOPs too")
    parser.add_argument(
        "--system-malloc", action="store_true", help="glibc's defaults (fedllmrec train tunes it)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_tuned = not args.system_malloc and keep_freed_memory()

    recipe, _, evaluator, fed = set_up_recipe(args.recipe, args.set)
    assert isinstance(fed, FederatedRecommender), "the recipe needs a [federated] table"
    floor = arithmetic_floor(fed, evaluator) if args.floor else None
    if floor:
        print(json.dumps(floor))
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
        "floor": floor,
        "best_round": best and best["round"],
        "best_valid": best and best["valid"],
        "test_at_best_valid": best and best["test"],
        **fed.run_info(),
        "history": rows,
        "machine": machine(),
        "malloc_keeps_freed_memory": malloc_tuned,
        "command": " ".join(["python", *sys.argv]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    summary = {k: result[k] for k in ("train_s_per_round", "eval_s_per_round", "peak_rss_mib")}
    print(json.dumps(summary | {"best_round": result["best_round"]}))


def arithmetic_floor(fed: FederatedRecommender, evaluator: Evaluator) -> dict[str, Any]:
    """Matrix GFLOP of a round's local training and evaluation, and this core's matmul GFLOP/s.

    Training counts forward and backward of the windows a round trains (each client's newest
    when a step takes ``batch_size`` of them, as MRFF's release), groups routed sparsely and no
    per-client gradient: once at the full width (what the release computes, padding included)
    and once with every padding column cut (the least any exact implementation computes).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from fedllmrec.models.sasrec import trim_left_padding

    base, net = fed.recommender, fed.net
    tensors = base.training_tensors()
    size = fed.federation.local.batch_size
    rows = np.concatenate([r[:size] if size else r for r in fed.population.rows])
    lengths = (tensors["seq"][rows] != 0).sum(1).numpy()
    rows = rows[np.argsort(lengths, kind="stable")]  # similar lengths batch together
    gflop = {}
    net.train()
    for name, cut in (("train_gflop_padded", False), ("train_gflop", True)):
        with FlopCounterMode(display=False) as counter:
            for lo in range(0, rows.shape[0], 128):
                batch = {k: v[rows[lo : lo + 128]] for k, v in tensors.items()}
                out = base.batch_loss(trim_left_padding(batch) if cut else batch)
                (out.task + out.aux).backward()
        net.zero_grad(set_to_none=True)
        gflop[name] = counter.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as counter:
        evaluator(fed, "valid"), evaluator(fed, "test")
    eval_gflop = counter.get_total_flops() / 1e9
    dim = base.dim
    rates = {}
    for name, (m, k, n) in {
        "square_4096": (4096, 4096, 1024),
        "ffn_shape": (128 * base.max_len, dim, dim),
    }.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        rates[name] = 2 * m * k * n * 5 / (time.perf_counter() - start) / 1e9
    peak = max(rates.values())
    return {
        "windows": int(rows.shape[0]),
        **{k: round(v, 2) for k, v in gflop.items()},
        "eval_gflop": round(eval_gflop, 2),
        "matmul_gflops": {k: round(v, 1) for k, v in rates.items()},
        "train_floor_s": round(gflop["train_gflop"] / peak, 2),
        "round_floor_s": round((gflop["train_gflop"] + eval_gflop) / peak, 2),
    }


if __name__ == "__main__":
    main()
