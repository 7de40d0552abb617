"""Datasets in one canonical schema, leak-free splits, candidates and client partitions."""

from fedllmrec.data.registry import DATASETS, load_dataset, locate
from fedllmrec.data.schema import RecDataset, build_dataset

__all__ = ["DATASETS", "RecDataset", "build_dataset", "load_dataset", "locate"]
