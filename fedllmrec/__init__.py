"""fedllmrec: privacy-preserving, LLM-augmented, cross-domain federated recommendation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedllmrec.semantics import embed_items

__all__ = ["__version__", "embed_items"]


def __getattr__(name: str) -> Any:
    # Importing torch and sentence-transformers takes seconds: only on first use.
    if name == "embed_items":
        from fedllmrec.semantics import embed_items

        return embed_items
    raise AttributeError(f"module 'fedllmrec' has no attribute {name!r}")
