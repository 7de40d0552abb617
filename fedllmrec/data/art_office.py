"""Amazon Arts-Crafts-Sewing x Office-Products cross-domain sequences (URLLM's "AO" data).

Format traps (see the folder's SOURCE.md):

- each user has two consecutive lines with the same prefix; only the last
  item differs (line 1: usually an Office target, line 2: always an Arts target);
- the ``item|pos|pos`` fields hold positions 0..n, not timestamps;
- Office item ids are offset by 18,639 in the sequences and the item list.

Both targets share the last position; the canonical tie rule (source order)
puts line 1's target before line 2's, so the last Arts item of a user is the
line-2 target, as in URLLM.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from fedllmrec.data.reader import read_lines
from fedllmrec.data.schema import RecDataset, build_dataset, dense_ids
from fedllmrec.errors import DataFormatError

ITEM_FILES = {"arts": "item_listA_F.csv", "office": "item_listO_AA_F.csv"}
SEQUENCE_FILES = ("train_F2.txt", "valid_F2.txt", "test_F2.txt")
ITEM_HEADER = ["idBefore", "item_title", "idAfter", "item_attribute"]
REQUIRED_FILES = (*ITEM_FILES.values(), *SEQUENCE_FILES)


def _read_items(path: Path) -> tuple[list[int], list[str], list[str], list[int]]:
    """Ids, titles, attributes and the line of each row of one item list."""
    ids: list[int] = []
    titles: list[str] = []
    attributes: list[str] = []
    lines: list[int] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != ITEM_HEADER:
            raise DataFormatError(path, f"bad header {header}, expected {ITEM_HEADER}", line=1)
        for row in reader:
            line = reader.line_num
            if len(row) != len(ITEM_HEADER):
                raise DataFormatError(path, f"expected 4 columns, found {len(row)}", line=line)
            try:
                ids.append(int(row[2]))
            except ValueError:
                raise DataFormatError(
                    path, f"expected an integer, got {row[2]!r}", line=line, field="idAfter"
                ) from None
            if not row[1].strip():
                raise DataFormatError(path, "empty title", line=line, field="item_title")
            titles.append(row[1])
            attributes.append(row[3])
            lines.append(line)
    if not ids:
        raise DataFormatError(path, "no data rows")
    return ids, titles, attributes, lines


def _parse_sequence_line(
    path: Path, line_no: int, line: str
) -> tuple[str, int, list[int], list[int]]:
    parts = line.rstrip("\t").split("\t")
    if len(parts) < 3:
        raise DataFormatError(path, "expected user, last position and items", line=line_no)
    items: list[int] = []
    positions: list[int] = []
    for token in parts[2:]:
        fields = token.split("|")
        if len(fields) != 3:
            raise DataFormatError(
                path, f"expected item|pos|pos, got {token!r}", line=line_no, field="item"
            )
        try:
            items.append(int(fields[0]))
            positions.append(int(fields[1]))
        except ValueError:
            raise DataFormatError(
                path, f"expected integers in {token!r}", line=line_no, field="item"
            ) from None
    try:
        last_pos = int(parts[1])
    except ValueError:
        raise DataFormatError(
            path, f"expected an integer, got {parts[1]!r}", line=line_no, field="last_pos"
        ) from None
    return parts[0], last_pos, items, positions


def load_art_office(folder: str | Path) -> RecDataset:
    """Read the Art-Office folder into the canonical schema (implicit feedback, positions)."""
    folder = Path(folder)
    item_ids: list[int] = []
    cols: dict[str, list[str]] = {"domain": [], "title": [], "category": []}
    # Line and file of each item row, so that a duplicate id is reported where it is.
    item_lines: list[int] = []
    item_sources: list[str] = []
    for domain, file_name in ITEM_FILES.items():
        ids, titles, attributes, at_lines = _read_items(folder / file_name)
        item_ids += ids
        cols["domain"] += [domain] * len(ids)
        cols["title"] += titles
        cols["category"] += attributes
        item_lines += at_lines
        item_sources += [str(folder / file_name)] * len(ids)

    item_table: dict[str, list[Any]] = {"_line": item_lines, "_source": item_sources}
    # Checked before the sequences, which would otherwise report the displaced id as unknown.
    dense_ids([str(i) for i in item_ids], "item", str(folder), item_table)
    known = set(item_ids)
    users: list[str] = []
    user_split: list[str] = []
    inter_user: list[str] = []
    inter_item: list[int] = []
    inter_pos: list[int] = []
    for file_name in SEQUENCE_FILES:
        path = folder / file_name
        lines = read_lines(path)
        if len(lines) % 2:
            raise DataFormatError(path, "odd number of lines: every user has two", line=len(lines))
        for first in range(0, len(lines), 2):
            u1, last1, items1, pos1 = _parse_sequence_line(path, first + 1, lines[first])
            u2, last2, items2, pos2 = _parse_sequence_line(path, first + 2, lines[first + 1])
            if (u1, last1, items1[:-1], pos1) != (u2, last2, items2[:-1], pos2):
                raise DataFormatError(
                    path, f"lines {first + 1} and {first + 2} must share one prefix", line=first + 2
                )
            # Line 1 holds the prefix and its target; line 2 adds only its own target.
            unknown = [(i, first + 1) for i in items1 if i not in known]
            unknown += [(i, first + 2) for i in items2[-1:] if i not in known]
            if unknown:
                item, line_no = unknown[0]
                raise DataFormatError(
                    path, f"item {item} is in no item list", line=line_no, field="item"
                )
            users.append(u1)
            user_split.append(file_name.split("_")[0])
            seq_items = [*items1, items2[-1]]
            inter_user += [u1] * len(seq_items)
            inter_item += seq_items
            inter_pos += [*pos1, pos2[-1]]
    return build_dataset(
        "art-office",
        interactions={
            "user_id": np.asarray(inter_user, dtype=object),
            "item_id": np.asarray(inter_item),
            "timestamp": np.asarray(inter_pos, dtype=np.int64),
        },
        items={"item_id": item_ids, **cols, **item_table},
        users={"user_id": users, "urllm_split": user_split},
        time_unit="position",
        label_kind="implicit",
        interactions_source=str(folder),
        items_source=str(folder),
        meta={"source": "URLLM Amazon Arts x Office (AO)", "office_offset": 18639},
    )
