"""Shared by the benchmark scripts: the machine record, and a recipe's model set up to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedllmrec.data.prepare import Prepared
from fedllmrec.eval.evaluators import Evaluator
from fedllmrec.recipes.recipe import Model, Recipe, load_recipe
from fedllmrec.train.trainer import Trainable, machine

__all__ = ["TrainJob", "machine", "run_jobs", "run_metrics", "set_up_recipe"]


def set_up_recipe(
    path: str | Path, overrides: Sequence[str] = ()
) -> tuple[Recipe, Prepared, Evaluator, Model]:
    """Load a recipe, prepare its data, build its evaluator and its model, set up as seeded."""
    recipe = load_recipe(path, overrides)
    prepared = recipe.prepare()
    evaluator = recipe.build_evaluator(prepared)
    model = recipe.build_model(prepared)
    if isinstance(model, Trainable):
        torch.manual_seed(recipe.trainer.seed)
        model.setup(prepared.split)
    return recipe, prepared, evaluator, model


@dataclass
class TrainJob:
    """One ``fedllmrec train`` run of a recipe with overrides into ``out``."""

    recipe: str
    run: str
    overrides: list[str]
    out: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    core: int = 0
    log: Any = field(default=None, repr=False)

    def start(self) -> None:
        command = ["fedllmrec", "train", self.recipe, "--out", str(self.out), "--threads", "1"]
        command += ["--quiet"] + [arg for s in self.overrides for arg in ("--set", s)]
        if sys.platform.startswith("linux"):
            command = ["taskset", "-c", str(self.core), *command]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(f"{self.out}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed in run_jobs
        self.started = time.perf_counter()
        print(f"{self.run}: {' '.join(command)}", file=sys.stderr)
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)


def run_jobs(jobs: Sequence[TrainJob], parallel: int) -> float:
    """Run the jobs without a ``metrics.json`` yet, ``parallel`` at a time, each pinned to a
    free core with one torch thread; a failed job stops the rest. Returns the wall seconds.

    A job that was interrupted resumes from its checkpoint (the trainer's resume).
    """
    start = time.perf_counter()
    pending = [job for job in jobs if not (job.out / "metrics.json").exists()]
    running: list[TrainJob] = []
    cores = list(range(os.cpu_count() or 1))
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                used = {j.core for j in running}
                job.core = next((c for c in cores if c not in used), cores[0])
                job.start()
                running.append(job)
            time.sleep(2.0)
            for job in list(running):
                assert job.process is not None
                code = job.process.poll()
                if code is None:
                    continue
                running.remove(job)
                job.log.close()
                took = time.perf_counter() - job.started
                status = "done" if code == 0 else f"FAILED ({code}), see {job.out}.log"
                print(f"{job.run}: {status} in {took:.0f} s", file=sys.stderr)
                if code:
                    raise SystemExit(code)
    finally:
        for job in running:  # stop what this call started
            if job.process is not None and job.process.poll() is None:
                job.process.terminate()
                job.process.wait()
    return time.perf_counter() - start


def run_metrics(run: Path) -> dict[str, Any]:
    """The test metrics, epochs and training time of a finished run's ``metrics.json``."""
    data = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    return {
        "test": data.get("test", {}),
        "best_epoch": data.get("best_epoch"),
        "stopped_epoch": data.get("stopped_epoch", data.get("epochs")),
        "train_seconds": data.get("train_seconds"),
    }
