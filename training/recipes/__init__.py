"""Training recipes, selectable by name: ``dual_branch`` (staged), ``cnn_lstm``, ``mtl_dan``.

Each recipe trains the architecture of its name with its paper's settings as defaults
(training/configs/<recipe>.yaml); ``RECIPES[name]`` is its class.
"""

from __future__ import annotations

from eri.training.config import ConfigError
from eri.training.recipes.base import Recipe, Stage
from eri.training.recipes.cnn_lstm import CnnLstmRecipe
from eri.training.recipes.dual_branch import DualBranchRecipe
from eri.training.recipes.mtl_dan import MtlDanRecipe

RECIPES: dict[str, type[Recipe]] = {
    cls.name: cls for cls in (DualBranchRecipe, CnnLstmRecipe, MtlDanRecipe)
}


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class called ``name``; an unknown name lists the valid ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}."
        ) from None


__all__ = ["RECIPES", "Recipe", "Stage", "get_recipe"]
