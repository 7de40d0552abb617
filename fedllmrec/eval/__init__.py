"""Evaluation: ranking and CTR metrics and the one protocol every model is measured by."""

from fedllmrec.eval.metrics import auc, gauc, log_loss, rank_counts, ranking_metrics
from fedllmrec.eval.ranking import evaluate_ranking

__all__ = ["auc", "evaluate_ranking", "gauc", "log_loss", "rank_counts", "ranking_metrics"]
