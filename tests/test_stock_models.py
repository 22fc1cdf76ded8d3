"""Stock checkpoints: tiny random-weight Qwen2.5-VL (and Qwen3-VL) folders saved as a user has
them (transformers' own weights and config, a tokenizer carrying the family's chat template with
its tools section, the image processor; no perceive.json), loaded through ``perceive.load_model``;
the protocol detected from the chat template or set by the run; scripted calls in each protocol
through the loop."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import perceive
from perceive.errors import ConfigError, ModelLoadError
from perceive.loop import LoopOptions, PerceptionLoop
from perceive.protocols.detect import detect_protocol, template_protocol
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import (
    CHAT_TEMPLATE,
    QWEN3_VL_TEMPLATE,
    QWEN25_VL_TOOL_TEMPLATE,
    build_plain_tokenizer,
    save_tiny_stock_model,
)

W, H = 64, 48


@pytest.fixture(scope="module")
def qwen25_folder(tmp_path_factory):
    return save_tiny_stock_model(tmp_path_factory.mktemp("stock") / "qwen25", "qwen2_5_vl")


@pytest.fixture(scope="module")
def qwen25(qwen25_folder):
    return perceive.load_model(qwen25_folder)


def hermes(box, idx=None):
    args = {"bbox_2d": box, "label": "x", **({"img_idx": idx} if idx is not None else {})}
    return "<tool_call>\n" + json.dumps({"name": "image_zoom_in_tool", "arguments": args}) + "\n</tool_call>"


def grounding(box, source="original_image"):
    return "<grounding>" + json.dumps({"bbox_2d": box, "source": source}) + "</grounding>"


def make_loop(model, scripts, **kw):
    opts = LoopOptions(max_new_tokens=kw.pop("max_new_tokens", 160), record_logits=True, **kw)
    tok = model.tokenizer
    return PerceptionLoop(model, options=opts,
                          policy=ScriptedPolicy(tok, {i: span_tokens(tok, s) for i, s in scripts.items()}))


def box_of(hop):
    return tuple(hop.box[k] for k in ("x0", "y0", "x1", "y1"))


def image(color="navy"):
    return Image.new("RGB", (W, H), color)


# -- loading and detection ------------------------------------------------------------------------

def test_a_stock_qwen25_vl_folder_loads_with_its_own_files(qwen25_folder, qwen25):
    assert not (qwen25_folder / "perceive.json").exists()
    assert type(qwen25.base).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert qwen25.config.base == "qwen2_5_vl" and not qwen25.config.branches and qwen25.config.region is None
    assert qwen25.tokenizer.chat_template == QWEN25_VL_TOOL_TEMPLATE
    assert qwen25.image_processor is not None


def test_the_protocol_is_detected_from_the_chat_template(qwen25):
    loop = make_loop(qwen25, {}, protocol="auto")
    assert loop.protocol.name == "hermes_json"
    # verl's template wraps each tool message "\n<tool_response>\n...\n</tool_response>"
    assert loop.protocol.options.coordinates == "absolute" and loop.protocol.options.response == "qwen3"
    assert "# Tools" in loop.layout.system and '"name": "image_zoom_in_tool"' in loop.layout.system
    # the run's options win over the detected ones
    loop = make_loop(qwen25, {}, protocol="auto", protocol_options={"response": "deepeyes"})
    assert loop.protocol.options.response == "deepeyes"


def test_each_family_template_is_recognised():
    q3 = build_plain_tokenizer(QWEN3_VL_TEMPLATE)
    assert template_protocol(q3, "qwen3_vl") == ("hermes_json", {"coordinates": "relative_1000", "response": "qwen3"})
    q25 = build_plain_tokenizer(QWEN25_VL_TOOL_TEMPLATE)
    assert template_protocol(q25, "qwen2_5_vl") == ("hermes_json", {"response": "qwen3"})
    assert template_protocol(build_plain_tokenizer(CHAT_TEMPLATE), "qwen2_5_vl") is None
    # the templates declare tools exactly as hermes_json writes them into the system turn
    from perceive.protocols.hermes import TOOLS_FOOTER, TOOLS_HEADER

    tool = {"type": "function", "function": {"name": "t"}}
    q = [{"role": "user", "content": "q"}]
    block = TOOLS_HEADER + "\n" + json.dumps(tool) + TOOLS_FOOTER + "<|im_end|>\n"
    assert q3.apply_chat_template(q, tools=[tool], tokenize=False) == "<|im_start|>system\n" + block + \
        "<|im_start|>user\nq<|im_end|>\n"
    assert q25.apply_chat_template(q, tools=[tool], tokenize=False).startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n" + block)


def test_a_vpt_model_speaks_vpt():
    from perceive.testing.tiny import tiny_vpt_model

    assert detect_protocol(tiny_vpt_model(branches=[])) == ("vpt", {})


def test_no_tool_section_is_a_config_error_naming_the_choices(qwen25):
    stock = SimpleNamespace(config=qwen25.config, base=qwen25.base, tokenizer=build_plain_tokenizer(CHAT_TEMPLATE))
    with pytest.raises(ConfigError) as e:
        detect_protocol(stock, ["hermes_json", "mini_o3_grounding", "vpt"])
    assert "declares no tools" in e.value.message and "hermes_json, mini_o3_grounding, vpt" in e.value.message
    assert "protocol: hermes_json" in e.value.hint and "protocol: mini_o3_grounding" in e.value.hint


def test_the_run_config_default_is_auto(tmp_path, qwen25_folder):
    from perceive.config import PerceiveConfig

    cfg = PerceiveConfig.model_validate({"model": {"path": str(qwen25_folder)}})
    assert cfg.protocol.name == "auto"
    loop = PerceptionLoop.from_config(cfg)
    assert loop.protocol.name == "hermes_json"
    cfg = PerceiveConfig.model_validate({"model": {"path": str(qwen25_folder)}, "protocol": "mini_o3_grounding"})
    assert PerceptionLoop.from_config(cfg).protocol.name == "mini_o3_grounding"


def test_qwen3_vl_is_refused_saying_why(tmp_path):
    folder = save_tiny_stock_model(tmp_path / "qwen3", "qwen3_vl")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen3_vl"
    with pytest.raises(ModelLoadError) as e:
        perceive.load_model(folder)
    msg = e.value.message
    assert "Qwen3-VL" in msg and "not supported yet" in msg and "deepstack" in msg
    assert "deepstack_visual_indexes = [0]" in msg and "answer wrongly" in msg


# -- the loop: each protocol on the stock Qwen2.5-VL ------------------------------------------------

# (protocol, options, script, the crops in root pixels by the family's convention)
# 64x48 image, absolute pixels: [8, 4, 48, 36] is the crop itself.
# mini_o3: [0.125, 0.125, 0.75, 0.875] of 64x48 = (8, 6, 48, 42).
CASES = {
    "hermes_json": ("auto", {}, hermes([8, 4, 48, 36]), [(8, 4, 48, 36)]),
    "hermes_json_relative": ("hermes_json", {"coordinates": "relative_1000"},
                             hermes([125, 125, 750, 875], 0), [(8, 6, 48, 42)]),
    "mini_o3_grounding": ("mini_o3_grounding", {}, grounding([0.125, 0.125, 0.75, 0.875]), [(8, 6, 48, 42)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_online_equals_reprefill(qwen25, case):
    name, options, script, boxes = CASES[case]
    runs = []
    for reprefill in (False, True):
        loop = make_loop(qwen25, {0: script}, protocol=name, protocol_options=options, reprefill=reprefill,
                         max_new_tokens=len(script) + 12)
        runs.append(loop.ask(image(), "What is there?"))
    online, ref = runs
    assert online.ok and ref.ok, (online.error, ref.error)
    assert not [e for e in online.trace.events if e["type"] == "parse_error"]
    assert [box_of(h) for h in online.trace.hops] == boxes
    assert online.token_ids == ref.token_ids
    for a, b in zip(online.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_a_call_on_a_view_maps_through_its_frame(qwen25):
    """The second call names the first view (img_idx 1): its absolute pixels are the view's, and
    the trace's box is the view's frame applied by hand."""
    ans = make_loop(qwen25, {0: hermes([8, 4, 48, 36]) + hermes([0, 0, 30, 30], 1)}, protocol="auto",
                    max_new_tokens=400).ask(image(), "What is there?")
    assert ans.ok, ans.error
    first, second = ans.trace.hops
    assert box_of(first) == (8, 4, 48, 36)
    # region_select shows the 40x32 crop as it is: view 1's pixel (x, y) is root (8 + x, 4 + y)
    view = first.views[0]
    assert (view["width"], view["height"]) == (40, 32)
    assert (view["to_root"]["ox"], view["to_root"]["oy"], view["to_root"]["sx"], view["to_root"]["sy"]) == \
        ("8", "4", "1", "1")
    assert second.target == "v1" and box_of(second) == (8, 4, 38, 34)


def test_a_batch_on_different_hop_paths_equals_one_at_a_time(qwen25):
    scripts = {0: hermes([8, 4, 48, 36]),  # one call
               2: "I see. " + hermes([0, 0, 64, 48]) + hermes([10, 10, 40, 40], 1),  # two, the second on the view
               3: hermes([30, 30, 10, 10])}  # a degenerate box: a parse error, then it goes on
    items = [(image(), "What is there?"), (image("red"), "Which colour?"), (image("green"), "Where?"),
             (image("white"), "And?")]
    batch = make_loop(qwen25, scripts, protocol="auto", max_new_tokens=400).ask_batch(items)
    hops = [len(a.trace.hops) for a in batch]
    assert hops == [1, 0, 2, 0], hops
    assert box_of(batch[2].trace.hops[1]) == (10, 10, 40, 40)  # view 1 is the whole 64x48 image at 1x
    assert [e["kind"] for e in batch[3].trace.events if e["type"] == "parse_error"] == ["bad_box"]
    for i, (img, q) in enumerate(items):
        single = make_loop(qwen25, {0: scripts[i]} if i in scripts else {}, protocol="auto",
                           max_new_tokens=400).ask(img, q)
        assert batch[i].token_ids == single.token_ids, i
        assert [box_of(h) for h in batch[i].trace.hops] == [box_of(h) for h in single.trace.hops]
        for a, b in zip(batch[i].logits, single.logits, strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
