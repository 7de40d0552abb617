"""Shared fixtures: the real datasets, loaded and prepared once per test session.

Real data rule: a test that needs a real dataset asks for its fixture (``ml100k``,
``kuaisar``, ``art_office``, ``ml100k_prepared``, ``ml100k_root``) or for ``data_root``
(the whole checkout, every folder in :data:`DATA_FOLDERS`). When a folder is missing the
test is skipped with ``real data <folder> not present (set FEDLLMREC_DATA)``, the run ends
with one line counting those skips per folder, and ``FEDLLMREC_REQUIRE_DATA=1`` (set by
``.ci/run``) turns each such skip into a failure, so CI cannot pass by skipping. Tests
never download: missing data skips at once instead of reaching for the network.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
import torch

from fedllmrec.data import RecDataset, load_dataset, registry
from fedllmrec.data.prepare import Prepared, prepare
from fedllmrec.errors import FedLLMRecError

REPO = Path(__file__).resolve().parents[1]
# The Makefile exports FEDLLMREC_DATA empty when there is no ../shared/data; the library
# reads empty as unset, and so must every test module's own lookup (Path("") is the cwd).
if not os.environ.get("FEDLLMREC_DATA"):
    os.environ.pop("FEDLLMREC_DATA", None)
DATA_ROOT = Path(os.environ.get("FEDLLMREC_DATA", REPO.parent / "shared" / "data"))
# Every real dataset folder the suite reads, by the name the fixtures use.
DATA_FOLDERS = {
    "ml-100k": "ml-100k",
    "kuaisar-r": "kuaisar-r-mrff",
    "art-office": "amazon-art-office-urllm",
}
REQUIRE_ENV = "FEDLLMREC_REQUIRE_DATA"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core: one torch thread each (a test may ask for more).
    torch.set_num_threads(1)
# The reason every real-data skip gives, here and in the modules with their own helper.
MISSING = re.compile(r"real data (?P<path>.+?) not present")
_missing: Counter[str] = Counter()  # absent folder -> tests that needed it
_missing_tests: set[str] = set()


def require_data(*folders: str) -> Path:
    """Return :data:`DATA_ROOT`, or skip naming each of ``folders`` that is not in it."""
    absent = [str(DATA_ROOT / f) for f in folders if not (DATA_ROOT / f).is_dir()]
    if absent:
        pytest.skip(f"real data {', '.join(absent)} not present (set FEDLLMREC_DATA)")
    return DATA_ROOT


def _no_download(name: str) -> Callable[[Path], Path]:
    def refuse(target: Path) -> Path:
        raise FedLLMRecError(
            f"tests never download {name} (into {target}); ask for its fixture in "
            "tests/conftest.py, which skips when the data is absent"
        )

    return refuse


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Tests never read or write the user's real cache, and never download: without
    # internet a download can wait a minute per test before failing.
    os.environ["FEDLLMREC_CACHE"] = str(tmp_path_factory.mktemp("fedllmrec-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    with pytest.MonkeyPatch.context() as patch:
        for name, spec in list(registry.DATASETS.items()):
            if spec.download is not None:
                guarded = dataclasses.replace(spec, download=_no_download(name))
                patch.setitem(registry.DATASETS, name, guarded)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if MISSING.search(reason) and os.environ.get(REQUIRE_ENV) == "1":
            report.outcome = "failed"
            why = reason.removeprefix("Skipped: ")
            report.longrepr = f"{why}; {REQUIRE_ENV}=1 makes this a failure, not a skip"
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Counted where reports arrive, so that under xdist the controller, which prints the
    # summary below, sees every worker's tests too.
    if not (report.skipped or report.failed) or report.longrepr is None:
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    match = MISSING.search(reason)
    if match and report.nodeid not in _missing_tests:
        _missing_tests.add(report.nodeid)
        for path in match["path"].split(", "):
            _missing[path] += 1


def pytest_unconfigure(config: pytest.Config) -> None:
    # After pytest's final counts line, where "N skipped" is read: say which and why.
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not _missing_tests:
        return
    required = os.environ.get(REQUIRE_ENV) == "1"
    verb = f"failed ({REQUIRE_ENV}=1)" if required else "skipped"
    hint = "" if required else f", or {REQUIRE_ENV}=1 to fail instead of skipping"
    folders = ", ".join(f"{path}: {n}" for path, n in sorted(_missing.items()))
    reporter.write_line(
        f"real data missing: {len(_missing_tests)} tests {verb} (tests per absent folder: "
        f"{folders}); set FEDLLMREC_DATA to the folder that holds them{hint}",
        yellow=True,
        bold=True,
    )


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The whole real-data checkout: skips unless every folder in DATA_FOLDERS is there."""
    return require_data(*DATA_FOLDERS.values())


@pytest.fixture(scope="session")
def ml100k_root() -> Path:
    """The data root, for tests that read only ml-100k from it (by name or recipe)."""
    return require_data(DATA_FOLDERS["ml-100k"])


@pytest.fixture(scope="session")
def ml100k() -> RecDataset:
    return load_dataset("ml-100k", require_data(DATA_FOLDERS["ml-100k"]))


@pytest.fixture(scope="session")
def kuaisar() -> RecDataset:
    return load_dataset("kuaisar-r", require_data(DATA_FOLDERS["kuaisar-r"]))


@pytest.fixture(scope="session")
def art_office() -> RecDataset:
    return load_dataset("art-office", require_data(DATA_FOLDERS["art-office"]))


@pytest.fixture(scope="session")
def ml100k_prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(
        "ml-100k",
        data_dir=require_data(DATA_FOLDERS["ml-100k"]),
        out=tmp_path_factory.mktemp("prep") / "ml",
    )
