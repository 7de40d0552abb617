"""Shared by the benchmark scripts: the machine record, and a recipe's model set up to run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fedllmrec.data.prepare import Prepared
from fedllmrec.eval.evaluators import Evaluator
from fedllmrec.recipes.recipe import Model, Recipe, load_recipe
from fedllmrec.train.trainer import Trainable, machine

__all__ = ["machine", "set_up_recipe"]


def set_up_recipe(
    path: str | Path, overrides: Sequence[str] = ()
) -> tuple[Recipe, Prepared, Evaluator, Model]:
    """Load a recipe, prepare its data, build its evaluator and its model, set up as seeded."""
    recipe = load_recipe(path, overrides)
    prepared = recipe.prepare()
    evaluator = recipe.build_evaluator(prepared)
    model = recipe.build_model(prepared)
    if isinstance(model, Trainable):
        torch.manual_seed(recipe.trainer.seed)
        model.setup(prepared.split)
    return recipe, prepared, evaluator, model
