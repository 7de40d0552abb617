"""Bad input fails with one line naming the exact file, 1-based line and field; writes are atomic.

Each case copies a real dataset folder (or a small generic-format folder) into
``tmp_path``, corrupts one line and checks where the error points.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fedllmrec.data.prepare as prepare_module
from fedllmrec.data.art_office import load_art_office
from fedllmrec.data.generic import load_generic
from fedllmrec.data.kuaisar import load_kuaisar_r
from fedllmrec.data.movielens import load_movielens_100k
from fedllmrec.data.prepare import load_prepared, prepare
from fedllmrec.data.registry import locate
from fedllmrec.errors import DataFormatError, DatasetNotFoundError
from fedllmrec.io import atomic_dir, atomic_path

DATA_ROOT = Path(
    os.environ.get("FEDLLMREC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
ML = "ml-100k"
KUAI = "kuaisar-r-mrff"
AO = "amazon-art-office-urllm"


# --------------------------------------------------------------------------- helpers


def _real(folder: str) -> Path:
    path = DATA_ROOT / folder
    if not path.is_dir():
        pytest.skip(f"real data {path} not present (set FEDLLMREC_DATA)")
    return path


def _copy(tmp_path: Path, folder: str) -> Path:
    """A private, writable copy of a real dataset folder."""
    dst = tmp_path / folder
    shutil.copytree(_real(folder), dst)
    return dst


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def _line(path: Path, line: int) -> bytes:
    """The raw bytes of 1-based ``line`` of ``path``."""
    return _lines(path)[line - 1]


def _set_line(path: Path, line: int, new: bytes) -> bytes:
    """Replace 1-based ``line`` of ``path`` (raw bytes) and return what was there."""
    lines = _lines(path)
    old = lines[line - 1]
    assert old, f"{path}:{line} is empty; pick another line"
    lines[line - 1] = new
    path.write_bytes(b"\n".join(lines))
    return old


def _check(
    err: BaseException, path: Path, line: int | None, field: str | None, *words: str
) -> None:
    """``err`` is a one-line DataFormatError at exactly ``path:line``, naming ``field``."""
    assert isinstance(err, DataFormatError)
    assert err.path == str(path)
    assert err.line == line
    assert err.field == field
    msg = str(err)
    assert "\n" not in msg
    where = str(path) if line is None else f"{path}:{line}"
    assert msg.startswith(f"{where}: "), msg
    if line is not None:
        assert f"{path.name}:{line}: " in msg
    if field is not None:
        assert f"field '{field}'" in msg
    for word in words:
        assert word in msg, (word, msg)


# --------------------------------------------------------------------------- MovieLens 100K


@pytest.mark.parametrize("line", [1, 3, 100_000])
def test_ml100k_non_integer_timestamp(tmp_path: Path, line: int) -> None:
    folder = _copy(tmp_path, ML)
    old = _line(folder / "u.data", line)
    user, item, rating, _ = old.split(b"\t")
    _set_line(folder / "u.data", line, b"\t".join([user, item, rating, b"88125O949"]))
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    assert err.value.line == line and err.value.field == "timestamp"
    assert f"u.data:{line}" in str(err.value)
    _check(err.value, folder / "u.data", line, "timestamp", "'88125O949'", "integer")


def test_ml100k_line_with_a_missing_column(tmp_path: Path) -> None:
    folder = _copy(tmp_path, ML)
    old = _line(folder / "u.data", 777)
    _set_line(folder / "u.data", 777, b"\t".join(old.split(b"\t")[:3]))
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    # A missing column has no single field to blame; file and line are exact.
    _check(err.value, folder / "u.data", 777, None, "expected 4 columns", "found 3")


def test_ml100k_fractional_rating(tmp_path: Path) -> None:
    folder = _copy(tmp_path, ML)
    old = _line(folder / "u.data", 4242)
    parts = old.split(b"\t")
    parts[2] = b"3.5"
    _set_line(folder / "u.data", 4242, b"\t".join(parts))
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    _check(err.value, folder / "u.data", 4242, "rating", "'3.5'")


def test_ml100k_genre_flag_of_2(tmp_path: Path) -> None:
    folder = _copy(tmp_path, ML)
    # u.item is latin-1; work on bytes. Genre flags are the last 19 fields; flag 5 is Comedy.
    old = _line(folder / "u.item", 10)
    parts = old.split(b"|")
    assert len(parts) == 5 + 19
    parts[5 + 5] = b"2"
    _set_line(folder / "u.item", 10, b"|".join(parts))
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    _check(err.value, folder / "u.item", 10, "genre_5", "0 or 1", "got 2")


def test_ml100k_invalid_utf8_in_u_user(tmp_path: Path) -> None:
    folder = _copy(tmp_path, ML)
    old = _line(folder / "u.user", 100)
    _set_line(folder / "u.user", 100, old.replace(b"|", b"|\xff", 1))
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    _check(err.value, folder / "u.user", 100, None, "0xff", "utf-8")


def test_ml100k_missing_u_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _copy(tmp_path, ML)
    (folder / "u.user").unlink()
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    _check(err.value, folder / "u.user", None, None, "file not found")

    # Looked up by name, the incomplete folder is skipped and nothing else has the files.
    monkeypatch.delenv("FEDLLMREC_DATA", raising=False)
    monkeypatch.setenv("FEDLLMREC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError) as not_found:
        locate("ml-100k", data_dir=tmp_path, download=False)
    msg = str(not_found.value)
    assert "u.user" in msg and str(folder) in msg and "\n" not in msg


def test_ml100k_empty_interactions_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path, ML)
    (folder / "u.data").write_bytes(b"")
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    _check(err.value, folder / "u.data", None, None, "no data rows")


# --------------------------------------------------------------------------- KuaiSAR-R


def test_kuaisar_invalid_utf8_byte_names_its_line(tmp_path: Path) -> None:
    folder = _copy(tmp_path, KUAI)
    old = _line(folder / "df.csv", 5000)
    _set_line(folder / "df.csv", 5000, old[:2] + b"\xc3\x28" + old[2:])  # bad 2-byte sequence
    with pytest.raises(DataFormatError) as err:
        load_kuaisar_r(folder)
    _check(err.value, folder / "df.csv", 5000, None, "0xc3", "utf-8")


def test_kuaisar_bad_header(tmp_path: Path) -> None:
    folder = _copy(tmp_path, KUAI)
    assert _set_line(folder / "df.csv", 1, b"user_id,item_id,timestamp,is_click") == (
        b"user_id,video_id,timestamp,is_click"
    )
    with pytest.raises(DataFormatError) as err:
        load_kuaisar_r(folder)
    _check(err.value, folder / "df.csv", 1, None, "bad header", "video_id")


def test_kuaisar_fractional_millisecond_timestamp(tmp_path: Path) -> None:
    folder = _copy(tmp_path, KUAI)
    old = _line(folder / "df.csv", 31_337)
    user, video, _, click = old.split(b",")
    _set_line(folder / "df.csv", 31_337, b",".join([user, video, b"1685336204570.5", click]))
    with pytest.raises(DataFormatError) as err:
        load_kuaisar_r(folder)
    _check(err.value, folder / "df.csv", 31_337, "timestamp", "whole number")


def test_kuaisar_header_only_interactions(tmp_path: Path) -> None:
    folder = _copy(tmp_path, KUAI)
    (folder / "df.csv").write_bytes(_lines(folder / "df.csv")[0] + b"\n")
    with pytest.raises(DataFormatError) as err:
        load_kuaisar_r(folder)
    _check(err.value, folder / "df.csv", None, None, "no data rows")


# --------------------------------------------------------------------------- Art-Office


def test_art_office_user_lines_without_a_shared_prefix(tmp_path: Path) -> None:
    folder = _copy(tmp_path, AO)
    path = folder / "test_F2.txt"
    # Lines 7 and 8 are one user's two samples; change one prefix item of line 8 only.
    line7, line8 = _lines(path)[6:8]
    assert line7.split(b"\t")[:3] == line8.split(b"\t")[:3]
    parts = line8.split(b"\t")
    parts[2] = b"|".join([b"0", *parts[2].split(b"|")[1:]])
    assert parts[2] != line7.split(b"\t")[2]
    _set_line(path, 8, b"\t".join(parts))
    with pytest.raises(DataFormatError) as err:
        load_art_office(folder)
    _check(err.value, path, 8, None, "lines 7 and 8", "prefix")


def _unknown_item(raw: bytes, position: int) -> bytes:
    """``raw`` with the item of token ``position`` replaced by an id in no item list."""
    parts = raw.rstrip(b"\t").split(b"\t")
    fields = parts[position].split(b"|")
    parts[position] = b"|".join([b"99999999", *fields[1:]])
    return b"\t".join(parts) + b"\t"


@pytest.mark.parametrize(
    ("edits", "line"),
    [
        ({5: 2, 6: 2}, 5),  # an item of the prefix both lines share: named on line 1 of the user
        ({5: -1}, 5),  # the first line's own target
        ({6: -1}, 6),  # the second line's own target: on line 6, not line 5
    ],
    ids=["prefix-item", "first-target", "second-target"],
)
def test_art_office_unknown_item(tmp_path: Path, edits: dict[int, int], line: int) -> None:
    folder = _copy(tmp_path, AO)
    path = folder / "train_F2.txt"
    lines = _lines(path)
    for edit_line, position in edits.items():
        _set_line(path, edit_line, _unknown_item(lines[edit_line - 1], position))
    with pytest.raises(DataFormatError) as err:
        load_art_office(folder)
    _check(err.value, path, line, "item", "item 99999999", "no item list")


def test_art_office_odd_number_of_lines(tmp_path: Path) -> None:
    folder = _copy(tmp_path, AO)
    path = folder / "valid_F2.txt"
    lines = _lines(path)
    assert lines[-1] == b""
    path.write_bytes(b"\n".join(lines[:-2]) + b"\n")  # drop the last user's second line
    n = len(lines) - 2
    with pytest.raises(DataFormatError) as err:
        load_art_office(folder)
    _check(err.value, path, n, None, "odd number of lines")


# --------------------------------------------------------------------------- generic format

GOOD_INTERACTIONS = (
    "user_id,item_id,timestamp,label\n"
    "u1,i1,100,4\n"
    "u1,i2,200,5\n"
    "u2,i1,150,3\n"
    "u2,i3,300,1\n"
    "u3,i2,50,2\n"
)
GOOD_ITEMS = 'item_id,title,domain\ni1,"Alpha, the film",movies\ni2,Beta,movies\ni3,Gamma,books\n'


@pytest.fixture
def generic(tmp_path: Path) -> Path:
    """A valid generic-format folder (loads fine; each test breaks one thing)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "interactions.csv").write_text(GOOD_INTERACTIONS)
    (folder / "items.csv").write_text(GOOD_ITEMS)
    (folder / "dataset.json").write_text(json.dumps({"name": "mine", "encoding": "utf-8"}))
    return folder


