"""Recipe values out of range stop at load time with a one-line error naming file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedllmrec.errors import OptionError, RecipeError
from fedllmrec.federated.config import FederationConfig, LocalConfig, StrategyConfig
from fedllmrec.models.sequential import SequentialRecommender, SequentialTrainConfig
from fedllmrec.recipes import load_recipe

REPO = Path(__file__).resolve().parents[1]
SASREC = REPO / "recipes" / "sasrec-ml100k.toml"
FEDADAM = REPO / "recipes" / "mrff-fedadam-kuaisar.toml"


@pytest.mark.parametrize(
    ("recipe", "override", "key", "problem"),
    [
        (SASREC, "model.dropout=1.5", "model.dropout", "must be in [0, 1), got 1.5"),
        (SASREC, "model.dropout=-0.1", "model.dropout", "must be in [0, 1)"),
        (SASREC, "model.dim=0", "model.dim", "must be >= 1, got 0"),
        (SASREC, "model.dim=33", "model.dim", "a multiple of n_heads=2"),
        (SASREC, "model.max_len=0", "model.max_len", ">= 1"),
        (SASREC, "model.n_layers=0", "model.n_layers", ">= 1"),
        (SASREC, "model.train.lr=0", "model.train.lr", "must be > 0"),
        (SASREC, "model.train.lr=nan", "model.train.lr", "must be > 0"),  # NaN fails too
        (SASREC, "model.train.batch_size=0", "model.train.batch_size", ">= 1"),
        (SASREC, "model.train.n_negatives=0", "model.train.n_negatives", ">= 1"),
        (FEDADAM, "model.item_features=[]", "model.item_features", "non-empty"),
        (FEDADAM, "model.balance_alpha=-1", "model.balance_alpha", ">= 0"),
        (FEDADAM, "federated.strategy.fraction=0", "federated.strategy.fraction", "(0, 1]"),
        (FEDADAM, "federated.strategy.drop_rate=1", "federated.strategy.drop_rate", "[0, 1)"),
        (FEDADAM, "federated.local.lr=-1", "federated.local.lr", "> 0"),
        (FEDADAM, "federated.chunk_windows=0", "federated.chunk_windows", ">= 1"),
        (FEDADAM, "federated.max_clients=-3", "federated.max_clients", ">= 0"),
        (SASREC, "trainer.eval_every=0", "trainer.eval_every", ">= 1"),
        (SASREC, "trainer.patience=-1", "trainer.patience", ">= 0"),
    ],
)
def test_out_of_range_value_names_file_and_key(
    recipe: Path, override: str, key: str, problem: str
) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, [override])
    message = str(caught.value)
    assert message.startswith(f"{recipe}: key '{key}': ")
    assert problem in message and message.endswith("(from --set)")
    assert "\n" not in message


def test_configs_check_their_ranges_outside_recipes_too() -> None:
    with pytest.raises(OptionError, match=r"SequentialRecommender\.dropout must be in \[0, 1\)"):
        SequentialRecommender(dropout=1.0)
    with pytest.raises(OptionError, match=r"SequentialTrainConfig\.epochs must be >= 0"):
        SequentialTrainConfig(epochs=-1)
    with pytest.raises(OptionError, match=r"LocalConfig\.steps must be >= 1"):
        LocalConfig(steps=0)
    with pytest.raises(OptionError, match=r"StrategyConfig\.server_lr must be > 0"):
        StrategyConfig(server_lr=0.0)
    with pytest.raises(OptionError, match=r"FederationConfig\.engine must be one of"):
        FederationConfig(engine="fast")  # type: ignore[arg-type]


def test_the_cli_reports_it_in_one_line_with_exit_2(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fedllmrec", "train", str(SASREC), "--out", str(tmp_path)]
    run = subprocess.run(
        [*command, "--set", "model.dropout=1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "key 'model.dropout': must be in [0, 1), got 1.5" in lines[0]
    assert "Traceback" not in run.stderr
