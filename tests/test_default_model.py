"""The shipped default model (models/default): it loads, and through the full loop (Region
Selection span, crop, answer) it reads the shipped example cards."""

import pytest

from perceive.data.cards import QUESTION
from perceive.defaults import EXAMPLES_DIR, default_model_path, example_table
from perceive.graph.compiled import GRAPHS_DIR

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


SHIPPED_GRAPHS = sorted(p.stem for p in GRAPHS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("graph", SHIPPED_GRAPHS)
def test_every_shipped_graph_reads_the_examples_or_is_refused_with_a_reason(loop, graph):
    """The graphs must not override the prompt conventions the model was trained with: each
    reads the four shipped examples right, or refuses this model and says why."""
    from perceive.errors import ConfigError
    from perceive.graph import compile_graph
    from perceive.loop import LoopOptions, PerceptionLoop

    if graph == "region_then_ocr":
        pytest.importorskip("rapidocr_onnxruntime", reason='the ocr action needs pip install "perceive[ocr]"')
    table = example_table()
    g = compile_graph(graph)
    try:
        run = PerceptionLoop(loop.model, graph=g, options=LoopOptions(max_new_tokens=32))
    except ConfigError as exc:
        assert graph in str(exc) and "perceive.json" in str(exc) and exc.hint, exc
        return
    answers = run.ask_batch([(EXAMPLES_DIR / name, QUESTION) for name in table])
    for (name, ex), ans in zip(table.items(), answers, strict=True):
        assert ans.error is None, (graph, name, ans.error)
        assert ans.text == ex["number"], (graph, name, ans.text)
        if graph == "region_then_ocr":  # OCR read the crop; this model is not shown text (perceive.json views)
            assert [h.action for h in ans.trace.hops] == ["region_select", "ocr"], (graph, name)
            assert ans.trace.hops[1].text[0]["text"] == ex["number"], (graph, name, ans.trace.hops[1].text)
            assert [e["type"] for e in ans.trace.events if e["type"] == "not_shown"] == ["not_shown"]
            continue
        assert [h.action for h in ans.trace.hops] == ["region_select"], (graph, name)


def test_the_shipped_model_declares_how_it_was_trained():
    import perceive

    cfg = perceive.load_model(default_model_path(), device="cpu", dtype="float32").config
    assert cfg.prompts is not None and cfg.prompts.region is None and cfg.prompts.reencode is None
    assert cfg.views == ["region_select"]