def _replace_line(path: Path, line: int, new: str) -> None:
    _set_line(path, line, new.encode("utf-8"))


def test_generic_base_folder_is_valid(generic: Path) -> None:
    stats = load_generic(generic).stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 3, 5)


def test_generic_missing_timestamp_column(generic: Path) -> None:
    path = generic / "interactions.csv"
    text = "\n".join(
        ",".join(r.split(",")[:2] + r.split(",")[3:]) for r in GOOD_INTERACTIONS.split()
    )
    path.write_text(text + "\n")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 1, "timestamp", "missing column", "user_id")


def test_generic_non_numeric_label(generic: Path) -> None:
    path = generic / "interactions.csv"
    _replace_line(path, 4, "u2,i1,150,three")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 4, "label", "'three'", "a number")


def test_generic_non_integer_timestamp(generic: Path) -> None:
    path = generic / "interactions.csv"
    _replace_line(path, 6, "u3,i2,2023-01-01,2")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 6, "timestamp", "'2023-01-01'", "integer")


def test_generic_unknown_item_names_interactions_and_line(generic: Path) -> None:
    path = generic / "interactions.csv"
    _replace_line(path, 5, "u2,i9,300,1")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 5, "item_id", "'i9'", "not in the item table")


def test_generic_unknown_encoding_names_dataset_json(generic: Path) -> None:
    info = generic / "dataset.json"
    info.write_text(json.dumps({"name": "mine", "encoding": "utf-42"}))
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, info, None, "encoding", "unknown encoding 'utf-42'")


