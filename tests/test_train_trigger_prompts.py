"""The trainer warns when the training data asks with trigger prompts the trained model will not
declare (docs/how-to/train-and-evaluate.md, "Trigger prompts"), and the fix it suggests works."""

from __future__ import annotations

import re

import pytest
import yaml

from perceive.model.config import PromptConventions
from perceive.prompts import PAPER_TRIGGERS, Trigger
from perceive.train.trigger_prompts import data_triggers, undeclared_triggers

NULLS = PromptConventions(region=None, reencode=None)


def item(question: str, answer: str = "7") -> dict:
    return {"messages": [{"role": "user", "content": f"<image>{question}"}, {"role": "assistant", "content": answer}]}


REENCODE_ITEM = item("What number is written on the card?" + PAPER_TRIGGERS[Trigger.REENCODE])
REGION_ITEM = item("What number is written on the card?" + PAPER_TRIGGERS[Trigger.REGION])
PLAIN_ITEM = item("What number is written on the card?")


def test_the_paper_triggers_are_counted_per_kind():
    counts = data_triggers([REENCODE_ITEM, REENCODE_ITEM, REGION_ITEM, PLAIN_ITEM, {"messages": "junk"}])
    assert counts == {Trigger.REGION: 1, Trigger.REENCODE: 2}


def test_a_trigger_the_model_declares_null_is_a_warning_with_a_fix_that_validates():
    (warning,) = undeclared_triggers([REENCODE_ITEM, PLAIN_ITEM], NULLS, "train.json", from_config=False)
    assert warning.startswith("1 of 2 item(s) in train.json ask with the paper's reencode trigger prompt")
    assert "prompts.reencode: null (kept from the model it starts from)" in warning
    fix = re.search(r"set `(prompts: \{.*?\})`", warning).group(1)
    declared = PromptConventions.model_validate(yaml.safe_load(fix)["prompts"])
    assert declared == PromptConventions(region=None, reencode=PAPER_TRIGGERS[Trigger.REENCODE])
    assert undeclared_triggers([REENCODE_ITEM, PLAIN_ITEM], declared, "train.json", from_config=True) == []


def test_no_warning_when_nothing_is_missing():
    assert undeclared_triggers([REENCODE_ITEM], None, "d", from_config=False) == []  # undeclared: paper's assumed
    assert undeclared_triggers([PLAIN_ITEM], NULLS, "d", from_config=False) == []  # trained without triggers
    other = PromptConventions(region=None, reencode=" \nLook again.")
    (warning,) = undeclared_triggers([REENCODE_ITEM], other, "d", from_config=True)  # another text is not the data's
    assert 'prompts.reencode: " \\nLook again." (the training config\'s `prompts:`)' in warning


@pytest.mark.slow
def test_the_trainer_warns_before_training(tmp_path):
    from perceive.data.cards import generate
    from perceive.testing.tiny import tiny_vpt_model
    from perceive.train import Trainer
    from perceive.train.config import TrainConfig

    cards = generate(tmp_path / "cards", 2, seed=1)  # with the paper's triggers, as `perceive data cards` writes

    def config(**kw):
        return TrainConfig.model_validate({
            "model": {"tiny": {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "vision_depth": 1,
                               "vision_dim": 16, "branches": []}},
            "data": {"train": str(cards / "region.json")}, "optim": {"steps": 1, "batch_size": 1},
            "output": str(tmp_path / "run"), **kw})

    start = tiny_vpt_model(branches=())
    start.config.prompts = NULLS  # like both shipped models
    (warning,) = Trainer(config(), model=start, progress=False).prompt_warnings
    assert "region trigger prompt" in warning and "kept from the model it starts from" in warning
    assert Trainer(config(), progress=False).prompt_warnings == []  # a new model declares none
    fix = {"region": PAPER_TRIGGERS[Trigger.REGION], "reencode": None}
    assert Trainer(config(prompts=fix), progress=False).prompt_warnings == []
