"""Tool-call protocols: each family's calls read from hand-written outputs, boxes checked against
boxes computed by hand from each family's convention, errors as values, and the observation
turn each family was trained on."""

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from perceive.geometry import Box, Frame
from perceive.protocol import DictCodec, ParseErrorKind, PerceptionCall
from perceive.protocols import HermesJSON, IncrementalDetokenizer, MiniO3Grounding, VPTProtocol

ROOT = Frame.root(800, 600)
V1 = ROOT.child("v1", Box(100, 100, 500, 400), (800, 600))  # a 2x zoom of (100, 100, 500, 400)
VIEWS = [ROOT, V1]


def read(proto, text, registry, views=VIEWS):
    return proto.read_text(text, views, registry.select())


def one(results):
    assert len(results) == 1, results
    return results[0]


def crop(res):
    return res.to_dict()["crop_root"]


def tool_call(args, name="image_zoom_in_tool"):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def as_tuple(d):
    return (d["x0"], d["y0"], d["x1"], d["y1"])


# -- hermes_json, absolute pixels (Qwen2.5-VL, DeepEyes) -------------------------------------------

def test_deepeyes_absolute_pixels_of_the_original(registry):
    r = one(read(HermesJSON(), "I will zoom. " + tool_call({"bbox_2d": [10, 20, 110, 220], "label": "cat"}), registry))
    assert (r.action, r.target, r.tool) == ("region_select", "root", "image_zoom_in_tool")
    assert r.args.box == (10, 20, 110, 220) and as_tuple(r.to_dict()["box_root"]) == (10, 20, 110, 220)


@pytest.mark.parametrize("bbox,ok", [([100, 100, 110, 150], False),  # 10 px wide
                                     ([100, 100, 130, 300], False),  # 30 px: DeepEyes needs more than 30
                                     ([100, 100, 131, 300], True),
                                     ([-10, 0, 20, 100], False)])  # 20 px once clamped (DeepEyes clamps first)
def test_deepeyes_refuses_a_short_side_of_30_px_or_less(registry, bbox, ok):
    """As DeepEyes' zoom tool (visual_toolbox_v2, the one it was trained with) does: it refuses the
    box, it does not enlarge it. A refused call is a bad_box parse error, whatever ``repair`` says."""
    for proto in (HermesJSON(), HermesJSON(small_box="refuse"), HermesJSON(repair=False)):
        r = one(read(proto, tool_call({"bbox_2d": bbox}), registry))
        if ok:
            assert r.args.box == tuple(bbox) and r.repairs == ()
        else:  # (without repair, a box that leaves the image is refused for that first)
            assert r.kind == ParseErrorKind.BAD_BOX, r
            assert "its short side must be over 30 px" in r.message or not proto.options.repair, r


def test_the_enlarge_rule_enlarges_boxes_under_28_px(registry):
    """``small_box: enlarge`` (DeepEyes' later toolboxes; absolute_resized's default)."""
    # w=10, h=50: ratio 28/10; half sides ceil(25*2.8)=70, ceil(5*2.8)=14 around (105, 125)
    for proto in (HermesJSON(small_box="enlarge"), HermesJSON(coordinates="absolute_resized")):
        assert proto.small_box == "enlarge" and proto.min_box == 28
    r = one(read(HermesJSON(small_box="enlarge"), tool_call({"bbox_2d": [100, 100, 110, 150]}), registry))
    assert r.args.box == (91, 55, 119, 195) and r.repairs == ("enlarged",)
    err = one(read(HermesJSON(small_box="enlarge", repair=False), tool_call({"bbox_2d": [100, 100, 110, 150]}),
                   registry))
    assert err.kind == ParseErrorKind.BAD_BOX and "under the 28 px minimum" in err.message


@pytest.mark.parametrize("options,rule,min_box", [
    ({}, "refuse", 30), ({"coordinates": "absolute_resized"}, "enlarge", 28),
    ({"coordinates": "relative_1000"}, "qwen_agent", 32), ({"small_box": "enlarge", "min_box": 40}, "enlarge", 40),
    ({"small_box": "none"}, None, None), ({"min_box": 0}, None, None)])
def test_each_coordinate_mode_has_its_familys_small_box_rule(options, rule, min_box):
    proto = HermesJSON(**options)
    assert (proto.small_box, proto.min_box) == (rule, min_box)


def test_no_small_box_rule_takes_a_tiny_box_as_it_is(registry):
    r = one(read(HermesJSON(small_box="none"), tool_call({"bbox_2d": [100, 100, 101, 102]}), registry))
    assert r.args.box == (100, 100, 101, 102) and r.repairs == ()


