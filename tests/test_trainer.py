"""The centralized trainer, its recipes and ``fedllmrec train``, on real ml-100k."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedllmrec.apps.cli import app
from fedllmrec.data.prepare import Prepared, prepare
from fedllmrec.data.registry import DATASETS
from fedllmrec.data.split import Split, SplitConfig, UserItemSet
from fedllmrec.errors import FedLLMRecError, RecipeError
from fedllmrec.eval import evaluate_ranking
from fedllmrec.eval.evaluators import RankingEvaluator
from fedllmrec.models import ItemKNN, Popularity
from fedllmrec.models.sequential import SequentialRecommender, SequentialTrainConfig
from fedllmrec.recipes import load_recipe, run_recipe
from fedllmrec.train import Trainable, Trainer, TrainerConfig
from fedllmrec.train.trainer import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.toml"))
TIMING = ("train_seconds", "date", "machine")
SHORT = 20


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # One thread: with both cores busy elsewhere, two OpenMP threads spin-wait and an
    # epoch takes 14 s instead of 1 s; tiny models gain nothing from a second thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(**train: Any) -> SequentialRecommender:
    return SequentialRecommender(max_len=20, dim=32, train=SequentialTrainConfig(**train))


def full_rank(prepared: Prepared) -> RankingEvaluator:
    return RankingEvaluator(prepared, modes=("full",))


def train_small(
    prepared: Prepared, out: Path, max_epochs: int, *, checkpoint: bool = True, **train: Any
) -> dict[str, Any]:
    config = TrainerConfig(max_epochs=max_epochs, eval_every=1, patience=10, checkpoint=checkpoint)
    return Trainer(config, quiet=True).run(small(**train), prepared, full_rank(prepared), out)


def without_timing(metrics: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in metrics.items() if k not in TIMING}
    kept["history"] = [{k: v for k, v in row.items() if k not in TIMING} for row in kept["history"]]
    return kept


@pytest.fixture(scope="module")
def short_history(ml100k_root: Path, ml100k_prepared: Prepared) -> Prepared:
    """ml-100k cut to each user's last 20 interactions: epochs 5x cheaper than the full data.

    Prepared into the (test-session) cache, where ``--set data.split.max_history=20`` finds it.
    """
    return prepare("ml-100k", data_dir=ml100k_root, config=SplitConfig(max_history=SHORT))


@pytest.fixture(scope="module")
def uninterrupted(
    ml100k_prepared: Prepared, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, train_small(ml100k_prepared, out, 2)


# ------------------------------------------------------------ scripted model


@dataclass
class Scripted:
    """A Trainable whose only 'weight' is its epoch count, so checkpoints are visible."""

    losses: list[float] = field(default_factory=list)
    epoch: int = 0

    def setup(self, split: Split) -> Scripted:
        self.losses, self.epoch = [], 0
        return self

    def train_epoch(self) -> float:
        self.epoch += 1
        self.losses.append(1.0 / self.epoch)
        return self.losses[-1]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.losses = state["epoch"], list(state["losses"])

    def score(self, users: np.ndarray, items: np.ndarray, history: UserItemSet) -> np.ndarray:
        return np.zeros(items.shape)


@dataclass
class ScriptedEvaluator:
    """Validation follows a script indexed by the model's epoch; test reports that epoch."""

    key: str
    script: list[float]

    def __call__(self, model: Any, role: str) -> dict[str, float]:
        metrics = {self.key: self.script[model.epoch - 1]}
        return metrics if role == "valid" else {**metrics, "epoch": float(model.epoch)}


def test_scripted_model_is_trainable() -> None:
    assert isinstance(Scripted(), Trainable)
    assert isinstance(small(), Trainable)
    assert not isinstance(Popularity(), Trainable)


