"""The generic on-disk format, for users who bring their own data.

A folder holding:

``interactions.csv`` or ``interactions.parquet`` (required)
    columns ``user_id``, ``item_id``, ``timestamp`` (integer: unix time or a
    position); optional ``label`` (number; 1.0 when absent) and ``domain``.
``items.csv`` or ``items.parquet`` (optional)
    ``item_id``; optional ``domain`` (default: the one its interactions give,
    else ``"default"``), ``title``, ``category``, ``brand`` and any other
    columns, kept as item features.
``users.csv`` or ``users.parquet`` (optional)
    ``user_id`` plus attribute columns, treated as private attributes (audits only).
``dataset.json`` (optional)
    ``{"name": ..., "time_unit": "s" | "ms" | "position",
    "label_kind": "rating" | "click" | "implicit"}``.

CSV files are UTF-8 (override with ``dataset.json``'s ``"encoding"``, or the
``encoding`` argument, which wins) with a header line. Interactions whose items
are missing from ``items`` are errors, and so is an interaction ``domain`` that
disagrees with its item's: an item belongs to one domain.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pyarrow.parquet as pq

from fedllmrec.data.reader import parse_float, parse_int_from_float, read_text
from fedllmrec.data.schema import LabelKind, RecDataset, TimeUnit, build_dataset
from fedllmrec.errors import DataFormatError, FedLLMRecError

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
TABLES = ("interactions", "items", "users")
# Appended to a decoding error: every way a user can set the encoding.
ENCODING_HINT = (
    " (set the file's encoding, e.g. --encoding latin-1 on the command line,"
    ' encoding="latin-1" in load_dataset/prepare, or "encoding": "latin-1" in dataset.json)'
)


def _find_table(folder: Path, stem: str, required: bool) -> Path | None:
    for suffix in (".parquet", ".csv"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    if required:
        raise DataFormatError(folder / f"{stem}.csv", "file not found (nor a .parquet)")
    return None


def _read_table(path: Path, required: tuple[str, ...], encoding: str) -> dict[str, list[Any]]:
    """Read a CSV or Parquet table into lists, with ``_line`` holding each row's line number."""
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several unrelated types
            raise DataFormatError(path, f"not a readable Parquet file ({err})") from None
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        # Parquet has no lines; the 1-based data row is the closest thing.
        columns["_line"] = list(range(1, table.num_rows + 1))
    else:
        # Spreadsheet exports often start with a byte-order mark; it is not a header character.
        text = read_text(path, encoding, hint=ENCODING_HINT).removeprefix("\ufeff")
        reader = csv.reader(io.StringIO(text, newline=""))
        rows: list[list[str]] = []
        starts: list[int] = []  # 1-based first line of each row (quoted fields may span lines)
        end = 0
        for row in reader:
            starts.append(end + 1)
            rows.append(row)
            end = reader.line_num
        if not rows:
            raise DataFormatError(path, "file is empty (expected a header line)", line=1)
        header = [h.strip() for h in rows[0]]
        columns = {name: [] for name in header}
        columns["_line"] = []
        for line, row in zip(starts[1:], rows[1:], strict=True):
            if not row:
                continue
            if len(row) != len(header):
                raise DataFormatError(
                    path, f"expected {len(header)} columns, found {len(row)}", line=line
                )
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
            columns["_line"].append(line)
    for name in required:
        if name not in columns:
            present = sorted(set(columns) - {"_line"})
            raise DataFormatError(
                path,
                f"missing column (the file has {present})",
                line=1 if path.suffix == ".csv" else None,
                field=name,
            )
    if not columns["_line"]:
        raise DataFormatError(path, "no data rows")
    for name in required:
        for value, line in zip(columns[name], columns["_line"], strict=True):
            if value is None or str(value).strip() == "":
                raise DataFormatError(path, "empty value", line=line, field=name)
    return columns


def _as_numbers(
    path: Path, column: list[Any], lines: list[int], field: str, kind: type
) -> np.ndarray:
    # The strict parsers of the raw-format reader: whole numbers may be written "3.0".
    parse = parse_int_from_float if kind is int else parse_float
    out = []
    for value, line in zip(column, lines, strict=True):
        try:
            out.append(parse(value))
        except (TypeError, ValueError):
            expected = "an integer" if kind is int else "a number"
            raise DataFormatError(
                path, f"expected {expected}, got {value!r}", line=line, field=field
            ) from None
    return np.asarray(out, dtype=np.int64 if kind is int else np.float64)


def source_files(folder: str | Path) -> list[Path]:
    """The files :func:`load_generic` reads in ``folder``: those present, in a fixed order."""
    folder = Path(folder)
    info = folder / "dataset.json"
    files = [info] if info.is_file() else []
    for stem in TABLES:
        path = _find_table(folder, stem, required=False)
        if path is not None:
            files.append(path)
    return files


def _is_blank(value: Any) -> bool:
    return value is None or str(value).strip() == ""


