"""Speed of a domain client's local step against a centralized step on the same windows.

Both run the same recipe's model on the same 128 windows of one domain, on one thread,
alternating, and the script reports the median time of each and their paired ratio:

* centralized: ``batch_loss`` + backward + the optimiser step of the recommender;
* domain client: one local step of the per-client engine (``train_clients``) for that
  domain, from the server's tensors (what a round costs a client per step).

    FEDLLMREC_DATA=../shared/data python scripts/bench_cross_domain_speed.py \
        recipes/fkd-fed-art-office.toml --steps 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from benchlib import machine

from fedllmrec.federated.engines.per_client import stack_client_rows, train_clients
from fedllmrec.federated.ownership import Owner
from fedllmrec.models.sasrec import trim_left_padding
from fedllmrec.recipes import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each kind")
    parser.add_argument("--domain", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--engine", default=None, help="client engine (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe, args.overrides)
    prepared = recipe.prepare()
    fed = recipe.build_federation(prepared)
    rec, own = fed.recommender, fed.ownership
    population = fed.population
    rows = population.rows[args.domain]
    rng = np.random.default_rng(0)
    config = replace(fed.federation.local, steps=1)
    engine = args.engine or fed.federation.engine
    times: dict[str, list[float]] = {"centralized": [], "client": []}
    tensors = rec.training_tensors()
    every = fed.net.tensors()
    for step in range(args.steps + 1):
        picked = np.sort(rng.choice(rows, args.batch, replace=False))
        index = torch.from_numpy(picked)
        batch = {k: v[index] for k, v in tensors.items()}
        # Centralized: the recommender's own step on these windows.
        start = time.perf_counter()
        rec.train_step(trim_left_padding(dict(batch)))
        central = time.perf_counter() - start
        # Domain client: one local step of the engine on the same windows.
        client_batch = trim_left_padding(stack_client_rows(tensors, [picked]))
        users = torch.tensor([int(population.ids[args.domain])])
        private = {n: every[n].detach()[users][:, None] for n in own.names(Owner.PRIVATE)}
        start = time.perf_counter()
        train_clients(fed.net, own, fed.shared_tensors(), private, client_batch,
                      fed.server.load, config, 0.0, engine)  # fmt: skip
        client = time.perf_counter() - start
        if step:  # the first of each is a warm-up
            times["centralized"].append(central)
            times["client"].append(client)
    ratios = [c / z for c, z in zip(times["client"], times["centralized"], strict=True)]
    result = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "engine": engine,
        "steps": args.steps,
        "batch": args.batch,
        "median_centralized_s": statistics.median(times["centralized"]),
        "median_client_s": statistics.median(times["client"]),
        "paired_median_ratio": statistics.median(ratios),
        "machine": machine(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