def test_early_stopping_keeps_the_best_epoch(ml100k_prepared: Prepared, tmp_path: Path) -> None:
    evaluator = ScriptedEvaluator("m", [0.1, 0.3, 0.2, 0.25, 0.29, 0.9, 0.9])
    config = TrainerConfig(max_epochs=7, patience=3, monitor="m")
    metrics = Trainer(config, quiet=True).run(Scripted(), ml100k_prepared, evaluator, tmp_path)
    assert (metrics["best_epoch"], metrics["stopped_epoch"]) == (2, 5)
    assert metrics["early_stopped"]
    assert metrics["valid"] == {"m": 0.3}
    assert metrics["test"] == {"m": 0.3, "epoch": 2.0}  # scored with best.pt, not the last state
    assert [row["m"] for row in metrics["history"]] == [0.1, 0.3, 0.2, 0.25, 0.29]
    assert json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] == 2
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lower_is_better_metrics_and_eval_every(ml100k_prepared: Prepared, tmp_path: Path) -> None:
    # Evaluated at epochs 2, 4, 6, 8: 0.7, 0.6 (best), 0.66, 0.7 -> two misses, stop.
    evaluator = ScriptedEvaluator("LogLoss", [0.9, 0.7, 0.8, 0.6, 0.65, 0.66, 0.7, 0.7, 0.1, 0.1])
    config = TrainerConfig(max_epochs=10, eval_every=2, patience=2, monitor="LogLoss")
    assert config.direction == "min"
    metrics = Trainer(config, quiet=True).run(Scripted(), ml100k_prepared, evaluator, tmp_path)
    assert (metrics["best_epoch"], metrics["stopped_epoch"], metrics["mode"]) == (4, 8, "min")
    assert metrics["early_stopped"] and metrics["test"]["epoch"] == 4.0
    assert [("LogLoss" in row) for row in metrics["history"]] == [False, True] * 4


def test_run_shorter_than_eval_every_scores_its_final_model(
    ml100k_prepared: Prepared, tmp_path: Path
) -> None:
    evaluator = ScriptedEvaluator("m", [0.1, 0.2, 0.3])
    config = TrainerConfig(max_epochs=1, eval_every=2, monitor="m")
    metrics = Trainer(config, quiet=True).run(Scripted(), ml100k_prepared, evaluator, tmp_path)
    assert (metrics["best_epoch"], metrics["valid"], metrics["test"]["epoch"]) == (
        1,
        {"m": 0.1},
        1.0,
    )
    longer = TrainerConfig(max_epochs=3, eval_every=2, monitor="m")
    metrics = Trainer(longer, quiet=True).run(Scripted(), ml100k_prepared, evaluator, tmp_path)
    assert (metrics["best_epoch"], metrics["stopped_epoch"]) == (2, 3)  # resumed at epoch 1


def test_monitor_typo_fails_before_training(ml100k_prepared: Prepared, tmp_path: Path) -> None:
    config = TrainerConfig(max_epochs=1, monitor="full/NDCG@100")
    with pytest.raises(FedLLMRecError, match="full/NDCG@10"):
        Trainer(config, quiet=True).run(
            small(), ml100k_prepared, full_rank(ml100k_prepared), tmp_path
        )
    assert not (tmp_path / "last.pt").exists()


# ------------------------------------------------------------ real SASRec


def test_sasrec_stops_when_validation_stops_improving(
    short_history: Prepared, tmp_path: Path
) -> None:
    # lr 1e-30 (0 is refused): steps vanish below float32 resolution, so the scores and
    # validation metrics stay as they are and epoch 2 cannot beat epoch 1.
    config = TrainerConfig(max_epochs=10, eval_every=1, patience=1)
    evaluator = full_rank(short_history)
    metrics = Trainer(config, quiet=True).run(small(lr=1e-30), short_history, evaluator, tmp_path)
    assert (metrics["best_epoch"], metrics["stopped_epoch"]) == (1, 2)
    assert metrics["early_stopped"]


