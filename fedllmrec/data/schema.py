"""The canonical schema every dataset is converted to.

Three Arrow tables, with dense integer ids so that models can index arrays:

``interactions``
    ``user`` (int32), ``item`` (int32), ``timestamp`` (int64; unit in
    ``time_unit``: unix seconds, milliseconds, or a position when the source has
    only an order), ``domain`` (string), ``label`` (float32: rating, click 0/1,
    or 1.0 for implicit feedback). Rows are sorted by the canonical order
    (user, timestamp, then source-file order): see :mod:`fedllmrec.data.split`.
``items``
    ``item`` (int32), ``item_id`` (the source's id, string), ``domain``,
    ``title``, ``category``, ``brand`` (strings, possibly empty), plus any
    dataset-specific columns (genre flags, categorical feature codes).
``users``
    ``user`` (int32), ``user_id`` (string), plus optional private attributes
    (age, gender, ...). Attributes are for leakage audits only: training code
    never reads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedllmrec.errors import DataFormatError
from fedllmrec.io import atomic_path, atomic_write_json

if TYPE_CHECKING:
    import datasets

TimeUnit = Literal["s", "ms", "position"]
LabelKind = Literal["rating", "click", "implicit"]

ITEM_TEXT_FIELDS = ("title", "category", "brand")


@dataclass(frozen=True, eq=False)
class RecDataset:
    """A recommendation dataset in the canonical schema (see module docstring).

    Build one with :func:`build_dataset`; never mutate its tables.
    """

    name: str
    interactions: pa.Table
    items: pa.Table
    users: pa.Table
    time_unit: TimeUnit
    label_kind: LabelKind
    private_attributes: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    # numpy views used by every algorithm; Arrow stays the storage format.
    @cached_property
    def user(self) -> np.ndarray:
        """User id of each interaction, int32 (n_interactions,)."""
        return self.interactions.column("user").to_numpy()

    @cached_property
    def item(self) -> np.ndarray:
        """Item id of each interaction, int32 (n_interactions,)."""
        return self.interactions.column("item").to_numpy()

    @cached_property
    def timestamp(self) -> np.ndarray:
        """Timestamp or position of each interaction, int64 (n_interactions,)."""
        return self.interactions.column("timestamp").to_numpy()

    @cached_property
    def label(self) -> np.ndarray:
        """Label of each interaction, float32 (n_interactions,)."""
        return self.interactions.column("label").to_numpy()

    @cached_property
    def domains(self) -> tuple[str, ...]:
        """Domain names, in order of first appearance in the item catalogue."""
        names = self.items.column("domain").to_pylist()
        return tuple(dict.fromkeys(names))

    @cached_property
    def item_domain(self) -> np.ndarray:
        """Index into :attr:`domains` of each item, int8 (n_items,)."""
        lookup = {d: i for i, d in enumerate(self.domains)}
        return np.asarray(
            [lookup[d] for d in self.items.column("domain").to_pylist()], dtype=np.int8
        )

    @cached_property
    def domain(self) -> np.ndarray:
        """Index into :attr:`domains` of each interaction, int8 (n_interactions,)."""
        return self.item_domain[self.item]

    @property
    def n_users(self) -> int:
        return self.users.num_rows

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    @property
    def n_interactions(self) -> int:
        return self.interactions.num_rows

    def items_of_domain(self, domain: str | int) -> np.ndarray:
        """Ids of every catalogue item of one domain, sorted."""
        index = self.domains.index(domain) if isinstance(domain, str) else domain
        return np.flatnonzero(self.item_domain == index).astype(np.int32)

    def stats(self) -> dict[str, Any]:
        """Counts of users, items and interactions, in total and per domain."""
        out: dict[str, Any] = {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "label_kind": self.label_kind,
            "time_unit": self.time_unit,
            "domains": {},
        }
        if self.label_kind == "click":
            out["clicks"] = int((self.label > 0).sum())
        for d, name in enumerate(self.domains):
            mask = self.domain == d
            entry: dict[str, Any] = {
                "users": int(np.unique(self.user[mask]).size),
                "items": int((self.item_domain == d).sum()),
                "items_interacted": int(np.unique(self.item[mask]).size),
                "interactions": int(mask.sum()),
            }
            if self.label_kind == "click":
                entry["clicks"] = int((self.label[mask] > 0).sum())
            out["domains"][name] = entry
        if len(self.domains) > 1:
            users_per_domain = [
                set(np.unique(self.user[self.domain == d]).tolist())
                for d in range(len(self.domains))
            ]
            out["users_in_all_domains"] = len(set.intersection(*users_per_domain))
        return out

    def to_hf(self) -> datasets.DatasetDict:
        """The three tables as a Hugging Face ``DatasetDict`` (zero-copy over Arrow)."""
        import datasets

        return datasets.DatasetDict(
            {
                "interactions": datasets.Dataset(self.interactions),
                "items": datasets.Dataset(self.items),
                "users": datasets.Dataset(self.users),
            }
        )

    def save(self, folder: str | Path) -> None:
        """Write the tables as Parquet and the metadata as JSON, each file atomically."""
        folder = Path(folder)
        for table_name in ("interactions", "items", "users"):
            with atomic_path(folder / f"{table_name}.parquet") as tmp:
                pq.write_table(getattr(self, table_name), tmp)
        atomic_write_json(
            folder / "dataset.json",
            {
                "name": self.name,
                "time_unit": self.time_unit,
                "label_kind": self.label_kind,
                "private_attributes": list(self.private_attributes),
                "meta": dict(self.meta),
            },
        )

    @classmethod
    def load(cls, folder: str | Path) -> RecDataset:
        """Read a dataset written by :meth:`save`."""
        folder = Path(folder)
        info = json.loads((folder / "dataset.json").read_text())
        return cls(
            name=info["name"],
            interactions=pq.read_table(folder / "interactions.parquet"),
            items=pq.read_table(folder / "items.parquet"),
            users=pq.read_table(folder / "users.parquet"),
            time_unit=info["time_unit"],
            label_kind=info["label_kind"],
            private_attributes=tuple(info["private_attributes"]),
            meta=info.get("meta", {}),
        )


def dense_ids(
    raw_ids: Sequence[str], what: str, source: str, table: Mapping[str, Any]
) -> dict[str, int]:
    """Dense id of each raw id, in order; a duplicate is an error at its own line.

    ``table`` may hold ``_line`` (source line of each row) and ``_source`` (source file
    of each row, for catalogues read from several files).
    """
    lines, sources = table.get("_line"), table.get("_source")
    mapping: dict[str, int] = {}
    for i, rid in enumerate(raw_ids):
        first = mapping.get(rid)
        if first is not None:
            earlier = ""
            if lines is not None:
                earlier = f" (first on line {int(lines[first])}"
                if sources is not None and sources[first] != sources[i]:
                    earlier += f" of {sources[first]}"
                earlier += ")"
            raise DataFormatError(
                source if sources is None else sources[i],
                f"duplicate {what} id {rid!r}{earlier}",
                line=None if lines is None else int(lines[i]),
                field=f"{what}_id",
            )
        mapping[rid] = i
    return mapping


def build_dataset(
    name: str,
    *,
    interactions: Mapping[str, np.ndarray],
    items: Mapping[str, Sequence[Any] | np.ndarray],
    users: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    time_unit: TimeUnit,
    label_kind: LabelKind,
    private_attributes: Sequence[str] = (),
    interactions_source: str = "<interactions>",
    items_source: str = "<items>",
    users_source: str = "<users>",
    meta: Mapping[str, Any] | None = None,
) -> RecDataset:
    """Map raw ids to dense ids, sort interactions canonically and check consistency.

    Parameters
    ----------
    interactions : mapping
        ``user_id`` and ``item_id`` (raw ids, converted to str), ``timestamp``
        (int), optional ``label`` (float; 1.0 when absent) and optional
        ``_line`` (source line of each row, used in error messages). Rows must be
        in source-file order: that order breaks timestamp ties.
    items : mapping
        ``item_id`` and ``domain``; optional ``title``, ``category``, ``brand``
        and extra columns. Catalogue order defines the dense item ids. Optional
        ``_line`` and ``_source`` (line and file of each row) locate duplicate ids.
    users : mapping, optional
        ``user_id`` plus attribute columns (and optional ``_line``). When absent,
        users are the distinct interaction users in order of first appearance.

    Raises
    ------
    DataFormatError
        On duplicate ids, interactions with an unknown item or user, or an empty
        dataset, naming the source file, line and field.
    """
    n_rows = len(interactions["user_id"])
    if n_rows == 0:
        raise DataFormatError(interactions_source, "dataset has no interactions")
    lines = interactions.get("_line")
    item_ids = [str(x) for x in items["item_id"]]
    item_index = dense_ids(item_ids, "item", items_source, items)
    inter_users = [str(x) for x in interactions["user_id"]]
    inter_items = [str(x) for x in interactions["item_id"]]

    if users is None:
        users = {"user_id": list(dict.fromkeys(inter_users))}
    user_ids = [str(x) for x in users["user_id"]]
    user_index = dense_ids(user_ids, "user", users_source, users)

    def _lookup(raw: list[str], index: dict[str, int], what: str) -> np.ndarray:
        out = np.empty(len(raw), dtype=np.int32)
        for row, rid in enumerate(raw):
            dense = index.get(rid)
            if dense is None:
                line = int(lines[row]) if lines is not None else None
                raise DataFormatError(
                    interactions_source,
                    f"{what} id {rid!r} is not in the {what} table",
                    line=line,
                    field=f"{what}_id",
                )
            out[row] = dense
        return out

    user = _lookup(inter_users, user_index, "user")
    item = _lookup(inter_items, item_index, "item")
    timestamp = np.asarray(interactions["timestamp"], dtype=np.int64)
    label = np.asarray(interactions.get("label", np.ones(n_rows)), dtype=np.float32)

    # Canonical order: user, then time, then source-file order (a stable sort keeps it).
    order = np.lexsort((np.arange(n_rows), timestamp, user))
    item_domain = np.asarray([str(d) for d in items["domain"]], dtype=object)

    inter_table = pa.table(
        {
            "user": pa.array(user[order], pa.int32()),
            "item": pa.array(item[order], pa.int32()),
            "timestamp": pa.array(timestamp[order], pa.int64()),
            "domain": pa.array(item_domain[item[order]].tolist(), pa.string()).dictionary_encode(),
            "label": pa.array(label[order], pa.float32()),
        }
    )
    n_items = len(item_ids)
    item_cols: dict[str, Any] = {
        "item": pa.array(np.arange(n_items, dtype=np.int32)),
        "item_id": pa.array(item_ids, pa.string()),
        "domain": pa.array(item_domain.tolist(), pa.string()),
    }
    for text_field in ITEM_TEXT_FIELDS:
        values = items.get(text_field)
        item_cols[text_field] = pa.array(
            [str(v) for v in values] if values is not None else [""] * n_items, pa.string()
        )
    for key, values in items.items():
        if key not in item_cols and not key.startswith("_"):
            item_cols[key] = pa.array(values)
    user_cols: dict[str, Any] = {
        "user": pa.array(np.arange(len(user_ids), dtype=np.int32)),
        "user_id": pa.array(user_ids, pa.string()),
    }
    for key, values in users.items():
        if key != "user_id" and not key.startswith("_"):
            user_cols[key] = pa.array(values)
    return RecDataset(
        name=name,
        interactions=inter_table,
        items=pa.table(item_cols),
        users=pa.table(user_cols),
        time_unit=time_unit,
        label_kind=label_kind,
        private_attributes=tuple(private_attributes),
        meta=dict(meta or {}),
    )