def test_out_of_image_is_clamped_or_reported(registry):
    r = one(read(HermesJSON(), tool_call({"bbox_2d": [-50, 500, 300, 900]}), registry))
    assert r.args.box == (0, 500, 300, 600) and r.repairs == ("clamped",)
    assert one(read(HermesJSON(repair=False), tool_call({"bbox_2d": [-50, 500, 300, 900]}), registry)).kind \
        == ParseErrorKind.BAD_BOX
    assert one(read(HermesJSON(), tool_call({"bbox_2d": [900, 0, 1000, 100]}), registry)).kind == ParseErrorKind.BAD_BOX


def test_img_idx_names_the_view(registry):
    # absolute pixels of view 1 (800x600 showing root (100,100)-(500,400) at 2x)
    r = one(read(HermesJSON(), tool_call({"bbox_2d": [200, 100, 600, 500], "img_idx": 1}), registry))
    assert r.target == "v1" and as_tuple(r.to_dict()["box_root"]) == (200, 150, 400, 350)
    e = one(read(HermesJSON(), tool_call({"bbox_2d": [0, 0, 50, 50], "img_idx": 2}), registry))
    assert e.kind == ParseErrorKind.UNKNOWN_VIEW


# -- hermes_json, relative 0-1000 (Qwen3-VL) -------------------------------------------------------

Q3 = HermesJSON(coordinates="relative_1000")


def test_qwen3_relative_1000_of_observation(registry):
    # 0-500 of v1's 800x600 is (0, 0, 400, 300) in v1, (100, 100, 300, 250) in the original
    r = one(read(Q3, tool_call({"bbox_2d": [0, 0, 500, 500], "label": "sign", "img_idx": 1}), registry))
    assert r.target == "v1" and r.args.box == (0, 0, 400, 300)
    assert as_tuple(r.to_dict()["box_root"]) == (100, 100, 300, 250)
    assert as_tuple(crop(r)) == (100, 100, 300, 250)


def test_qwen3_enlarges_under_32_px_as_qwen_agent(registry):
    big = [Frame.root(1000, 1000)]
    # w=5, h=30: ratio 6.4; halves ceil(96)=96, ceil(16)=16 around (102.5, 115): (86, 19, 119, 211)
    r = one(read(Q3, tool_call({"bbox_2d": [100, 100, 105, 130], "img_idx": 0}), registry, big))
    assert r.args.box == (86, 19, 119, 211) and r.repairs == ("enlarged",)
    # w=10, h=20: the enlarged box is 32 wide, not over 32: Qwen-Agent keeps the original
    r = one(read(Q3, tool_call({"bbox_2d": [100, 100, 110, 120], "img_idx": 0}), registry, big))
    assert r.args.box == (100, 100, 110, 120) and r.repairs == ()


# -- mini_o3_grounding ------------------------------------------------------------------------------

def test_mini_o3_relative_0_1_in_the_source_frame(registry):
    text = ('<think>zoom</think><grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "original_image"}'
            '</grounding> then <grounding>{"bbox_2d": [0.25, 0.5, 0.75, 1.0], "source": "observation_1"}</grounding>')
    a, b = read(MiniO3Grounding(), text, registry)
    assert a.target == "root" and a.args.box == (80, 120, 240, 240)
    assert b.target == "v1" and b.args.box == (200, 300, 600, 600)
    assert as_tuple(b.to_dict()["box_root"]) == (200, 250, 400, 400)


def test_mini_o3_decimals_are_exact(registry):
    r = one(read(MiniO3Grounding(), '<grounding>{"bbox_2d": [0.1, 0.1, 0.9, 0.9], "source": "original_image"}'
                 '</grounding>', registry, [Frame.root(3, 3)]))
    assert r.args.box == (0.3, 0.3, 2.7, 2.7) and as_tuple(crop(r)) == (0, 0, 3, 3)


def test_mini_o3_source_naming_no_observation(registry):
    for source in ("observation_2", "observation_0", "crop_1", 3):
        e = one(read(MiniO3Grounding(), json.dumps({"bbox_2d": [0, 0, 1, 1], "source": source}).join(
            ["<grounding>", "</grounding>"]), registry))
        assert e.kind in (ParseErrorKind.UNKNOWN_VIEW, ParseErrorKind.INVALID_ARGS), e
    assert e.kind == ParseErrorKind.INVALID_ARGS  # a number is ill-typed


