"""Data commands: --encoding reaches the loader, --negatives the prepare, --threads torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedllmrec.apps.cli import app
from fedllmrec.data import RecDataset, load_dataset

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLLMREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def latin1(tmp_path: Path) -> Path:
    """A generic-format folder whose items.csv is latin-1 (a spreadsheet export)."""
    folder = tmp_path / "cafe"
    folder.mkdir()
    rows = [f"u{u},i{(u + t) % 8},{t}" for u in range(4) for t in range(4)]
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows))
    titles = ["Café crème", "Crêpe", "Thé", "Brioche", "Éclair", "Flan", "Gâteau", "Pain"]
    (folder / "items.csv").write_bytes(
        ("item_id,title\n" + "".join(f"i{i},{t}\n" for i, t in enumerate(titles))).encode("latin-1")
    )
    return folder


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "fedllmrec"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=os.environ, timeout=120, check=False
    )


def test_encoding_error_advice_is_accurate(latin1: Path, tmp_path: Path) -> None:
    # Without the encoding: one line naming file and line, advising --encoding.
    failed = _cli("data", "stats", str(latin1))
    assert failed.returncode == 2, failed.stderr
    [line] = failed.stderr.splitlines()
    assert f"{latin1 / 'items.csv'}:2: byte 0xe9 is not valid utf-8 text" in line
    assert "--encoding latin-1" in line and '"encoding": "latin-1" in dataset.json' in line

    # Following that advice works, on both commands.
    stats = runner.invoke(app, ["data", "stats", str(latin1), "--encoding", "latin-1", "--json"])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["items"] == 8
    out = tmp_path / "prepared"
    args = ["data", "prepare", str(latin1), "--encoding", "latin-1", "--negatives", "2"]
    prepared = runner.invoke(app, [*args, "--out", str(out)])
    assert prepared.exit_code == 0, prepared.output
    assert RecDataset.load(out).items.column("title")[0].as_py() == "Café crème"
    # ... and so does the other advice, dataset.json, and the Python argument.
    assert load_dataset(latin1, encoding="latin-1").items.column("title")[4].as_py() == "Éclair"
    (latin1 / "dataset.json").write_text('{"encoding": "latin-1"}')
    assert load_dataset(latin1).items.column("title")[6].as_py() == "Gâteau"


def test_encoding_is_for_generic_folders_only(data_root: Path) -> None:
    if not (data_root / "ml-100k").is_dir():
        pytest.skip("real data ml-100k not present (set FEDLLMREC_DATA)")
    result = runner.invoke(app, ["data", "stats", "ml-100k", "--encoding", "latin-1"])
    assert result.exit_code != 0
    assert "only to generic-format folders" in str(result.exception)


def test_prepare_and_baselines_with_fewer_or_no_negatives(latin1: Path, tmp_path: Path) -> None:
    (latin1 / "dataset.json").write_text('{"encoding": "latin-1"}')
    out = tmp_path / "none"
    result = runner.invoke(app, ["data", "prepare", str(latin1), "--negatives", "0", "--out", out])
    assert result.exit_code == 0, result.output
    assert "0 sampled negatives" in result.stdout
    assert json.loads((out / "manifest.json").read_text())["negatives"]["sampled"] == 0
    # 7 items occur in the data, 4 touched by each user: the default 99 cannot be drawn.
    result = runner.invoke(app, ["data", "prepare", str(latin1)])
    assert result.exit_code != 0 and "--negatives 3" in str(result.exception)

    # Baselines evaluate 1+N sampled lists, or full ranking only without negatives.
    few = runner.invoke(app, ["baselines", str(latin1), "--negatives", "3"])
    assert few.exit_code == 0, few.output
    assert "sampled-1+3" in few.stdout
    none = runner.invoke(app, ["baselines", str(latin1), "--negatives", "0"])
    assert none.exit_code == 0, none.output
    assert "full" in none.stdout and "sampled" not in none.stdout


COMMANDS = [["data", "stats"], ["data", "prepare"], ["baselines"], ["embed"], ["retrieve"]]


@pytest.mark.parametrize("command", [*COMMANDS, ["demo"], ["train"]], ids=" ".join)
def test_every_computing_command_takes_threads(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "--threads" in result.stdout
    if command in COMMANDS:
        assert "--encoding" in result.stdout


def test_threads_sets_torch_threads(latin1: Path) -> None:
    import pyarrow

    before, arrow_before = torch.get_num_threads(), pyarrow.cpu_count()
    try:
        args = ["data", "stats", str(latin1), "--encoding", "latin-1", "--threads", "1"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1 and pyarrow.cpu_count() == 1
        bad = runner.invoke(app, ["data", "stats", str(latin1), "--threads", "0"])
        assert bad.exit_code == 2 and "--threads" in bad.output
    finally:
        torch.set_num_threads(before)
        pyarrow.set_cpu_count(arrow_before)
