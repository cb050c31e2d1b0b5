"""Every shipped recipe loads, names a registered model, and survives a round trip; bad keys
and values are refused with the list of valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cnnbench.cli import main
from cnnbench.errors import CnnbenchError
from cnnbench.models import get_model_info
from cnnbench.train.config import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {"quick-tiny-imagenet.yaml", "resnet18-modern.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    get_model_info(recipe.model.name)  # raises for an unregistered model
    assert load_recipe(values=yaml.safe_load(yaml.safe_dump(recipe.to_dict()))) == recipe


def test_unknown_keys_list_the_valid_ones(tmp_path, capsys):
    with pytest.raises(CnnbenchError, match=r"train: unknown key 'epoch' \(did you mean 'epochs'\?\); valid keys: epochs, "):
        load_recipe(RECIPES[0], ["train.epoch=3"])
    assert main(["train", str(RECIPES[0]), "--set", "optim.name=lbfgs", "--out", str(tmp_path / "x")]) == 2
    assert "optim.name: expected one of sgd, adam, adamw, radam, got 'lbfgs'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
