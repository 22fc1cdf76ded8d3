"""The shipped recipes stay runnable: every config validates, and reproduce.sh names only files that exist."""

import re
from pathlib import Path

import pytest

from perceive.eval.runner import load_eval_config
from perceive.train.config import load_train_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = sorted(RECIPES.rglob("*.yaml"))


def test_there_are_recipes():
    assert len(CONFIGS) > 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(RECIPES)))
def test_config_validates(path):
    load = load_eval_config if path.name.startswith("eval") else load_train_config
    load(path)


@pytest.mark.parametrize("script", sorted(RECIPES.rglob("reproduce.sh")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_reproduce_names_existing_configs(script):
    named = re.findall(r"perceive (?:train|eval) (\S+\.yaml)", script.read_text())
    assert named
    missing = [n for n in named if not (script.parent / n).is_file()]
    assert not missing, f"{script} runs configs that do not exist: {missing}"
