"""Item text templates: how an item's fields become the text the encoder embeds.

Templates live in ``prompts/item_text.toml`` (one table per dataset, with a
``default``), so they can be changed without touching code.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from fedllmrec.errors import FedLLMRecError

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
DEFAULT_TEMPLATE_FILE = PROMPTS_DIR / "item_text.toml"


@dataclass(frozen=True)
class ItemTextTemplate:
    """Segments in ``str.format`` syntax; a segment whose fields are all empty is dropped."""

    segments: tuple[str, ...]
    separator: str = ". "

    @property
    def fields(self) -> tuple[str, ...]:
        names = [
            name.split(".")[0].split("[")[0]
            for seg in self.segments
            for _, name, _, _ in string.Formatter().parse(seg)
            if name
        ]
        return tuple(dict.fromkeys(names))

    def render(self, row: Mapping[str, Any]) -> str:
        """The text of one item."""
        parts = []
        for seg in self.segments:
            names = [n for _, n, _, _ in string.Formatter().parse(seg) if n]
            values = {n: row.get(n) for n in names}
            if names and all(v is None or str(v).strip() == "" for v in values.values()):
                continue
            parts.append(seg.format(**{k: "" if v is None else v for k, v in values.items()}))
        return self.separator.join(p.strip() for p in parts if p.strip())

    def render_table(self, items: pa.Table) -> list[str]:
        """Texts of every row of an items table, in row order."""
        missing = [f for f in self.fields if f not in items.column_names]
        if missing:
            raise FedLLMRecError(
                f"item text template uses column(s) {missing} that the items table lacks "
                f"(it has {items.column_names})"
            )
        columns = {f: items.column(f).to_pylist() for f in self.fields}
        return [self.render({f: columns[f][i] for f in self.fields}) for i in range(items.num_rows)]


def read_prompt_file(path: Path, what: str) -> dict[str, Any]:
    """The TOML document at ``path``; a missing or malformed file is a one-line error
    naming the file (``what`` says which kind of file it is)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedLLMRecError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise FedLLMRecError(f"{path}: invalid TOML: {err}") from None


def load_template(dataset: str, path: str | Path | None = None) -> ItemTextTemplate:
    """The template for ``dataset`` from ``path`` (default ``prompts/item_text.toml``).

    Falls back to the file's ``default`` table when the dataset has none.
    """
    path = Path(path) if path is not None else DEFAULT_TEMPLATE_FILE
    spec = read_prompt_file(path, "item text template file")
    table = spec.get(dataset, spec.get("default"))
    if table is None:
        raise FedLLMRecError(f"{path}: no [{dataset}] and no [default] template")
    segments: Sequence[str] = table.get("segments", ())
    if not segments or not all(isinstance(s, str) for s in segments):
        raise FedLLMRecError(f"{path}: [{dataset}] needs a non-empty list of string segments")
    return ItemTextTemplate(tuple(segments), str(table.get("separator", ". ")))
