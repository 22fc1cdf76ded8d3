"""The shipped recipes stay runnable and pruned: every config validates, reproduce.sh names only
files that exist, every config is run by a reproduce.sh or extended by one that is, and a
config's `extends` chain resolves to what it says."""

import re
from pathlib import Path

import pytest

from perceive.config import load_yaml_mapping
from perceive.eval.runner import load_eval_config
from perceive.rl.config import load_training_config
from perceive.yamlio import load_yaml

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = sorted(RECIPES.rglob("*.yaml"))
SCRIPTS = sorted(RECIPES.rglob("reproduce.sh"))


def bases() -> set[Path]:
    """Every file some recipe config extends (directly)."""
    out = set()
    for p in CONFIGS:
        ref = (load_yaml(p) or {}).get("extends")
        if ref:
            out.add((p.parent / ref).resolve())
    return out


def run_by_scripts() -> set[Path]:
    return {(s.parent / n).resolve() for s in SCRIPTS
            for n in re.findall(r"perceive (?:train|eval) (\S+\.yaml)", s.read_text())}


def test_there_are_recipes():
    assert len(CONFIGS) > 10


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.resolve() not in bases()],
                         ids=lambda p: str(p.relative_to(RECIPES)))
def test_config_validates(path):
    load = load_eval_config if path.name.startswith("eval") else load_training_config
    load(path)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(RECIPES)))
def test_reproduce_names_existing_configs(script):
    named = re.findall(r"perceive (?:train|eval) (\S+\.yaml)", script.read_text())
    assert named
    missing = [n for n in named if not (script.parent / n).is_file()]
    assert not missing, f"{script} runs configs that do not exist: {missing}"


def test_every_config_is_run_or_extended():
    """Pruned: a config no reproduce.sh runs, and no config extends, belongs in git history."""
    used = run_by_scripts() | bases()
    orphans = [str(p.relative_to(RECIPES)) for p in CONFIGS if p.resolve() not in used]
    assert not orphans, f"configs nothing runs or extends: {orphans}"


def test_bases_are_mappings_that_merge():
    for base in bases():
        assert isinstance(load_yaml_mapping(base), dict), base


def test_the_oracle_eval_is_its_twin_plus_one_flag():
    cards = RECIPES / "cards"
    twin, oracle = load_eval_config(cards / "eval_small9.yaml"), load_eval_config(cards / "eval_small9_oracle.yaml")
    assert oracle.oracle_spans and not twin.oracle_spans
    differ = {k for k in type(twin).model_fields if getattr(twin, k) != getattr(oracle, k)}
    assert differ == {"oracle_spans", "name", "output"}
