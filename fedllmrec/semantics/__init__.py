"""Item semantics from a frozen language model: templates, encoder, embedding cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedllmrec.data.schema import RecDataset
from fedllmrec.semantics.encoder import EncoderConfig, ItemEncoder
from fedllmrec.semantics.templates import ItemTextTemplate, load_template


def item_texts(
    dataset: RecDataset, template: ItemTextTemplate | str | Path | None = None
) -> list[str]:
    """Texts of every item of ``dataset`` (all domains), in item-id order."""
    if not isinstance(template, ItemTextTemplate):
        template = load_template(dataset.name, template)
    return template.render_table(dataset.items)


def embed_items(
    items: Sequence[str] | RecDataset,
    *,
    template: ItemTextTemplate | str | Path | None = None,
    config: EncoderConfig | None = None,
    **options: Any,
) -> np.ndarray:
    """Embed items with the frozen encoder.

    Parameters
    ----------
    items : sequence of str or RecDataset
        Item texts, or a dataset whose items are rendered with its text template.
    template : ItemTextTemplate or path, optional
        Template (or TOML file of templates) for a dataset; default ``prompts/item_text.toml``.
    config : EncoderConfig, optional
        Encoder options; keyword ``options`` override its fields (e.g. ``dtype="bfloat16"``).

    Returns
    -------
    numpy.ndarray
        L2-normalised float32 array of shape (n_items, 384) for the default model, rows in
        the order given.
    """
    config = config or EncoderConfig()
    for key, value in options.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown encoder option {key!r}")
        setattr(config, key, value)
    texts = item_texts(items, template) if isinstance(items, RecDataset) else list(items)
    return ItemEncoder(config).encode(texts)


__all__ = [
    "EncoderConfig",
    "ItemEncoder",
    "ItemTextTemplate",
    "embed_items",
    "item_texts",
    "load_template",
]
