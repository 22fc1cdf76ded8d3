"""The shipped default model (models/default): it loads, and through the full loop (Region
Selection span, crop, answer) it reads the shipped example cards."""

import pytest

from perceive.data.cards import QUESTION
from perceive.defaults import EXAMPLES_DIR, default_model_path, example_table

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="models/default is not in this checkout")


@pytest.fixture(scope="module")
def loop():
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model

    model = load_model(default_model_path(), device="cpu", dtype="float32")
    return PerceptionLoop(model, options=LoopOptions(max_hops=2, max_new_tokens=16))


def test_the_shipped_model_is_small_and_in_the_project_format():
    path = default_model_path()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "examples" not in f.parts)
    assert size <= 20 * 2**20, size
    assert (path / "perceive.json").exists() and (path / "model.safetensors").exists()


def test_it_reads_the_example_cards_through_a_region_hop(loop):
    from perceive.geometry import Box

    table = example_table()
    answers = loop.ask_batch([(EXAMPLES_DIR / name, QUESTION) for name in table])
    for (name, ex), ans in zip(table.items(), answers, strict=True):
        assert ans.error is None, (name, ans.error)
        hops = [h for h in ans.trace.hops if h.action == "region_select"]
        assert hops, f"{name}: no Region Selection hop; generated {ans.text!r}"
        crop = Box.from_dict(hops[0].box)
        x0, y0, x1, y1 = ex["box"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2  # the digits are centred on the card
        assert crop.x0 <= cx <= crop.x1 and crop.y0 <= cy <= crop.y1, (name, crop, ex["box"])
        assert ans.text.strip() == ex["number"], (name, ans.text)
