"""The shipped default model (models/default): it loads, and through the full loop (Region
Selection span, crop, answer) it reads the shipped example cards."""

import pytest

from perceive.data.cards import QUESTION
from perceive.defaults import DEFAULT_MODEL_DIR, EXAMPLES_DIR, default_model_path, example_table
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
TOOLCALL_DIR = DEFAULT_MODEL_DIR.parent / "toolcall"
#: each shipped model: its folder and the tokens it needs (the tool-calling model writes JSON calls)
SHIPPED_MODELS = {"default": (DEFAULT_MODEL_DIR, 32), "toolcall": (TOOLCALL_DIR, 128)}


@pytest.fixture(scope="module")
def shipped_models():
    from perceive.model import load_model

    cache = {}

    def get(name: str):
        path = SHIPPED_MODELS[name][0]
        if not (path / "config.json").exists():
            pytest.skip(f"models/{name} is not in this checkout")
        if name not in cache:
            cache[name] = load_model(path, device="cpu", dtype="float32")
        return cache[name]

    return get


@pytest.mark.parametrize("graph", SHIPPED_GRAPHS)
@pytest.mark.parametrize("model_name", ["default", pytest.param("toolcall", marks=pytest.mark.slow)])
def test_every_shipped_graph_reads_the_examples_or_is_refused_with_a_reason(shipped_models, model_name, graph):
    """The graphs must not override the prompt conventions the model was trained with: each
    reads the four shipped examples right, or refuses this model and says why. Both shipped
    models: the VPT one (Region Selection tokens) and the tool-calling one (hermes_json)."""
    import json

    from perceive.errors import ConfigError
    from perceive.geometry import Box
    from perceive.graph import compile_graph
    from perceive.loop import LoopOptions, PerceptionLoop

    if graph == "region_then_ocr":
        pytest.importorskip("rapidocr_onnxruntime", reason='the ocr action needs pip install "perceive[ocr]"')
    model = shipped_models(model_name)
    folder, max_new_tokens = SHIPPED_MODELS[model_name]
    table = json.loads((folder / "examples" / "examples.json").read_text())
    g = compile_graph(graph)
    try:
        run = PerceptionLoop(model, graph=g, options=LoopOptions(max_new_tokens=max_new_tokens))
    except ConfigError as exc:
        assert graph in str(exc) and "perceive.json" in str(exc) and exc.hint, exc
        return
    answers = run.ask_batch([(folder / "examples" / name, QUESTION) for name in table])
    for (name, ex), ans in zip(table.items(), answers, strict=True):
        assert ans.error is None, (graph, name, ans.error)
        assert ans.text == ex["number"], (graph, name, ans.text)
        if graph == "region_then_ocr":  # OCR read the crop; neither model is shown text (perceive.json views)
            crop, read = ans.trace.hops
            assert (crop.action, read.action) == ("region_select", "ocr"), (graph, name)
            # the crop, whichever way the model named its view (a tool call's img_idx is the original)
            assert read.target == crop.views[0]["id"], (model_name, name, read.target, crop.views)
            assert Box.from_dict(read.box) == Box.from_dict(crop.box), (model_name, name, read.box, crop.box)
            assert read.text[0]["text"] == ex["number"], (graph, name, read.text)
            assert [e["type"] for e in ans.trace.events if e["type"] == "not_shown"] == ["not_shown"]
            continue
        assert [h.action for h in ans.trace.hops] == ["region_select"], (graph, name)


def test_the_shipped_model_declares_how_it_was_trained():
    import perceive

    cfg = perceive.load_model(default_model_path(), device="cpu", dtype="float32").config
    assert cfg.prompts is not None and cfg.prompts.region is None and cfg.prompts.reencode is None
    assert cfg.views == ["region_select"]
