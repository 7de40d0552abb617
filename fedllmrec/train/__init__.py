"""Training: the centralized trainer, its evaluators and TOML recipes."""

from fedllmrec.train.evaluators import (
    EVALUATORS,
    Evaluator,
    RankingEvaluator,
    build_evaluator,
)
from fedllmrec.train.recipe import MODEL_BUILDERS, ModelBuilder, Recipe, load_recipe, run_recipe
from fedllmrec.train.trainer import Trainable, Trainer, TrainerConfig

__all__ = [
    "EVALUATORS",
    "MODEL_BUILDERS",
    "Evaluator",
    "ModelBuilder",
    "RankingEvaluator",
    "Recipe",
    "Trainable",
    "Trainer",
    "TrainerConfig",
    "build_evaluator",
    "load_recipe",
    "run_recipe",
]