def test_generic_invalid_json(generic: Path) -> None:
    info = generic / "dataset.json"
    info.write_text('{\n  "name": "mine",\n  "time_unit": s\n}\n')
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, info, 3, None, "invalid JSON")


def test_generic_header_only_is_an_empty_dataset(generic: Path) -> None:
    path = generic / "interactions.csv"
    path.write_text("user_id,item_id,timestamp,label\n")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, None, None, "no data rows")


def test_generic_missing_interactions_file(generic: Path) -> None:
    (generic / "interactions.csv").unlink()
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, generic / "interactions.csv", None, None, "file not found")


def test_generic_wrong_column_count(generic: Path) -> None:
    path = generic / "interactions.csv"
    _replace_line(path, 3, "u1,i2,200,5,extra")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 3, None, "expected 4 columns, found 5")


def test_generic_invalid_byte_far_into_the_file(generic: Path) -> None:
    # Past the first 8 KiB a streaming decoder's offsets are chunk-relative; the line
    # must still be exact.
    path = generic / "interactions.csv"
    rows = [f"u{i % 3 + 1},i{i % 3 + 1},{i},1" for i in range(3000)]
    rows[2500] = "u1,i\xe91,2500,1"
    path.write_bytes(
        ("user_id,item_id,timestamp,label\n" + "\n".join(rows) + "\n").encode("cp1252")
    )
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 2502, None, "0xe9", "utf-8")

    # Declaring the file's encoding in dataset.json makes it load.
    (generic / "dataset.json").write_text(json.dumps({"encoding": "cp1252"}))
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 2502, "item_id", "'i\xe91'", "not in the item table")


