"""The shipped tool-calling model (models/toolcall): it loads, and through the loop with the
hermes_json protocol it calls its zoom tool in JSON on its example cards, on the card's cells (the
crop returned as <tool_response>), and reads the ones it read in its evaluation (0.860 exact match
on the held-out set, docs/models/toolcall.md). Its perceive.json names the protocol it was trained
on, so ``protocol: auto`` runs it."""

import json
from pathlib import Path

import pytest

from perceive.data.cards import QUESTION

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "toolcall"

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "config.json").exists(),
                                reason="models/toolcall is not in this checkout")


def examples() -> dict[str, dict]:
    return json.loads((MODEL_DIR / "examples" / "examples.json").read_text())


@pytest.fixture(scope="module")
def loop():
    from perceive.config import load_config
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model

    cfg = load_config(MODEL_DIR / "run.yaml")
    assert cfg.protocol.name == "auto"  # the model's own perceive.json says
    model = load_model(MODEL_DIR, device="cpu", dtype="float32")
    loop = PerceptionLoop(model, options=LoopOptions(max_hops=2, max_new_tokens=128))
    assert loop.protocol.name == "hermes_json" and loop.protocol.options.declare is False
    return loop


def test_the_tool_calling_model_is_small_and_in_the_project_format():
    size = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file() and "examples" not in f.parts)
    assert size <= 20 * 2**20, size
    assert (MODEL_DIR / "perceive.json").exists() and (MODEL_DIR / "model.safetensors").exists()


def test_it_calls_its_zoom_tool_in_json_on_the_card_in_the_examples(loop):
    from perceive.geometry import Box

    table = examples()
    answers = loop.ask_batch([(MODEL_DIR / "examples" / name, QUESTION) for name in table])
    for (name, ex), ans in zip(table.items(), answers, strict=True):
        assert ans.error is None, (name, ans.error)
        assert not [e for e in ans.trace.events if e["type"] == "parse_error"], (name, ans.trace.events)
        hops = [h for h in ans.trace.hops if h.action == "region_select"]
        assert hops, f"{name}: no zoom call; generated {ans.text!r}"
        crop = Box.from_dict(hops[0].box)
        assert (crop.x0, crop.y0, crop.x1, crop.y1) == tuple(ex["crop"]), (name, crop, ex["crop"])
        generated = loop.model.tokenizer.decode(ans.token_ids, skip_special_tokens=False)
        call = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [%d, %d, %d, %d]}}\n</tool_call>'
        assert call % tuple(ex["crop"]) in generated, generated
        assert len(ans.trace.hops) == 1, (name, ans.trace.hops)
        if ex["read_correctly"]:  # as it did in the evaluation the examples were chosen from
            assert ans.text.strip() == ex["number"], (name, ans.text)
