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


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as a string; a learning rate typed the way everyone types it
    # must load, in a recipe file and in --set alike.
    path = tmp_path / "r.yaml"
    values = yaml.safe_load(RECIPES[0].read_text())
    values.setdefault("optim", {})["weight_decay"] = "WD"
    path.write_text(yaml.safe_dump(values).replace("weight_decay: WD", "weight_decay: 5e-4"))
    recipe = load_recipe(path, ["optim.lr=3e-4", "optim.l2=1E-5"])
    assert (recipe.optim.lr, recipe.optim.l2, recipe.optim.weight_decay) == (3e-4, 1e-5, 5e-4)


BAD_VALUES = [
    ("train.eval_every=0", "train.eval_every: expected a positive number, got 0"),
    ("train.early_stopping=0", "train.early_stopping: expected a positive number (or null to never stop early), got 0"),
    ("train.workers=-1", "train.workers: expected a non-negative number, got -1"),
    ("schedule.pct_start=1", "schedule.pct_start: expected a fraction in (0, 1), got 1.0"),
    ("schedule.pct_start=0", "schedule.pct_start: expected a fraction in (0, 1), got 0.0"),
    ("schedule.gamma=0", "schedule.gamma: expected a positive number, got 0.0"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs: expected a non-negative number, got -1.0"),
    ("schedule.min_lr=-0.001", "schedule.min_lr: expected a non-negative number, got -0.001"),
    ("optim.momentum=1", "optim.momentum: expected a value in [0, 1), got 1.0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1]: expected a value in [0, 1), got 1.0"),
    ("optim.betas=[-0.1, 0.999]", "optim.betas[0]: expected a value in [0, 1), got -0.1"),
    # Values torch itself refuses with a ValueError traceback, or takes and misuses.
    (("schedule.name=plateau", "schedule.gamma=1"),
     "schedule.gamma: expected a factor (plateau reduces the rate) in (0, 1), got 1.0"),
    (("optim.name=adam", "optim.eps=-1.0e-8"), "optim.eps: expected a non-negative number, got -1e-08"),
    ("schedule.patience=-1", "schedule.patience: expected a non-negative number, got -1"),
    # clip_grad_norm_ takes these: a negative norm reverses every gradient, 0 zeroes them.
    ("optim.grad_clip=-1", "optim.grad_clip: expected a positive number (or null for no clipping), got -1.0"),
    ("optim.grad_clip=0", "optim.grad_clip: expected a positive number (or null for no clipping), got 0.0"),
    # A bin past torchvision's 31 was an IndexError at the first batch; a negative one silently
    # took the strongest bins; 0 ops turned RandAugment off.
    ("augment.randaugment=[2, 31]", "augment.randaugment[1]: expected a magnitude bin in [0, 30], got 31"),
    ("augment.randaugment=[2, -1]", "augment.randaugment[1]: expected a magnitude bin in [0, 30], got -1"),
    ("augment.randaugment=[0, 9]", "augment.randaugment[0]: expected a positive number (number of ops), got 0"),
    # A fraction of the side: above 1 padded every image with a black border, 0 was accepted.
    ("augment.center_crop=1.5", "augment.center_crop: expected a fraction of the side in (0, 1], got 1.5"),
    ("augment.center_crop=0", "augment.center_crop: expected a fraction of the side in (0, 1], got 0.0"),
    # Fractions of the image area: zero-area crops, crops larger than the image, a range upside down.
    ("augment.random_resized_crop=[0, 1]",
     "augment.random_resized_crop: expected a scale range with 0 < low <= high <= 1, got [0.0, 1.0]"),
    ("augment.random_resized_crop=[0.5, 1.5]",
     "augment.random_resized_crop: expected a scale range with 0 < low <= high <= 1, got [0.5, 1.5]"),
    ("augment.random_resized_crop=[0.9, 0.2]",
     "augment.random_resized_crop: expected a scale range with 0 < low <= high <= 1, got [0.9, 0.2]"),
    # A sigma of 0 turned blurred images into NaN; a negative one blurred like its absolute value.
    ("augment.blur_sigma=[0, 1]", "augment.blur_sigma: expected a sigma range with 0 < low <= high, got [0.0, 1.0]"),
    ("augment.blur_sigma=[-1, 1]", "augment.blur_sigma: expected a sigma range with 0 < low <= high, got [-1.0, 1.0]"),
    ("augment.blur_sigma=[2, 1]", "augment.blur_sigma: expected a sigma range with 0 < low <= high, got [2.0, 1.0]"),
    ("augment.crop_padding=-1", "augment.crop_padding: expected a non-negative number, got -1"),  # was silently off
    # A shift of up to twice the side left many images entirely black; a negative one was silently off.
    ("augment.translate=2", "augment.translate: expected a fraction of the side in [0, 1], got 2.0"),
    ("augment.translate=-0.1", "augment.translate: expected a fraction of the side in [0, 1], got -0.1"),
    # A set's own values are checked like the section's, and the message says which set.
    ("augment.sets=[{hflip: 0.5}, {center_crop: 2}]",
     "augment.sets[1].center_crop: expected a fraction of the side in (0, 1], got 2.0"),
    ("augment.sets=[{randaugment: [2, 40]}]", "augment.sets[0].randaugment[1]: expected a magnitude bin in [0, 30], got 40"),
    ("augment.sets=[{hflip: yes}]", "augment.sets[0].hflip: expected a number, got True"),
    ("seed=-1", "seed: expected a non-negative integer, got -1"),  # was numpy's ValueError at the first epoch
    # Across sections: cosine rose from lr to min_lr instead of decaying.
    (("optim.lr=0.01", "schedule.name=cosine", "schedule.min_lr=0.1"),
     "schedule.min_lr: expected at most optim.lr (0.01), got 0.1"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[" ".join(o) if isinstance(o, tuple) else o
                                                               for o, _ in BAD_VALUES])
def test_out_of_range_values_are_refused_before_any_folder_is_written(override, message, tmp_path, capsys):
    sets = [arg for item in ((override,) if isinstance(override, str) else override) for arg in ("--set", item)]
    assert main(["train", str(RECIPES[0]), *sets, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"{RECIPES[0]}: {message}\n" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_edge_values_that_mean_something_are_accepted():
    recipe = load_recipe(RECIPES[0], ["train.early_stopping=null", "train.workers=0", "optim.momentum=0",
                                      "optim.betas=[0, 0.999]", "schedule.warmup_epochs=0", "schedule.min_lr=0"])
    assert recipe.train.early_stopping is None and recipe.train.workers == 0 and recipe.optim.momentum == 0.0
    for magnitude in (0, 30):
        assert load_recipe(RECIPES[0], [f"augment.randaugment=[1, {magnitude}]"]).augment.randaugment == (1, magnitude)
    assert load_recipe(RECIPES[0], ["augment.center_crop=1"]).augment.center_crop == 1.0
    assert load_recipe(RECIPES[0], ["augment.random_resized_crop=[1, 1]"]).augment.random_resized_crop == (1.0, 1.0)
    assert load_recipe(RECIPES[0], ["augment.blur_sigma=[3, 3]"]).augment.blur_sigma == (3.0, 3.0)
    assert load_recipe(RECIPES[0], ["optim.lr=0.01", "schedule.min_lr=0.01"]).schedule.min_lr == 0.01
    assert load_recipe(RECIPES[0], ["augment.translate=1"]).augment.translate == 1.0