def test_generic_lines_counted_through_quoted_newlines(generic: Path) -> None:
    path = generic / "interactions.csv"
    path.write_text(
        "user_id,item_id,timestamp,note\n"
        'u1,i1,100,"a note\nover two lines"\n'
        "\n"
        "u1,i2,200,ok\n"
        "u2,i1,x,ok\n"
    )
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 6, "timestamp", "'x'")


def test_generic_parquet_missing_column(generic: Path) -> None:
    (generic / "interactions.csv").unlink()
    path = generic / "interactions.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"]}), path)
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    # Parquet has no lines: the error names the file and the column.
    _check(err.value, path, None, "timestamp", "missing column")


def test_generic_parquet_empty_value_names_the_row(generic: Path) -> None:
    (generic / "interactions.csv").unlink()
    path = generic / "interactions.parquet"
    table = {"user_id": ["u1", "u2", None], "item_id": ["i1", "i2", "i3"], "timestamp": [1, 2, 3]}
    pq.write_table(pa.table(table), path)
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 3, "user_id", "empty value")


def test_generic_parquet_that_is_not_parquet(generic: Path) -> None:
    (generic / "interactions.csv").unlink()
    path = generic / "interactions.parquet"
    path.write_text(GOOD_INTERACTIONS)
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, None, None, "not a readable Parquet file")


