"""Fine-tune an LLM recipe under ``accelerate launch``: data-parallel over processes.

    accelerate launch --cpu --num_processes 1 -m fedllmrec.apps.finetune \\
        --recipe recipes/llm-lora-art-office.toml --out runs/llm-lora
    accelerate launch --multi_gpu --num_processes 2 -m fedllmrec.apps.finetune \\
        --recipe recipes/llm-lora-art-office.toml --out runs/llm-lora-ddp

Every process builds the same model from the recipe (same seeds) and draws the same batches;
each runs its share of a batch's rows (``TunedLLMRecommender.replica``) and the gradients
are summed over the processes (``torch.distributed.all_reduce``: gloo on CPU, NCCL on
GPUs) before every optimiser step, so the processes stay identical and the run equals one
process on the same global batch. On CPU, accelerate 1.16's ``--cpu`` flag always starts
one process; two CPU processes are started with ``--multi_gpu`` (torchrun), and this entry
asks accelerate for the CPU when no CUDA device is there. Each process computes on its
accelerator's device (``model.llm.device`` is set to it: ``cuda:r`` on GPUs, the CPU
here). Every process trains and evaluates (the same
numbers); process 0 writes the run to ``--out`` (resumable, as ``fedllmrec train``), process
``r`` to ``--out/replica-r`` (so it resumes too). Centralized LLM recipes only: federated
ones run with ``fedllmrec train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fedllmrec.errors import FedLLMRecError
from fedllmrec.models.llm.tuned import TunedLLMRecommender
from fedllmrec.recipes import load_recipe
from fedllmrec.train.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedllmrec.apps.finetune", description=__doc__)
    parser.add_argument("--recipe", type=Path, required=True, help="An LLM recipe (TOML).")
    parser.add_argument("--out", type=Path, required=True, help="The run folder.")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key=value override."
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="The data root.")
    parser.add_argument("--threads", type=int, default=None, help="Torch threads per process.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    return parser.parse_args(argv)


def sum_gradients(grads: list[torch.Tensor]) -> None:
    """Sum ``grads`` over every process, in place (one flat all-reduce)."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def run(args: argparse.Namespace) -> dict[str, object]:
    """Train ``args.recipe`` as this process's replica; returns its ``metrics.json``."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # The LLM, its projectors and every prompt on this process's device (cuda:r or the CPU).
    overrides = [*args.overrides, f"model.llm.device={accelerator.device}"]
    recipe = load_recipe(args.recipe, overrides).reading(args.data_dir)
    with accelerator.main_process_first():  # one process prepares the data, the rest read it
        prepared = recipe.prepare()
    model = recipe.build_model(prepared)
    if not isinstance(model, TunedLLMRecommender):
        raise FedLLMRecError(
            f"{args.recipe}: the accelerate entry fine-tunes centralized LLM recipes (model.kind"
            f" = 'llm', a trained mode), not a {type(model).__name__}; use fedllmrec train"
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    model.replica = (rank, world)
    if world > 1:
        model.gradient_sync = sum_gradients
    out = args.out if accelerator.is_main_process else args.out / f"replica-{rank}"
    trainer = Trainer(recipe.trainer, quiet=args.quiet or not accelerator.is_main_process)
    record = recipe.record()
    record["replicas"] = world  # a run resumes only with as many processes
    metrics = trainer.run(model, prepared, recipe.build_evaluator(prepared), out, record=record)
    accelerator.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> None:
    try:
        metrics = run(parse_args(argv))
    except FedLLMRecError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"best epoch {metrics['best_epoch']}; test {metrics['test']}")


if __name__ == "__main__":
    main()
