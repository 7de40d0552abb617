"""The accelerate entry: two gloo processes train what one process trains on the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedllmrec.train.trainer import load_checkpoint

REPO = Path(__file__).parents[1]
TINY = (
    "data.split.max_users=150",
    "model.train.train_users=50",
    "model.train.steps_per_epoch=2",
    "model.train.batch_rows=3",  # odd: the two processes get 2 and 1 rows of each batch
    "model.train.negatives=3",
    # fp32: bf16 is several times slower on CPUs without avx512_bf16 (this test took 10 min
    # in bf16 on the AMD EPYC), and the two runs then differ by fp32 summation order only.
    "model.llm.dtype=float32",
    "model.history_items=3",  # short prompts: the test is about the processes, not the model
    "model.title_tokens=8",
    "trainer.max_epochs=1",
    "trainer.eval_every=1",
    "eval.valid_users=2",
    "eval.test_users=2",
    'eval.modes=["sampled-19"]',
)


def launch(processes: int, out: Path, data_root: Path) -> None:
    how = ["--cpu"] if processes == 1 else ["--multi_gpu"]  # --cpu always starts one process
    command = [sys.executable, "-m", "accelerate.commands.launch", *how]
    command += ["--num_processes", str(processes), "--num_cpu_threads_per_process", "1"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "fedllmrec.apps.finetune", "--recipe"]
    command += [str(REPO / "recipes" / "llm-lora-art-office.toml"), "--out", str(out)]
    command += ["--data-dir", str(data_root), "--quiet"]
    for override in TINY:
        command += ["--set", override]
    env = {**os.environ, "MASTER_PORT": str(29500 + processes + os.getpid() % 1000)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.usefixtures("art_office")
def test_two_processes_train_what_one_does(data_root: Path, tmp_path: Path) -> None:
    launch(1, tmp_path / "one", data_root)
    launch(2, tmp_path / "two", data_root)
    one = load_checkpoint(tmp_path / "one" / "best.pt")["model"]["trained"]
    two = load_checkpoint(tmp_path / "two" / "best.pt")["model"]["trained"]
    other = load_checkpoint(tmp_path / "two" / "replica-1" / "best.pt")["model"]["trained"]
    assert one.keys() == two.keys() == other.keys()
    assert all(torch.equal(two[k], other[k]) for k in two)  # the replicas stay identical
    # B starts at zero: its norm is what training moved. Two processes summing their
    # shares' gradients move it as one process does, up to summation order.
    moved = torch.cat([one[k].flatten() for k in one if ".lora_B." in k])
    gap = torch.cat([(one[k] - two[k]).flatten() for k in one if ".lora_B." in k])
    assert float(moved.norm()) > 0
    assert float(gap.norm() / moved.norm()) < 1e-3
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two")]
    assert metrics[1]["config"]["replicas"] == 2
    for name, value in metrics[0]["test"].items():
        assert metrics[1]["test"][name] == pytest.approx(value, abs=0.05)