def test_generic_interaction_domain_disagreeing_with_items(generic: Path) -> None:
    path = generic / "interactions.csv"
    rows = GOOD_INTERACTIONS.splitlines()
    domains = ["domain", "movies", "movies", "movies", "books", "movies"]
    path.write_text("\n".join(f"{r},{d}" for r, d in zip(rows, domains, strict=True)) + "\n")
    assert load_generic(generic).n_interactions == 5  # every domain agrees with items.csv
    _replace_line(path, 4, "u2,i1,150,3,books")  # i1 is a movie in items.csv, line 2
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 4, "domain", "'books'", "items.csv:2", "item 'i1'", "'movies'")


def test_generic_item_with_two_domains_in_interactions(generic: Path) -> None:
    # Without an item table (or its domain column) items take their interactions' domain,
    # which must then be one per item.
    (generic / "items.csv").unlink()
    path = generic / "interactions.csv"
    path.write_text(
        "user_id,item_id,timestamp,domain\nu1,i1,1,movies\nu1,i2,2,books\nu2,i1,3,books\n"
    )
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 4, "domain", "item 'i1'", "'movies' on line 2", "not 'books'")

    (generic / "items.csv").write_text("item_id,title\ni1,A\ni2,B\ni3,C\n")
    _replace_line(path, 4, "u2,i1,3,movies")
    dataset = load_generic(generic)
    assert dataset.items.column("domain").to_pylist() == ["movies", "books", "default"]


def test_generic_duplicate_item_id_names_its_line(generic: Path) -> None:
    path = generic / "items.csv"
    path.write_text(GOOD_ITEMS + "i4,Delta,books\ni1,Alpha again,movies\n")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 6, "item_id", "duplicate item id 'i1'", "first on line 2")


def test_generic_duplicate_user_id_names_its_line(generic: Path) -> None:
    path = generic / "users.csv"
    path.write_text("user_id,age\nu1,20\nu2,30\nu3,40\nu2,50\n")
    with pytest.raises(DataFormatError) as err:
        load_generic(generic)
    _check(err.value, path, 5, "user_id", "duplicate user id 'u2'", "first on line 3")


def test_ml100k_duplicate_item_id_names_its_line(tmp_path: Path) -> None:
    folder = _copy(tmp_path, ML)
    _set_line(folder / "u.item", 20, _line(folder / "u.item", 3))
    with pytest.raises(DataFormatError) as err:
        load_movielens_100k(folder)
    _check(err.value, folder / "u.item", 20, "item_id", "duplicate item id '3'", "first on line 3")


def test_art_office_item_id_in_both_item_lists(tmp_path: Path) -> None:
    folder = _copy(tmp_path, AO)
    office = folder / "item_listO_AA_F.csv"
    old = _set_line(office, 3, b"1,some office item,0,office products")
    assert old.split(b",")[2] == b"18640"
    with pytest.raises(DataFormatError) as err:
        load_art_office(folder)
    _check(
        err.value,
        office,
        3,
        "item_id",
        "duplicate item id '0'",
        f"first on line 2 of {folder / 'item_listA_F.csv'}",
    )


