"""Recipes: one checked TOML file says what to train on what data, how, and how to evaluate it."""

from fedllmrec.recipes.recipe import (
    MODEL_BUILDERS,
    ModelBuilder,
    Recipe,
    load_recipe,
    run_recipe,
)

__all__ = ["MODEL_BUILDERS", "ModelBuilder", "Recipe", "load_recipe", "run_recipe"]
