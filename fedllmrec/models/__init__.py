"""Recommenders: baselines now; sequential and LLM models build on the same interface."""

from fedllmrec.models.base import Recommender
from fedllmrec.models.baselines import ItemKNN, ItemKNNConfig, Popularity, PopularityConfig

__all__ = ["ItemKNN", "ItemKNNConfig", "Popularity", "PopularityConfig", "Recommender"]
