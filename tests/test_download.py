"""The MovieLens 100K download without internet: a zip of the real files, served locally."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedllmrec.data import registry
from fedllmrec.data.movielens import FILE_MD5, download_movielens_100k, load_movielens_100k
from fedllmrec.data.registry import load_dataset, locate
from fedllmrec.errors import DatasetNotFoundError, FedLLMRecError

DATA_ROOT = Path(
    os.environ.get("FEDLLMREC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
FILES = ("README", "u.data", "u.genre", "u.info", "u.item", "u.occupation", "u.user")


def _real_folder() -> Path:
    folder = DATA_ROOT / "ml-100k"
    if not folder.is_dir():
        pytest.skip(f"real data {folder} not present (set FEDLLMREC_DATA)")
    return folder


def _make_zip(path: Path, *, change: dict[str, bytes] | None = None, drop: str = "") -> Path:
    """An ml-100k.zip laid out as GroupLens ships it: every member under ``ml-100k/``."""
    real = _real_folder()
    change = change or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("ml-100k/", b"")
        for name in FILES:
            if name != drop:
                archive.writestr(f"ml-100k/{name}", change.get(name, (real / name).read_bytes()))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (a free port), and its base URL."""
    root = tmp_path_factory.mktemp("www")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def good_zip(served: tuple[Path, str]) -> str:
    """URL of a faithful ml-100k.zip."""
    root, base = served
    _make_zip(root / "ml-100k.zip")
    return f"{base}/ml-100k.zip"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_download_over_http_unpacks_and_loads(good_zip: str, tmp_path: Path) -> None:
    target = tmp_path / "data" / "ml-100k"
    assert download_movielens_100k(target, url=good_zip) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    for name, md5 in FILE_MD5.items():
        assert _md5(target / name) == md5
    assert (target / "README").read_bytes() == (_real_folder() / "README").read_bytes()
    # Only the finished folder is left: no temporary folder beside it.
    assert [p.name for p in target.parent.iterdir()] == ["ml-100k"]

    stats = load_movielens_100k(target).stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)


def test_download_from_a_file_url(tmp_path: Path) -> None:
    archive = _make_zip(tmp_path / "ml-100k.zip", drop="README")
    target = download_movielens_100k(tmp_path / "got", url=archive.as_uri())
    assert {p.name for p in target.iterdir()} == set(FILES) - {"README"}
    assert {name: _md5(target / name) for name in FILE_MD5} == FILE_MD5


@pytest.mark.parametrize("member", ["u.data", "u.item"])
def test_one_changed_byte_fails_the_checksum_and_leaves_nothing(
    tmp_path: Path, member: str
) -> None:
    data = bytearray((_real_folder() / member).read_bytes())
    data[len(data) // 2] ^= 0x01
    archive = _make_zip(tmp_path / "ml-100k.zip", change={member: bytes(data)})
    target = tmp_path / "data" / "ml-100k"
    with pytest.raises(FedLLMRecError) as err:
        download_movielens_100k(target, url=archive.as_uri())
    msg = str(err.value)
    assert "checksum" in msg and member in msg and FILE_MD5[member] in msg
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_download_keeps_a_previous_folder(tmp_path: Path) -> None:
    target = tmp_path / "ml-100k"
    download_movielens_100k(target, url=_make_zip(tmp_path / "good.zip").as_uri())
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    data = bytearray((_real_folder() / "u.user").read_bytes())
    data[0] ^= 0x01
    bad = _make_zip(tmp_path / "bad.zip", change={"u.user": bytes(data)})
    with pytest.raises(FedLLMRecError, match="checksum"):
        download_movielens_100k(target, url=bad.as_uri())
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "good.zip", "ml-100k"]


def test_archive_without_a_required_file(tmp_path: Path) -> None:
    archive = _make_zip(tmp_path / "ml-100k.zip", drop="u.user")
    target = tmp_path / "out"
    with pytest.raises(FedLLMRecError, match=r"has no u\.user"):
        download_movielens_100k(target, url=archive.as_uri())
    assert not target.exists()


def test_download_that_is_not_a_zip(tmp_path: Path) -> None:
    page = tmp_path / "ml-100k.zip"
    page.write_text("<html>moved</html>")
    with pytest.raises(FedLLMRecError, match="not a zip archive"):
        download_movielens_100k(tmp_path / "out", url=page.as_uri())
    assert not (tmp_path / "out").exists()


def test_http_404_is_a_library_error(served: tuple[Path, str], tmp_path: Path) -> None:
    _, base = served
    url = f"{base}/no-such.zip"
    with pytest.raises(FedLLMRecError) as err:
        download_movielens_100k(tmp_path / "out", url=url)
    assert "could not download" in str(err.value) and url in str(err.value)
    assert "404" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_locate_downloads_into_the_cache_once(
    good_zip: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.delenv("FEDLLMREC_DATA", raising=False)
    monkeypatch.setenv("FEDLLMREC_CACHE", str(cache))
    calls: list[Path] = []

    def counting_download(target: Path) -> Path:
        calls.append(target)
        return download_movielens_100k(target, url=good_zip)

    spec = registry.DATASETS["ml-100k"]
    monkeypatch.setitem(
        registry.DATASETS, "ml-100k", dataclasses.replace(spec, download=counting_download)
    )

    # Without permission to download, nothing is found and every searched place is named.
    with pytest.raises(DatasetNotFoundError) as err:
        locate("ml-100k", data_dir=empty, download=False)
    assert str(empty / "ml-100k") in str(err.value)
    assert str(cache / "data" / "ml-100k") in str(err.value)
    assert calls == []

    folder = locate("ml-100k", data_dir=empty)
    assert folder == cache / "data" / "ml-100k"
    assert calls == [folder]
    assert {name: _md5(folder / name) for name in FILE_MD5} == FILE_MD5

    # The second look finds the cached copy and does not download again.
    assert locate("ml-100k", data_dir=empty) == folder
    assert locate("ml-100k") == folder
    assert len(calls) == 1
    stats = load_dataset("ml-100k", data_dir=empty).stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert len(calls) == 1