def test_mini_o3_refuses_aspect_200(registry):
    e = one(read(MiniO3Grounding(), '<grounding>{"bbox_2d": [0, 0, 1, 0.005], "source": "original_image"}'
                 '</grounding>', registry, [Frame.root(1000, 1000)]))
    assert e.kind == ParseErrorKind.BAD_BOX and "aspect" in e.message


# -- malformed calls are values ----------------------------------------------------------------------

@pytest.mark.parametrize("text,kind", [
    ("<tool_call>{not json}</tool_call>", ParseErrorKind.INVALID_JSON),
    (tool_call({"bbox_2d": [1, 2, 3, 4]}, name="crop"), ParseErrorKind.UNKNOWN_TOOL),
    (tool_call({"label": "x"}), ParseErrorKind.INVALID_ARGS),
    (tool_call({"bbox_2d": [1, 2, 3]}), ParseErrorKind.INVALID_ARGS),
    (tool_call({"bbox_2d": ["a", 2, 3, 4]}), ParseErrorKind.INVALID_ARGS),
    (tool_call({"bbox_2d": [True, 2, 3, 4]}), ParseErrorKind.INVALID_ARGS),
    (tool_call({"bbox_2d": [0, 0, 50, 50], "img_idx": "one"}), ParseErrorKind.INVALID_ARGS),
    (tool_call({"bbox_2d": [0, 0, 50, 50], "label": 3}), ParseErrorKind.INVALID_ARGS),
    (tool_call({"bbox_2d": [50, 50, 50, 80]}), ParseErrorKind.BAD_BOX),
    (tool_call({"bbox_2d": [60, 50, 10, 80]}), ParseErrorKind.BAD_BOX),
    ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, Infinity, 5]}}</tool_call>',
     ParseErrorKind.INVALID_ARGS),
    ('<tool_call>["image_zoom_in_tool"]</tool_call>', ParseErrorKind.INVALID_ARGS),
    ("<tool_call>" + "[" * 5000 + "</tool_call>", ParseErrorKind.INVALID_JSON),
    ("text </tool_call>", ParseErrorKind.STRAY_END),
    ('<tool_call>{"name": "image_zoom_in_tool"', ParseErrorKind.UNCLOSED),
])
def test_malformed_calls(registry, text, kind):
    assert one(read(HermesJSON(), text, registry)).kind == kind


def test_nested_open_drops_the_first(registry):
    res = read(HermesJSON(), "<tool_call>{" + tool_call({"bbox_2d": [0, 0, 100, 100]}), registry)
    assert [getattr(r, "kind", "call") for r in res] == [ParseErrorKind.NESTED_START, "call"]


# -- streaming ---------------------------------------------------------------------------------------

def test_streaming_tags_split_across_tokens(registry):
    pieces = ["Look", " <", "tool", "_call", ">\n{\"name\": \"image_", "zoom_in_tool\", \"arguments\": ",
              "{\"bbox_2d\": [0, 0, 400, 300]}}\n</tool", "_call>", " more"]
    reader = HermesJSON().reader(registry.select(), DictCodec(dict(enumerate(pieces))), lambda: VIEWS)
    events = [reader.feed(i) for i in range(len(pieces))]
    assert [i for i, e in enumerate(events) if e is not None] == [7]  # the call closes on "_call>"
    call = events[7]
    assert isinstance(call, PerceptionCall) and call.target == "root" and call.args.box == (0, 0, 400, 300)
    assert call.start == 1 and call.end == 7 and call.token_ids == tuple(range(1, 8))
    assert call.to_call().target == "root"
    assert reader.close() is None


def test_detokenizer_decodes_a_window_not_the_whole_text():
    # byte-level ids: "é" is two ids; the first alone decodes to U+FFFD and is held back
    data = "zoom é now".encode()
    seen = []

    def decode(ids):
        seen.append(len(ids))
        return bytes(data[i] for i in ids).decode("utf-8", errors="replace")

    d = IncrementalDetokenizer(decode)
    out = [d.push(i) for i in range(len(data))]
    assert "".join(out) + d.flush() == "zoom é now" and "" in out
    assert max(seen) <= 3  # never the whole stream


def test_vpt_is_the_stream_parser(registry):
    from perceive.protocol import StreamParser

    assert isinstance(VPTProtocol().reader(registry.select(), DictCodec({})), StreamParser)
    layout = SimpleNamespace(observation_turn=lambda blocks: ["paper", *blocks])
    assert VPTProtocol().observation_turn(layout, ["M"], 1) == ["paper", "M"]
    assert VPTProtocol().system_prompt("sys", registry.select()) == "sys"