def test_metrics_are_test_scores_of_best_checkpoint(
    ml100k_prepared: Prepared, uninterrupted: tuple[Path, dict[str, Any]]
) -> None:
    out, metrics = uninterrupted
    history = metrics["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0]["loss"] > history[-1]["loss"]
    best = max(history, key=lambda row: row["full/NDCG@10"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["valid"] == {k: v for k, v in best.items() if k.startswith("full/")}
    assert metrics["train_seconds"] > 0
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"] == metrics["test"]

    model = small().setup(ml100k_prepared.split)
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True)["model"])
    assert full_rank(ml100k_prepared)(model, "test") == metrics["test"]
    assert metrics["test"]["full/HR@10"] > 0.03  # well above chance (10 / 1,682)


def test_resume_after_interrupt_equals_uninterrupted(
    ml100k_prepared: Prepared, uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    first = train_small(ml100k_prepared, tmp_path, 1)
    assert first["stopped_epoch"] == 1
    resumed = train_small(ml100k_prepared, tmp_path, 2)
    assert without_timing(resumed) == without_timing(uninterrupted[1])
    assert without_timing(json.loads((tmp_path / "metrics.json").read_text())) == without_timing(
        json.loads((uninterrupted[0] / "metrics.json").read_text())
    )
    with pytest.raises(FedLLMRecError, match=r"holds a run with trainer\.patience = 10"):
        Trainer(TrainerConfig(max_epochs=5, patience=3), quiet=True).run(
            small(), ml100k_prepared, full_rank(ml100k_prepared), tmp_path
        )


def test_training_is_deterministic(
    ml100k_prepared: Prepared, uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    # A second run, keeping the best state in memory instead of in best.pt.
    again = train_small(ml100k_prepared, tmp_path, 2, checkpoint=False)
    assert again.pop("config")["trainer"]["checkpoint"] is False
    first = {k: v for k, v in uninterrupted[1].items() if k != "config"}
    assert without_timing(again) == without_timing(first)
    assert not (tmp_path / "last.pt").exists() and (tmp_path / "metrics.json").is_file()


# ------------------------------------------------------------ checkpoint digests


def flip_middle(path: Path, count: int = 20_000) -> None:
    """Invert ``count`` bytes in the middle of the largest tensor's data in ``path``.

    Same size, every zip header intact: ``torch.load`` reads it without complaint.
    """
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    # The data follows the 30-byte local header, the name and the extra field (alignment).
    name_len, extra_len = struct.unpack_from("<HH", data, member.header_offset + 26)
    start = member.header_offset + 30 + name_len + extra_len
    count = min(count, member.file_size // 2)
    start += member.file_size // 2 - count // 2
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", [None, "best.pt", "last.pt"])
def test_damaged_checkpoint_is_refused_naming_it(
    damaged: str | None,
    ml100k_prepared: Prepared,
    uninterrupted: tuple[Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    if damaged is None:
        # Untouched, a finished run resumes and re-scores test from best.pt as before.
        again = train_small(ml100k_prepared, run, 2)
        assert without_timing(again) == without_timing(uninterrupted[1])
        return
    flip_middle(run / damaged)
    # What used to happen: the damaged weights load silently.
    assert torch.load(run / damaged, weights_only=True)["model"]
    with pytest.raises(FedLLMRecError) as caught:
        train_small(ml100k_prepared, run, 2)
    message = str(caught.value)
    assert message.startswith(f"{run / damaged}: checkpoint is damaged (sha256 ")
    assert "\n" not in message


def test_checkpoint_digest_round_trip_and_unsigned_files(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "trainer": {"epoch": 3}}
    save_checkpoint(path, obj)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["w"], obj["model"]["w"])
    assert loaded["trainer"] == {"epoch": 3}
    # Still a plain torch zip: other tools read it without fedllmrec.
    assert torch.load(path, weights_only=True)["trainer"] == {"epoch": 3}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it

    signed = path.read_bytes()
    path.write_bytes(signed[:-1] + (b"0" if signed[-1:] != b"0" else b"1"))  # the digest itself
    with pytest.raises(FedLLMRecError, match=r"ckpt\.pt: checkpoint is damaged"):
        load_checkpoint(path)

    torch.save(obj, path)  # as checkpoints were written before they carried a digest
    with pytest.raises(FedLLMRecError, match=r"ckpt\.pt: checkpoint carries no fedllmrec digest"):
        load_checkpoint(path)
    path.write_bytes(signed[: len(signed) // 2])  # truncated: the digest is gone too
    with pytest.raises(FedLLMRecError, match="carries no fedllmrec digest"):
        load_checkpoint(path)
    with pytest.raises(FedLLMRecError, match=r"missing\.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


# ------------------------------------------------------------ recipes


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_builds(path: Path, ml100k_prepared: Prepared) -> None:
    recipe = load_recipe(path)
    assert recipe.data.name in DATASETS
    json.dumps(recipe.record())
    model = recipe.build_model(ml100k_prepared)  # building reads no data for these kinds
    if recipe.data.name != "ml-100k":
        return  # the big datasets are prepared and trained by hand, not in tests
    evaluator = recipe.build_evaluator(ml100k_prepared)
    assert recipe.trainer.monitor in evaluator.metric_names()  # type: ignore[attr-defined]
    if isinstance(model, Trainable):
        model.setup(ml100k_prepared.split)
        assert model.losses == []


def test_recipe_values_match_the_documented_defaults() -> None:
    recipe = load_recipe(REPO / "recipes" / "sasrec-ml100k.toml")
    model = recipe.model_options
    assert (model["max_len"], model["dim"], model["n_layers"], model["n_heads"]) == (50, 64, 2, 2)
    assert (model["dropout"], model["train"]["batch_size"], model["train"]["lr"]) == (
        0.2,
        128,
        1e-3,
    )
    t = recipe.trainer
    assert (t.monitor, t.patience, t.eval_every, t.max_epochs) == ("full/NDCG@10", 5, 2, 200)
    assert load_recipe(REPO / "recipes" / "itemknn-ml100k.toml").model_options["neighbours"] == 20


def test_overrides(ml100k_prepared: Prepared) -> None:
    recipe = load_recipe(
        REPO / "recipes" / "sasrec-ml100k.toml",
        [
            "model.dim=32",
            "trainer.max_epochs=3",
            "model.train.lr=3e-4",
            "model.architecture=gru4rec",  # a bare word is a string
            'eval.modes=["sampled"]',
            "trainer.seed=7",
        ],
    )
    assert recipe.trainer.max_epochs == 3 and recipe.trainer.seed == 7
    model = recipe.build_model(ml100k_prepared)
    assert isinstance(model, SequentialRecommender)
    assert (model.dim, model.architecture, model.train.lr) == (32, "gru4rec", 3e-4)
    assert model.train.seed == 7  # the model seed follows trainer.seed unless set
    assert recipe.record()["eval"]["modes"] == ["sampled"]
    explicit = load_recipe(
        REPO / "recipes" / "sasrec-ml100k.toml", ["trainer.seed=7", "model.train.seed=3"]
    )
    assert explicit.build_model(ml100k_prepared).train.seed == 3  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.dimm=32", "model.dimm"),
        ("model.train.epochs=3", "model.train.epochs"),  # the trainer owns epochs
        ("trainer.max_epoch=3", "trainer.max_epoch"),
        ("model.dim=abc", "model.dim"),
        ("model.architecture=transformer", "model.architecture"),
        ("trainer.eval_every=0", "trainer.eval_every"),
        ("model.kind=deepfm", "model.kind"),
        ("eval.kind=ctrr", "eval.kind"),
        ("eval.mode=full", "eval.mode"),
        ("optimizer.lr=1", "optimizer"),
        ("model.dim", "model.dim"),  # no '='
        ("model..dim=3", "model..dim"),
    ],
)
def test_bad_override_names_file_and_key(override: str, key: str) -> None:
    path = REPO / "recipes" / "sasrec-ml100k.toml"
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, [override])
    message = str(caught.value)
    assert str(path) in message and f"'{key}'" in message
    assert "\n" not in message


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(
        '[data]\nname = "ml-100k"\n[model]\nkind = "popularity"\n[trainer]\npatiense = 3\n'
    )
    with pytest.raises(RecipeError, match=r"typo\.toml: key 'trainer\.patiense': unknown key"):
        load_recipe(path)
    path.write_text("[data\n")
    with pytest.raises(RecipeError, match=r"typo\.toml: not valid TOML"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_a_recipe_merges_its_base_table_by_table(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(
        '[data]\nname = "ml-100k"\n[model]\nkind = "sequential"\ndim = 32\n'
        "[model.train]\nlr = 0.01\nbatch_size = 64\n[trainer]\nmax_epochs = 5\n"
    )
    (tmp_path / "child.toml").write_text(
        'base = "base.toml"\ndescription = "child"\n[model.train]\nlr = 0.002\n'
    )
    recipe = load_recipe(tmp_path / "child.toml", ["trainer.max_epochs=7"])
    train = recipe.model_options["train"]
    assert (train["lr"], train["batch_size"], recipe.model_options["dim"]) == (0.002, 64, 32)
    assert (recipe.description, recipe.trainer.max_epochs, recipe.name) == ("child", 7, "child")
    (tmp_path / "base.toml").write_text('base = "child.toml"\n[data]\nname = "ml-100k"\n')
    with pytest.raises(RecipeError, match=r"base\.toml: key 'base': 'child\.toml' is already"):
        load_recipe(tmp_path / "child.toml")
    (tmp_path / "child.toml").write_text('base = "nowhere.toml"\n')
    with pytest.raises(RecipeError, match=r"nowhere\.toml: recipe file not found"):
        load_recipe(tmp_path / "child.toml")


@pytest.mark.parametrize(("name", "model_type"), [("popularity", Popularity), ("itemknn", ItemKNN)])
def test_fit_once_models(
    name: str, model_type: type, ml100k_prepared: Prepared, ml100k_root: Path, tmp_path: Path
) -> None:
    recipe = load_recipe(REPO / "recipes" / f"{name}-ml100k.toml")
    metrics = run_recipe(recipe, tmp_path, data_dir=ml100k_root, quiet=True)
    assert (metrics["best_epoch"], metrics["stopped_epoch"]) == (0, 0)
    assert metrics["history"][0]["loss"] is None
    model = recipe.build_model(ml100k_prepared)
    assert isinstance(model, model_type)
    model.fit(ml100k_prepared.split)
    expected = evaluate_ranking(model, ml100k_prepared, role="test", mode="sampled")["metrics"]
    assert metrics["test"]["sampled/NDCG@10"] == pytest.approx(expected["NDCG@10"], abs=1e-12)
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "curve.png").is_file()


# ------------------------------------------------------------ CLI


def test_cli_train_writes_metrics(
    short_history: Prepared, ml100k_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["train", str(REPO / "recipes" / "sasrec-ml100k.toml"), "--out", str(out)]
    args += ["--data-dir", str(ml100k_root), "--quiet", "--threads", "1"]
    for override in (
        "model.max_len=20",
        "model.dim=32",
        "trainer.eval_every=1",
        "trainer.max_epochs=1",
        f"data.split.max_history={SHORT}",
    ):
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_epoch"] == 1 and metrics["best_epoch"] == 1
    assert metrics["config"]["model"]["dim"] == 32
    assert metrics["config"]["data"]["split"]["max_history"] == SHORT
    assert {"full/NDCG@10", "sampled/HR@10"} <= metrics["test"].keys()
    assert "full/NDCG@10" in result.output and "epoch 1 of 1" in result.output

    # Training longer resumes the same folder: the first epoch is kept, not redone.
    longer = CliRunner().invoke(app, [*args, "--set", "trainer.max_epochs=2"])
    assert longer.exit_code == 0, longer.output
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["stopped_epoch"] == 2
    assert resumed["history"][:1] == metrics["history"]

    bad = CliRunner().invoke(app, [*args[:4], "--set", "model.dimm=1", "--quiet"])
    assert isinstance(bad.exception, RecipeError) and "model.dimm" in str(bad.exception)


# ------------------------------------------------------------ killed mid-run

KILL_EPOCHS = 6


def train_command(out: Path, data_dir: Path) -> list[str]:
    """``python -m fedllmrec train`` on SASRec ml-100k, sized so an epoch takes ~0.5 s."""
    recipe = REPO / "recipes" / "sasrec-ml100k.toml"
    command = [sys.executable, "-m", "fedllmrec", "train", str(recipe)]
    command += ["--out", str(out), "--data-dir", str(data_dir), "--quiet", "--threads", "1"]
    for override in (
        "model.max_len=20",
        "model.dim=32",
        f"data.split.max_history={SHORT}",
        f"trainer.max_epochs={KILL_EPOCHS}",
        "trainer.eval_every=1",
        "trainer.patience=0",  # never stop early: every epoch up to the last is trained
    ):
        command += ["--set", override]
    return command


def run_to_end(command: list[str], log: Path) -> None:
    with open(log, "w") as stderr:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=stderr, timeout=120)
    assert done.returncode == 0, log.read_text()


@pytest.fixture(scope="module")
def cli_uninterrupted(
    short_history: Prepared, ml100k_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """A whole run of :func:`train_command`, in its own process (short_history: prepared)."""
    out = tmp_path_factory.mktemp("cli-uninterrupted") / "run"
    run_to_end(train_command(out, ml100k_root), out.parent / "stderr.txt")
    return out, json.loads((out / "metrics.json").read_text())


def test_run_killed_mid_training_resumes_to_the_same_metrics(
    cli_uninterrupted: tuple[Path, dict[str, Any]], ml100k_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = train_command(out, ml100k_root)
    log = tmp_path / "killed-stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 90
        while not (out / "last.pt").is_file():
            assert proc.poll() is None, f"exited {proc.returncode} first: {log.read_text()}"
            assert time.monotonic() < deadline, "no checkpoint after 90 s"
            time.sleep(0.02)
        time.sleep(0.2)  # into the next epoch: killed between checkpoints, not on one
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert not (out / "metrics.json").exists()
    killed_at = load_checkpoint(out / "last.pt")["trainer"]["epoch"]
    assert 1 <= killed_at < KILL_EPOCHS

    run_to_end(command, tmp_path / "resumed-stderr.txt")
    resumed = json.loads((out / "metrics.json").read_text())
    whole = cli_uninterrupted[1]
    assert [row["epoch"] for row in resumed["history"]] == list(range(1, KILL_EPOCHS + 1))
    assert [row["loss"] for row in resumed["history"]] == [row["loss"] for row in whole["history"]]
    assert (resumed["best_epoch"], resumed["valid"], resumed["test"]) == (
        whole["best_epoch"],
        whole["valid"],
        whole["test"],
    )
    assert without_timing(resumed) == without_timing(whole)


def test_cli_refuses_a_damaged_best_checkpoint_in_one_line(
    cli_uninterrupted: tuple[Path, dict[str, Any]], ml100k_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(cli_uninterrupted[0], out)
    flip_middle(out / "best.pt")
    before = (out / "metrics.json").read_bytes()
    done = subprocess.run(
        train_command(out, ml100k_root), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {out / 'best.pt'}: checkpoint is damaged (sha256 "), lines
    assert (out / "metrics.json").read_bytes() == before  # refused before anything was rewritten
