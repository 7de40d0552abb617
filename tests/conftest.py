"""Shared fixtures: the real datasets, loaded and prepared once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedllmrec.data import RecDataset, load_dataset
from fedllmrec.data.prepare import Prepared, prepare

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FEDLLMREC_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests never read or write the user's real cache.
    os.environ["FEDLLMREC_CACHE"] = str(tmp_path_factory.mktemp("fedllmrec-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"


def _require(folder: str) -> Path:
    path = DATA_ROOT / folder
    if not path.is_dir():
        pytest.skip(f"real data {path} not present (set FEDLLMREC_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA_ROOT


@pytest.fixture(scope="session")
def ml100k() -> RecDataset:
    return load_dataset("ml-100k", _require("ml-100k"))


@pytest.fixture(scope="session")
def kuaisar() -> RecDataset:
    return load_dataset("kuaisar-r", _require("kuaisar-r-mrff"))


@pytest.fixture(scope="session")
def art_office() -> RecDataset:
    return load_dataset("art-office", _require("amazon-art-office-urllm"))


@pytest.fixture(scope="session")
def ml100k_prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(
        "ml-100k", data_dir=_require("ml-100k"), out=tmp_path_factory.mktemp("prep") / "ml"
    )
