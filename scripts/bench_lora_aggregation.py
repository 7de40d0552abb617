"""Averaging LoRA factors vs averaging LoRA updates: FFA-LoRA's frozen A against naive FedAvg.

Two domain clients (Arts, Office) train the global adapter of the full-pipeline recipe from
the same start for one round. The exact FedAvg of their updates is ``sum_i w_i B_i A_i``;
naive aggregation averages the factors and applies ``(sum_i w_i B_i)(sum_i w_i A_i)``.
Reported per aggregation mode: the relative error ``||naive - exact|| / ||exact||`` over every
adapted projection (each client's factors are the sent ones plus its uploaded deltas).
Under ``frozen_a`` no client trains or sends ``A`` (checked: it is unchanged after the
round), so the error is 0 by construction; under ``naive`` it is the measurement.

    FEDLLMREC_DATA=../shared/data python scripts/bench_lora_aggregation.py --steps 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import machine, set_up_recipe

from fedllmrec.federated.adapters import FederatedLLM

RECIPE = "recipes/llm-fed-art-office.toml"


def products(fed: FederatedLLM, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``B A`` of the global adapter of every adapted projection, from named factors."""
    out = {}
    for name, b in tensors.items():
        if ".lora_B.global." in name:
            a = tensors[name.replace(".lora_B.", ".lora_A.")]
            out[name.replace(".lora_B.global.weight", "")] = b.float() @ a.float()
    return out


def global_factors(fed: FederatedLLM) -> dict[str, torch.Tensor]:
    every = fed.tensors()
    return {n: t.detach().clone() for n, t in every.items() if ".global." in n and "lora_" in n}


def run(mode: str, steps: int, source: str) -> dict[str, float]:
    sets = [f"model.adapters.aggregation={mode}", f"federated.local.steps={steps}",
            f"model.source={source}"]  # fmt: skip
    _, _, _, model = set_up_recipe(RECIPE, sets)
    assert isinstance(model, FederatedLLM)
    fed = model
    start = global_factors(fed)
    plan = fed.plan_round()
    parts = []
    per_client = []
    t0 = time.perf_counter()
    for position in plan.survivors.tolist():
        fed.local_training(
            np.array([position]), plan.number, plan.sent, parts.append,
            cohort=len(plan.survivors),
        )  # fmt: skip
        # The client's trained factors (before the reset to the sent tensors): sent + delta.
        factors = dict(start)
        for name, delta in parts[-1].deltas.items():
            if name in start:  # the adapter's factors (the projectors' deltas upload too)
                factors[name] = start[name] + delta[0]
        per_client.append(factors)
    seconds = time.perf_counter() - t0
    after = global_factors(fed)
    untrained = [n for n in start if n not in parts[0].deltas]  # frozen A under frozen_a
    assert all(torch.equal(after[n], start[n]) for n in untrained)
    weights = torch.tensor([float(p.n_examples[0]) for p in parts])
    weights = weights / weights.sum()
    exact = {}
    for w, factors in zip(weights, per_client, strict=True):
        for key, value in products(fed, factors).items():
            exact[key] = exact.get(key, 0) + w * value
    mean_factors = {n: sum(w * f[n] for w, f in zip(weights, per_client, strict=True))
                    for n in start}  # fmt: skip
    naive = products(fed, mean_factors)
    num = sum(float((naive[k] - exact[k]).norm() ** 2) for k in exact) ** 0.5
    den = sum(float(exact[k].norm() ** 2) for k in exact) ** 0.5
    return {"relative_error": num / den, "update_norm": den, "local_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--source", default="runs/cross-domain/fkd-fed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {mode: run(mode, args.steps, args.source) for mode in ("frozen_a", "naive")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    record = {"results": out, "steps": args.steps, "machine": machine(), "commit": commit,
              "date": dt.date.today().isoformat()}  # fmt: skip
    print(json.dumps(record, indent=1))
    Path("runs").mkdir(exist_ok=True)
    Path("runs/bench_lora_aggregation.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
