"""Item semantics from a frozen language model: templates, encoder, embedding cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedllmrec.data.schema import RecDataset
from fedllmrec.semantics.encoder import EncoderConfig, ItemEncoder
from fedllmrec.semantics.templates import ItemTextTemplate, load_template

log = logging.getLogger(__name__)
EMPTY_EXAMPLES = 5  # item ids quoted in the empty-text warning


def item_texts(
    dataset: RecDataset, template: ItemTextTemplate | str | Path | None = None
) -> list[str]:
    """Texts of every item of ``dataset`` (all domains), in item-id order.

    Logs a warning naming how many items have an empty text, with a few of their ids:
    the encoder gives all of them one identical vector.
    """
    if not isinstance(template, ItemTextTemplate):
        template = load_template(dataset.name, template)
    texts = template.render_table(dataset.items)
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        ids = dataset.items.column("item_id").take(empty[:EMPTY_EXAMPLES]).to_pylist()
        log.warning(
            "%s: %d of %d items have an empty text under template fields %s "
            "(e.g. item_id %s) and will all get the same embedding",
            dataset.name,
            len(empty),
            len(texts),
            list(template.fields),
            ", ".join(map(repr, ids)) + (", ..." if len(empty) > EMPTY_EXAMPLES else ""),
        )
    return texts


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
