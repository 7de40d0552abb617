"""The real-data rule of tests/conftest.py: absent data skips, says so, and can be required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

PROBES = """
import pytest

from fedllmrec.data import load_dataset
from fedllmrec.errors import FedLLMRecError


def test_needs_ml100k(ml100k):
    raise AssertionError("ran without its data")


def test_needs_the_whole_checkout(data_root):
    raise AssertionError("ran without its data")


def test_without_data():
    assert 1 + 1 == 2


def test_never_downloads():
    with pytest.raises(FedLLMRecError, match="tests never download ml-100k"):
        load_dataset("ml-100k")
"""


def run_probes(folder: Path, data: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the probe tests under a copy of the real conftest, data looked up in ``data``."""
    folder.mkdir()
    (folder / "conftest.py").write_text(CONFTEST.read_text())
    (folder / "test_probes.py").write_text(PROBES)
    (folder / "pytest.ini").write_text("[pytest]\n")  # not the repo's addopts
    child = {k: v for k, v in os.environ.items() if k != "FEDLLMREC_REQUIRE_DATA"}
    child.update(FEDLLMREC_DATA=data, **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    folder = tmp_path / "no-data"
    folder.mkdir()
    return folder


def test_absent_data_skips_naming_the_folder_and_sums_up(tmp_path: Path, empty: Path) -> None:
    done = run_probes(tmp_path / "probes", str(empty))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "2 passed, 2 skipped" in out
    assert f"real data {empty / 'ml-100k'} not present (set FEDLLMREC_DATA)" in out
    whole = ", ".join(
        str(empty / f) for f in ("ml-100k", "kuaisar-r-mrff", "amazon-art-office-urllm")
    )
    assert f"real data {whole} not present" in out  # data_root names every absent folder
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("real data missing: 2 tests skipped (tests per absent folder: ")
    assert f"{empty / 'ml-100k'}: 2" in summary and f"{empty / 'kuaisar-r-mrff'}: 1" in summary


def test_required_data_turns_the_skips_into_failures(tmp_path: Path, empty: Path) -> None:
    done = run_probes(tmp_path / "probes", str(empty), FEDLLMREC_REQUIRE_DATA="1")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "2 passed, 2 errors" in out  # the dataset fixtures fail at setup
    assert "FEDLLMREC_REQUIRE_DATA=1 makes this a failure, not a skip" in out
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("real data missing: 2 tests failed (FEDLLMREC_REQUIRE_DATA=1)")
    )


def test_an_empty_data_variable_means_unset(tmp_path: Path) -> None:
    # The Makefile exports FEDLLMREC_DATA="" without ../shared/data; Path("") is the cwd.
    done = run_probes(tmp_path / "probes", "")
    assert done.returncode == 0, done.stdout + done.stderr
    # The conftest's default: shared/data beside the checkout (here, beside tmp_path).
    default = tmp_path.parent / "shared" / "data" / "ml-100k"
    assert f"real data {default} not present" in done.stdout