def _domains_from_interactions(
    inter_path: Path, inter: dict[str, list[Any]], item_ids: list[Any]
) -> list[str]:
    """Each item's domain from its interactions ("default" without any); they must agree."""
    first: dict[str, tuple[str, int]] = {}  # item -> (domain, line where it was first given)
    for item, domain, line in zip(
        inter["item_id"], inter.get("domain", []), inter["_line"], strict=False
    ):
        if _is_blank(domain):
            continue
        item, domain = str(item), str(domain)
        seen, seen_line = first.setdefault(item, (domain, line))
        if seen != domain:
            raise DataFormatError(
                inter_path,
                f"item {item!r} is in domain {seen!r} on line {seen_line}, not {domain!r}",
                line=line,
                field="domain",
            )
    return [first.get(str(item), ("default", 0))[0] for item in item_ids]


def _check_domains(
    inter_path: Path, inter: dict[str, list[Any]], items_path: Path, items: dict[str, list[Any]]
) -> None:
    """Every interaction ``domain`` given must be its item's domain in the item table."""
    if "domain" not in inter:
        return
    catalogue: dict[str, tuple[str, int]] = {}
    for item, domain, line in zip(items["item_id"], items["domain"], items["_line"], strict=True):
        catalogue.setdefault(str(item), (str(domain), line))
    for item, domain, line in zip(inter["item_id"], inter["domain"], inter["_line"], strict=True):
        known = catalogue.get(str(item))
        # Unknown items are reported by build_dataset, at their own line.
        if known is None or _is_blank(domain) or str(domain) == known[0]:
            continue
        raise DataFormatError(
            inter_path,
            f"{str(domain)!r} disagrees with {items_path.name}:{known[1]}, "
            f"which puts item {str(item)!r} in domain {known[0]!r}",
            line=line,
            field="domain",
        )


def load_generic(folder: str | Path, *, encoding: str | None = None) -> RecDataset:
    """Read a folder in the generic format (see module docstring).

    Parameters
    ----------
    folder : str or Path
        The dataset folder.
    encoding : str, optional
        Text encoding of its CSV files; overrides ``dataset.json``'s ``"encoding"``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "not a folder in the generic dataset format")
    info: dict[str, Any] = {}
    info_path = folder / "dataset.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise DataFormatError(info_path, f"invalid JSON: {err.msg}", line=err.lineno) from None
    if not isinstance(info, dict):
        raise DataFormatError(info_path, "must hold a JSON object", line=1)
    for key, allowed in (("time_unit", get_args(TimeUnit)), ("label_kind", get_args(LabelKind))):
        if key in info and info[key] not in allowed:
            raise DataFormatError(
                info_path, f"{info[key]!r} is not one of {list(allowed)}", field=key
            )
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise FedLLMRecError(f"unknown encoding {encoding!r} given for {folder}") from None
    else:
        encoding = info.get("encoding", "utf-8")
        try:
            codecs.lookup(encoding)
        except (LookupError, TypeError):
            # Name dataset.json, where the fix goes, not the CSV file it was applied to.
            raise DataFormatError(
                info_path, f"unknown encoding {encoding!r}", field="encoding"
            ) from None
    inter_path = _find_table(folder, "interactions", required=True)
    assert inter_path is not None
    inter = _read_table(inter_path, INTERACTION_COLUMNS, encoding)
    lines = inter["_line"]
    timestamp = _as_numbers(inter_path, inter["timestamp"], lines, "timestamp", int)
    label = (
        _as_numbers(inter_path, inter["label"], lines, "label", float)
        if "label" in inter
        else np.ones(len(lines))
    )

    items_path = _find_table(folder, "items", required=False)
    if items_path is not None:
        items: dict[str, Any] = _read_table(items_path, ("item_id",), encoding)
        if "domain" in items:
            _check_domains(inter_path, inter, items_path, items)
        else:
            items["domain"] = _domains_from_interactions(inter_path, inter, items["item_id"])
    else:
        # Without an item table, the items are those interacted with, in order of appearance.
        item_ids = list(dict.fromkeys(str(item) for item in inter["item_id"]))
        items = {
            "item_id": item_ids,
            "domain": _domains_from_interactions(inter_path, inter, item_ids),
        }

    users_path = _find_table(folder, "users", required=False)
    users: dict[str, Any] | None = None
    attributes: tuple[str, ...] = ()
    if users_path is not None:
        users = _read_table(users_path, ("user_id",), encoding)
        attributes = tuple(k for k in users if k != "user_id" and not k.startswith("_"))

    return build_dataset(
        str(info.get("name", folder.name)),
        interactions={
            "user_id": np.asarray([str(u) for u in inter["user_id"]], dtype=object),
            "item_id": np.asarray([str(i) for i in inter["item_id"]], dtype=object),
            "timestamp": timestamp,
            "label": label,
            "_line": np.asarray(lines),
        },
        items=items,
        users=users,
        time_unit=info.get("time_unit", "s"),
        label_kind=info.get("label_kind", "implicit" if "label" not in inter else "rating"),
        private_attributes=attributes,
        interactions_source=str(inter_path),
        items_source=str(items_path or inter_path),
        users_source=str(users_path or inter_path),
        meta={"source": str(folder)},
    )