# --------------------------------------------------------------------------- command line


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "fedllmrec"
    env = {**os.environ, "FEDLLMREC_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_cli_bad_generic_folder_one_line_exit_2(generic: Path, tmp_path: Path) -> None:
    path = generic / "interactions.csv"
    # A value that looks like console markup must be printed as it is, not interpreted.
    _replace_line(path, 3, "u1,i2,[/bold],5")
    result = _cli("data", "stats", str(generic), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ")
    assert f"{path}:3: field 'timestamp'" in lines[0]
    assert "'[/bold]'" in lines[0]


def test_cli_corrupt_ml100k_one_line_exit_2(tmp_path: Path) -> None:
    folder = _copy(tmp_path, ML)
    old = _line(folder / "u.data", 3)
    _set_line(folder / "u.data", 3, old.rsplit(b"\t", 1)[0] + b"\tsoon")
    result = _cli("data", "stats", "ml-100k", "--data-dir", str(tmp_path), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{folder / 'u.data'}:3: field 'timestamp'" in lines[0]


# --------------------------------------------------------------------------- atomic writes


def _interrupt_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    real = prepare_module.sample_candidates

    def fake(split: Any, role: str, **kwargs: Any) -> Any:
        if role == "test":
            raise KeyboardInterrupt
        return real(split, role, **kwargs)

    monkeypatch.setattr(prepare_module, "sample_candidates", fake)


def _interrupt_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    # Interrupt inside the atomic folder, after the tables and candidates are written.
    def fake(path: Path, obj: Any) -> None:
        written = {p.name for p in path.parent.iterdir()}
        assert {"interactions.parquet", "candidates_test.parquet"} <= written
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "atomic_write_json", fake)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "interrupt", [_interrupt_candidates, _interrupt_manifest], ids=["before-write", "mid-write"]
)
def test_interrupted_prepare_leaves_nothing_or_the_previous_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    interrupt: Callable[[pytest.MonkeyPatch], None],
) -> None:
    data_dir = _real(ML).parent
    out = tmp_path / "prep"
    with monkeypatch.context() as patch:
        interrupt(patch)
        with pytest.raises(KeyboardInterrupt):
            prepare("ml-100k", data_dir=data_dir, out=out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left beside it

    done = prepare("ml-100k", data_dir=data_dir, out=out)
    assert done.folder == out and (out / "manifest.json").is_file()
    before = _snapshot(out)

    with monkeypatch.context() as patch:
        interrupt(patch)
        with pytest.raises(KeyboardInterrupt):
            prepare("ml-100k", data_dir=data_dir, out=out, force=True)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["prep"]
    again = load_prepared(out)
    assert json.loads((out / "manifest.json").read_text())["stats"]["interactions"] == 100_000
    assert (again.candidates["test"].items == done.candidates["test"].items).all()


def test_atomic_path_keeps_the_target_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text("half")
            raise exc
        assert target.read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]

    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_creates_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "new.bin"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        raise ValueError
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_dir_keeps_the_previous_folder_on_error(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    target.mkdir()
    (target / "a.txt").write_text("old a")
    for exc in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_dir(target) as tmp:
            assert tmp.parent == tmp_path and tmp.is_dir() and list(tmp.iterdir()) == []
            (tmp / "a.txt").write_text("new a")
            (tmp / "b.txt").write_text("new b")
            raise exc
        assert _snapshot(target) == {"a.txt": b"old a"}
        assert [p.name for p in tmp_path.iterdir()] == ["ds"]

    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new b")
    # The folder is replaced as a whole: files of the old one do not linger.
    assert _snapshot(target) == {"b.txt": b"new b"}
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_atomic_dir_creates_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.parquet").write_bytes(b"\0" * 10)
        raise RuntimeError
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_generic_dataset_json_must_be_a_valid_object(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    folder.mkdir()
    # A byte-order mark before the header is tolerated (spreadsheet exports write one).
    (folder / "interactions.csv").write_text("\ufeffuser_id,item_id,timestamp\nu,i,1\n")
    assert load_generic(folder).n_interactions == 1
    (folder / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="JSON object"):
        load_generic(folder)
    (folder / "dataset.json").write_text('{"time_unit": "days"}')
    with pytest.raises(DataFormatError) as err:
        load_generic(folder)
    assert err.value.field == "time_unit" and "dataset.json" in str(err.value)
    (folder / "dataset.json").write_text('{"label_kind": "stars"}')
    with pytest.raises(DataFormatError, match="stars"):
        load_generic(folder)
