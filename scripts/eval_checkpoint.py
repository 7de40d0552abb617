"""Score a run folder's ``best.pt`` on validation and test, for runs the trainer did not finish.

    FEDLLMREC_DATA=../shared/data python scripts/eval_checkpoint.py \
        recipes/mrff-fed-ml100k.toml runs/bench_fed/mrff-fed-ml100k

Writes ``final.json`` beside the checkpoint: best round, validation and test metrics, the
history of ``last.pt`` and, for federated runs, the traffic totals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from benchlib import set_up_recipe

from fedllmrec.io import atomic_write_json
from fedllmrec.train.trainer import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, _, evaluator, model = set_up_recipe(args.recipe, args.set)
    best = load_checkpoint(args.run_dir / "best.pt")  # digest checked
    model.load_state_dict(best["model"])  # type: ignore[union-attr]
    last = load_checkpoint(args.run_dir / "last.pt")["trainer"]
    out = {
        "best_epoch": best["epoch"],
        "valid": evaluator(model, "valid"),
        "test": evaluator(model, "test"),
        "train_seconds": last["train_seconds"],
        "history": last["history"],
        **getattr(model, "run_info", dict)(),
    }
    atomic_write_json(args.run_dir / "final.json", out)
    print(json.dumps({k: out[k] for k in ("best_epoch", "valid", "test")}, indent=1))


if __name__ == "__main__":
    main()