# -- declaring and answering --------------------------------------------------------------------------

LAYOUT = SimpleNamespace(turn_open="<|im_end|>\n<|im_start|>user\n", turn_close="<|im_end|>\n<|im_start|>assistant\n",
                         encode=lambda text: [text])
M = "<|vision_start|><|image_pad|><|vision_end|>"


def test_observation_turns_as_each_family_was_trained():
    assert HermesJSON().observation_text(LAYOUT, [M], 1) == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>" + M + "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert Q3.observation_text(LAYOUT, [M, M], 1) == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n" + M + "\n</tool_response>\n<tool_response>\n" + M
        + "\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    text = MiniO3Grounding().observation_text(LAYOUT, [M], 2)
    assert text.startswith("<|im_end|>\n<|im_start|>user\nAfter the above Action 1, here is the the zoom-in image "
                           "(Observation 2):\n" + M + ".\nContinue your reasoning process inside <think> and </think>.")
    assert text.endswith("put your final answer inside <answer> and </answer>.<|im_end|>\n<|im_start|>assistant\n")
    assert HermesJSON().observation_turn(LAYOUT, [M], 1) == [HermesJSON().observation_text(LAYOUT, [M], 1)]


def test_hermes_tools_block(registry):
    system = HermesJSON(tools=["dino"]).system_prompt("Be brief.", registry.select())
    head, _, rest = system.partition("<tools>\n")
    assert head == ("Be brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                    "You are provided with function signatures within <tools></tools> XML tags:\n")
    lines, _, tail = rest.partition("\n</tools>")
    tools = [json.loads(line) for line in lines.splitlines()]
    assert [t["function"]["name"] for t in tools] == ["image_zoom_in_tool", "dino"]
    assert tools[0]["function"]["parameters"]["required"] == ["bbox_2d", "label"]
    assert "img_idx" in Q3.zoom_schema()["function"]["parameters"]["required"]
    assert tail.endswith('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    assert HermesJSON(declare=False).system_prompt(None, registry.select()) is None
    assert MiniO3Grounding().system_prompt(None, []).startswith("You are a helpful assistant.")


def test_registry_protocol_options(registry):
    from perceive.errors import ConfigError

    assert registry.protocol("hermes_json", {"coordinates": "relative_1000"}).relative
    with pytest.raises(ConfigError, match="coords"):
        registry.protocol("hermes_json", {"coords": 1})
    with pytest.raises(ConfigError, match="no tool-call protocol named 'hermes'"):
        registry.protocol("hermes")


def test_config_and_loop_options():
    from perceive.config import PerceiveConfig
    from perceive.loop.options import LoopOptions, options_from_config

    assert LoopOptions().protocol == "auto" and options_from_config(PerceiveConfig()).protocol == "auto"
    cfg = PerceiveConfig.model_validate({"protocol": {"name": "hermes_json", "options": {"coordinates":
                                                                                         "relative_1000"}}})
    opts = options_from_config(cfg)
    assert opts.protocol == "hermes_json" and opts.protocol_options == {"coordinates": "relative_1000"}
    assert PerceiveConfig.model_validate({"protocol": "mini_o3_grounding"}).protocol.name == "mini_o3_grounding"


def test_config_check_names_refuses_an_unknown_protocol(registry):
    from perceive.config import PerceiveConfig

    problems = PerceiveConfig.model_validate({"protocol": "hermes"}).check_names(registry)
    assert any("protocol" in p and "hermes_json" in p for p in problems), problems


# -- the CLI -------------------------------------------------------------------------------------------

def cli(*argv):
    from perceive.cli import app

    out = CliRunner().invoke(app, list(argv))
    assert out.exit_code == 0, out.output
    return out.output


def test_cli_list():
    names = [row["name"] for row in json.loads(cli("protocols", "list", "--json"))]
    assert {"vpt", "hermes_json", "mini_o3_grounding"} <= set(names)


def test_cli_list_shows_each_options_default():
    """A default_factory option shows what the factory gives (it printed PydanticUndefined)."""
    out = " ".join(cli("protocols", "list").split())
    assert "PydanticUndefined" not in out
    assert "tools (list[str], default [])" in out and "coordinates (Literal[" in out


def test_cli_parse_returns_every_call_of_a_turn_and_exits_0_with_parse_errors():
    text = (tool_call({"bbox_2d": [10, 20, 110, 220]}) + " then " + tool_call({"bbox_2d": [300, 300, 400, 450]})
            + tool_call({"bbox_2d": [1, 2, 3]}))
    out = json.loads(cli("protocols", "parse", "--protocol", "hermes_json", "--image-size", "800x600", text))
    assert [as_tuple(c["box"]) for c in out["calls"]] == [(10, 20, 110, 220), (300, 300, 400, 450)]
    assert [e["kind"] for e in out["errors"]] == ["invalid_args"]  # cli() asserted exit code 0


@pytest.mark.parametrize("views,words", [
    ([{"box": [0, 0]}], '"box" must be a list of 4 numbers, got [0, 0]'),  # was Box.__init__() missing 2 ...
    ([{"box": [0, 0, 10, 10], "size": [5]}], '"size" must be a list of 2 numbers, got [5]'),  # was an IndexError
    ([{"box": [0, 0, 10, 10], "size": [0, 5]}], '"size" must be whole numbers of pixels, at least 1'),  # 1/0
    ([{"box": [0, 0, 10, 10], "size": [2.5, 5]}], '"size" must be whole numbers of pixels'),
    ([{"box": [0, 0, 0, 10]}], "is empty: it needs x0 < x1 and y0 < y1"),
    ([{"box": [0, 0, 10.5, 10]}], '"box" needs whole pixels when no "size" is given'),
    ([{"box": [0, 0, 900, 10]}], "it shows (0, 0, 900, 10), which is not inside the 800x600 image"),
    ([{"box": [0, True, 10, 10]}], '"box" must be a list of 4 numbers'),
    ([{"size": [3, 3]}], 'no "box"'),
    ([5], "not an object"),
    ([{"id": "v1", "to_root": {}}], "a frame's \"width\" and \"height\" must be whole numbers of pixels"),
    ([{"id": "v1", "width": 4, "height": 4, "to_root": {"sx": "x"}}], '"to_root" holds something that is not a number'),
    ([{"id": "v1", "width": 4, "height": 4, "to_root": {"sx": 0}}], '"sx" and "sy" must be positive'),
])
def test_cli_parse_a_malformed_view_is_one_clear_line(tmp_path, views, words):
    from perceive.cli import app

    path = tmp_path / "views.json"
    path.write_text(json.dumps(views))
    out = CliRunner().invoke(app, ["protocols", "parse", "--protocol", "hermes_json", "--image-size", "800x600",
                                   "--views", str(path), "x"])
    text = " ".join(out.output.split())
    assert out.exit_code == 1 and f"error: --views {path}: view 1 (" in text and words in text, out.output
    assert "Traceback" not in out.output and "internal error" not in out.output


def test_cli_parse_each_family(tmp_path):
    views = tmp_path / "views.json"
    views.write_text(json.dumps([{"box": [100, 100, 500, 400], "size": [800, 600]}]))
    out = json.loads(cli("protocols", "parse", "--protocol", "hermes_json", "--image-size", "800x600",
                         "--option", "coordinates=relative_1000", "--views", str(views),
                         tool_call({"bbox_2d": [0, 0, 500, 500], "label": "x", "img_idx": 1}) + "</tool_call>"))
    (call,) = out["calls"]
    assert call["target"] == "v1" and as_tuple(call["box"]) == (0, 0, 400, 300)
    assert as_tuple(call["box_root"]) == (100, 100, 300, 250)
    assert [e["kind"] for e in out["errors"]] == ["stray_end"]
    out = json.loads(cli("protocols", "parse", "--protocol", "mini_o3_grounding", "--image-size", "800x600",
                         '<grounding>{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "observation_1"}</grounding>'))
    assert out["errors"][0]["kind"] == "unknown_view" and not out["calls"]
    out = json.loads(cli("protocols", "parse", "--protocol", "vpt", "--image-size", "800x600",
                         "<|region_token_start|><|x_1|><|y_5|><|x_5|><|y_7|><|region_token_end|>"))
    assert as_tuple(out["calls"][0]["box_root"]) == (0, 300, 700, 600)  # the paper's worked example
    # a view given as a frame, as traces write it
    frame = V1.to_dict()
    views.write_text(json.dumps([frame]))
    out = json.loads(cli("protocols", "parse", "--protocol", "hermes_json", "--image-size", "800x600",
                         "--views", str(views), tool_call({"bbox_2d": [200, 100, 600, 500], "img_idx": 1})))
    assert as_tuple(out["calls"][0]["box_root"]) == (200, 150, 400, 350)


def test_cli_parse_absolute_resized_scales_by_the_size_the_model_saw():
    """Stock Qwen2.5-VL grounding: pixels of the input as its processor resized it (1000x500 seen
    at 504x252); the box maps back to the original exactly."""
    args = ["protocols", "parse", "--protocol", "hermes_json", "--image-size", "1000x500",
            "--option", "coordinates=absolute_resized"]
    out = json.loads(cli(*args, "--seen-size", "504x252", tool_call({"bbox_2d": [252, 126, 504, 252]})))
    assert as_tuple(out["calls"][0]["box_root"]) == (500, 250, 1000, 500)
    out = json.loads(cli(*args, tool_call({"bbox_2d": [252, 126, 504, 252]})))  # the size is needed
    assert not out["calls"] and "absolute_resized needs the size" in out["errors"][0]["message"]


# -- the loop, on a tiny stock Qwen2.5-VL model -------------------------------------------------------

CALLS = {
    "hermes_json": ({}, '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [8, 4, 48, 36], '
                        '"label": "x"}}\n</tool_call>', (8, 4, 48, 36), "<tool_response>"),
    "hermes_json_q3": ({"coordinates": "relative_1000"}, '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": '
                       '{"bbox_2d": [125, 125, 750, 875], "label": "x", "img_idx": 0}}\n</tool_call>',
                       (8, 6, 48, 42), "<tool_response>\n"),
    "mini_o3_grounding": ({}, '<grounding>{"bbox_2d": [0.125, 0.125, 0.75, 0.875], "source": "original_image"}'
                              '</grounding>', (8, 6, 48, 42), "(Observation 1):\n"),
}


@pytest.fixture(scope="module")
def qwen25():
    from perceive.testing.tiny import tiny_vpt_model

    return tiny_vpt_model(base="qwen2_5_vl")


@pytest.mark.parametrize("name", sorted(CALLS))
def test_loop_online_equals_reprefill(qwen25, name):
    import torch
    from PIL import Image

    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.testing.scripted import ScriptedPolicy, span_tokens

    options, script, box, marker = CALLS[name]
    tok = qwen25.tokenizer
    image = Image.new("RGB", (64, 48), "navy")

    def ask(**kw):
        opts = LoopOptions(max_new_tokens=len(script) + 16, record_logits=True, protocol=name.removesuffix("_q3"),
                           protocol_options=options, **kw)
        loop = PerceptionLoop(qwen25, options=opts, policy=ScriptedPolicy(tok, {0: span_tokens(tok, script)}))
        real = loop.observer.feed

        def feed(s, chunk):
            fed.append(list(chunk.ids))
            return real(s, chunk)

        loop.observer.feed = feed
        return loop, loop.ask(image, "What is there?")

    fed = []
    loop, online = ask()
    observed = tok.decode(fed[-1], skip_special_tokens=False)
    _, ref = ask(reprefill=True)
    assert online.ok and ref.ok, (online.error, ref.error)
    assert [h.action for h in online.trace.hops] == ["region_select"]
    assert tuple(online.trace.hops[0].box[k] for k in ("x0", "y0", "x1", "y1")) == box
    assert online.token_ids == ref.token_ids
    for a, b in zip(online.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    # the observation turn is the family's, written right after the call's closing tag
    closing = script[-1]
    assert observed.startswith(closing + "<|im_end|>\n<|im_start|>user\n") and marker in observed
    assert observed.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert not [e for e in online.trace.events if e["type"] == "parse_error"]
    assert ("# Tools" in loop.layout.system) == name.startswith("hermes")


def test_naming_the_models_own_protocol_keeps_the_options_it_was_trained_with():
    """A bare `protocol: hermes_json` for a model whose perceive.json declares hermes_json with
    options keeps those options (the run's own go over them); found by a new-user trial."""
    from types import SimpleNamespace

    from perceive.plugins import get_registry
    from perceive.protocols.detect import choose_protocol

    model = SimpleNamespace(config=SimpleNamespace(protocol={"name": "hermes_json",
                                                             "options": {"response": "deepeyes", "declare": False}}))
    bare = choose_protocol(get_registry(), "hermes_json", None, model)
    assert bare.options.response == "deepeyes" and bare.options.declare is False
    over = choose_protocol(get_registry(), "hermes_json", {"declare": True}, model)
    assert over.options.response == "deepeyes" and over.options.declare is True
    other = choose_protocol(get_registry(), "mini_o3_grounding", None, model)  # another protocol: its defaults
    assert type(other).__name__ == "MiniO3Grounding"
