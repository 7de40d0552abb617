"""Nearest-neighbour retrieval of items by vector similarity."""

from fedllmrec.retrieval.index import IndexConfig, ItemIndex

__all__ = ["IndexConfig", "ItemIndex"]
