"""``perceive mcp``'s toolbox in process, without the MCP SDK: the tools and their schemas; each action
tool's pixels equal to what the perception loop's own Observer gives for the same call; the coordinate
spaces; chained crops; the image store's limits; every failure answered as a tool error with the CLI's
message and hint; a hung plugin timed out and quarantined; a graph tool answering as ``perceive ask``."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import BaseModel

from perceive import Action, TriggerGrammar, View, hookimpl
from perceive.actions import ActionCall
from perceive.config import McpConfig, PerceiveConfig, load_config
from perceive.dispatch import MAX_ABANDONED, abandoned_calls
from perceive.encoders import EncoderHub
from perceive.errors import ActionInputError, ConfigError
from perceive.images import as_rgb, load_image
from perceive.loop.observe import Observer
from perceive.loop.options import LoopOptions
from perceive.loop.sample import Sample
from perceive.mcp.images import ImageStore
from perceive.mcp.schemas import inline
from perceive.mcp.toolbox import ImagePart, TextPart, Toolbox
from perceive.plugins import load_registry
from perceive.regions import RegionArgs
from perceive.testing.traces import untimed
from perceive.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "default" / "examples"
CARD = EXAMPLES / "card_0.png"  # 448x448; its number "460" at [253, 389, 296, 415]
NUMBER = [253, 389, 296, 415]
QUESTION = "What number is written on the card?"


def cfg_with(actions=None, **mcp) -> PerceiveConfig:
    """A run config serving no graph (unless given) and reading paths from the shipped examples."""
    return PerceiveConfig(actions=actions, mcp=McpConfig(**{"graphs": [], "allow_local_images": EXAMPLES, **mcp}))


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ok(result):
    assert not result.is_error, result.content[0].text
    return result


def images(result) -> list[ImagePart]:
    return [p for p in result.content if isinstance(p, ImagePart)]


def text_of(result) -> str:
    return "\n".join(p.text for p in result.content if isinstance(p, TextPart))


def error(result) -> str:
    assert result.is_error and len(result.content) == 1, result
    return result.content[0].text


def drained(seconds: float = 10) -> bool:
    deadline = time.time() + seconds
    while abandoned_calls() and time.time() < deadline:
        time.sleep(0.05)
    return not abandoned_calls()


class LoopSample:
    """One sample as the perception loop holds it, its calls run by the loop's own Observer."""

    def __init__(self, registry, path: Path):
        self.observer = Observer(registry, EncoderHub(registry.encoder_specs()), registry.protocol("vpt"),
                                 LoopOptions())
        self.sample = Sample(0, as_rgb(load_image(path)), Trace(), None, torch.Generator())

    def run(self, action: str, args, options=None, target: str = "root"):
        obs, hop = self.observer.run(self.sample, ActionCall(action, args), dict(options or {}), target, None)
        assert obs is not None, hop.error
        if isinstance(obs[0], View):
            self.observer.record_views(self.sample, obs, hop)
        return obs


# -- tools and schemas ------------------------------------------------------------------------------


def _refs(node) -> list[str]:
    return re.findall(r'"\$(?:ref|defs)"', json.dumps(node))


def test_the_tools_are_the_view_and_text_actions_register_image_and_the_graphs(registry):
    toolbox = Toolbox(PerceiveConfig(), registry)
    names = [t.name for t in toolbox.tools()]
    assert names[0] == "register_image"
    assert set(names[1:5]) == {"region_select", "zoom", "tiles", "ocr"}  # not dino, sam, native: features
    assert names[5:] == ["graph_free_choice", "graph_iterative_zoom", "graph_reencode_then_answer",
                         "graph_region_then_answer", "graph_region_then_ocr", "graph_tiles_then_answer"]
    for spec in toolbox.tools():
        schema = spec.input_schema
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name) and spec.description
        assert schema["type"] == "object" and "properties" in schema and not _refs(schema), spec.name
        assert schema["additionalProperties"] is False and "image" in schema["required"]
    assert set(toolbox._specs["graph_free_choice"].input_schema["properties"]) == {"image", "question"}
    only = Toolbox(PerceiveConfig(actions={"zoom": {}}, mcp=McpConfig(graphs=["region_then_answer"])), registry)
    assert [t.name for t in only.tools()] == ["register_image", "zoom", "graph_region_then_answer"]


def test_an_action_tool_schema_names_the_box_its_coordinate_space_and_no_options_by_default(registry):
    specs = {t.name: t.input_schema for t in Toolbox(cfg_with(), registry).tools()}
    zoom = specs["zoom"]["properties"]
    assert zoom["coordinates"]["enum"] == ["pixels", "relative_1000", "relative_1"]
    assert zoom["coordinates"]["default"] == "pixels" and "0-1000" in zoom["coordinates"]["description"]
    assert "[x0, y0, x1, y1]" in zoom["box"]["description"] and "`coordinates`" in zoom["box"]["description"]
    assert (zoom["box"]["type"], zoom["box"]["items"], zoom["box"]["maxItems"]) == ("array", {"type": "number"}, 4)
    assert {"xs", "ys", "grid", "margin"} <= set(zoom) and "options" not in zoom
    assert specs["zoom"]["required"] == ["image"]
    assert set(specs["tiles"]["properties"]) == {"image", "rows", "cols"}  # no box: no coordinate space
    assert not any("options" in s["properties"] for s in specs.values())
    image = specs["register_image"]["properties"]["image"]
    assert {"type": "string"} in image["anyOf"] and image["anyOf"][1]["properties"]["type"]["enum"] == ["image"]


def test_the_options_the_config_opens_to_agents_are_in_the_schema_with_its_values_as_defaults(registry):
    cfg = cfg_with(actions={"zoom": {"options": {"size": 300}}, "ocr": {}},
                   agent_options={"zoom": ["size"], "ocr": ["pad"]})
    specs = {t.name: t.input_schema for t in Toolbox(cfg, registry).tools()}
    zoom = specs["zoom"]["properties"]["options"]
    assert set(zoom["properties"]) == {"size"} and zoom["additionalProperties"] is False
    assert zoom["properties"]["size"]["default"] == 300 and zoom["properties"]["size"]["maximum"] == 8192
    assert set(specs["ocr"]["properties"]["options"]["properties"]) == {"pad"}  # not threads, not min_score


def test_a_call_cannot_set_an_option_the_config_keeps(registry):
    closed = Toolbox(cfg_with(actions={"zoom": {"options": {"size": 300}}}), registry)
    message = error(closed.call("zoom", {"image": str(CARD), "box": NUMBER, "options": {"size": 8192}}))
    assert message.startswith("zoom: this server lets a call set none of zoom's options") and \
        "mcp.agent_options.zoom" in message
    opened = Toolbox(cfg_with(actions={"ocr": {}}, agent_options={"ocr": ["pad"]}), registry)
    message = error(opened.call("ocr", {"image": str(CARD), "options": {"threads": 64}}))
    assert message.startswith("ocr: a call may not set the option(s) 'threads'") and "it may set pad" in message


@pytest.mark.parametrize(("agent_options", "wanted"), [
    ({"zom": ["size"]}, "mcp.agent_options.zom: 'zom' is not an action this server serves\n  -> did you mean 'zoom'?"),
    ({"zoom": ["sise"]}, "mcp.agent_options.zoom: zoom has no option 'sise'\n  -> did you mean 'size'?"),
])
def test_agent_options_naming_no_served_action_or_option_are_a_config_error(registry, agent_options, wanted):
    with pytest.raises(ConfigError) as info:
        Toolbox(cfg_with(agent_options=agent_options), registry)
    assert wanted in str(info.value) + "\n  -> " + (info.value.hint or "")


def test_schemas_are_inlined():
    class Corner(BaseModel):
        x: int

    class Args(BaseModel):
        corners: list[Corner]
        first: Corner | None = None

    schema = inline(Args.model_json_schema())
    assert "$defs" in json.dumps(Args.model_json_schema()) and not _refs(schema)
    assert schema["properties"]["corners"]["items"]["properties"] == {"x": {"title": "X", "type": "integer"}}


# -- pixels equal to the loop's ---------------------------------------------------------------------


@pytest.mark.parametrize(("action", "options"), [("region_select", {}), ("zoom", {}), ("zoom", {"size": 224})])
def test_a_crop_holds_the_pixels_the_loop_shows(registry, action, options):
    toolbox = Toolbox(cfg_with(agent_options={action: list(options)}), registry)
    got = ok(toolbox.call(action, {"image": str(CARD), "box": NUMBER, "coordinates": None,
                                   **({"options": options} if options else {})}))
    want = LoopSample(registry, CARD).run(action, RegionArgs(box=tuple(NUMBER)), options)[0]
    [part] = images(got)
    assert part.image.size == want.image.size and part.image.tobytes() == want.image.tobytes()
    assert part.id == "img1.v1" and list(part.box) == [want.box.x0, want.box.y0, want.box.x1, want.box.y1]
    assert got.structured["views"] == [{"id": "img1.v1", "box": list(part.box), "size": list(want.image.size),
                                        "parent": "img1", "label": want.label}]
    assert got.structured["registered"] == "img1" and "registered the image as img1" in text_of(got)
    assert f"img1.v1: box {list(part.box)}".replace(" ", "") in text_of(got).replace(" ", "")


def test_the_run_configs_options_apply_and_a_calls_options_override_them_where_allowed(registry):
    toolbox = Toolbox(cfg_with(actions={"zoom": {"options": {"size": 300}}}, agent_options={"zoom": ["size"]}),
                      registry)
    loop = LoopSample(registry, CARD)
    for options, size in (({}, 300), (None, 300), ({"size": 120}, 120)):
        [part] = images(ok(toolbox.call("zoom", {"image": str(CARD), "box": NUMBER, "options": options})))
        want = loop.run("zoom", RegionArgs(box=tuple(NUMBER)), {"size": size})[0]
        assert max(part.image.size) == size and part.image.tobytes() == want.image.tobytes()


def test_the_same_image_sent_again_keeps_its_id(registry):
    toolbox = Toolbox(cfg_with(), registry)
    url = data_url(Image.open(CARD))
    first = ok(toolbox.call("register_image", {"image": url})).structured
    again = ok(toolbox.call("register_image", {"image": url})).structured
    content = {"type": "image", "data": url.partition(",")[2], "mimeType": "image/png"}
    as_content = ok(toolbox.call("register_image", {"image": content})).structured
    assert first["id"] == again["id"] == as_content["id"] and len(toolbox.store) == 1  # held once, not 3 copies
    other = ok(toolbox.call("register_image", {"image": data_url(Image.new("RGB", (64, 64), "red"))})).structured
    assert other["id"] != first["id"]


def test_tiles_give_the_loops_tiles_each_a_new_id(registry):
    toolbox = Toolbox(cfg_with(), registry)
    img = ok(toolbox.call("register_image", {"image": data_url(Image.open(CARD))})).structured["id"]
    got = ok(toolbox.call("tiles", {"image": img, "rows": 2, "cols": 2}))
    args = registry.action("tiles").Args(rows=2, cols=2)
    want = LoopSample(registry, CARD).run("tiles", args)
    assert [p.id for p in images(got)] == ["img1.v1", "img1.v2", "img1.v3", "img1.v4"]
    assert [p.image.tobytes() for p in images(got)] == [v.image.tobytes() for v in want]
    assert [list(p.box) for p in images(got)] == [[0, 0, 224, 224], [224, 0, 448, 224], [0, 224, 224, 448],
                                                  [224, 224, 448, 448]]


def test_ocr_reads_the_loops_text_with_its_boxes(registry):
    pytest.importorskip("rapidocr_onnxruntime")
    toolbox = Toolbox(cfg_with(), registry)
    got = ok(toolbox.call("ocr", {"image": str(CARD), "box": NUMBER}))
    [want] = LoopSample(registry, CARD).run("ocr", registry.action("ocr").Args(box=tuple(NUMBER)))
    assert want.text == "460" and got.structured["text"] == want.text and not images(got)
    assert got.structured["boxes"] == [{"box": [b.x0, b.y0, b.x1, b.y1], "text": t} for b, t in want.boxes]
    assert got.structured["regions"] == [NUMBER]
    assert "460" in text_of(got) and str(got.structured["boxes"][0]["box"]).replace(" ", "") in \
        text_of(got).replace(" ", "")


@pytest.mark.parametrize(("image", "pixels", "k1000", "k1"), [
    ("img1", [112, 224, 336, 448], [250, 500, 750, 1000], [0.25, 0.5, 0.75, 1.0]),
    ("img1.v1", [0, 10, 35, 30], [0, 250, 500, 750], [0, 0.25, 0.5, 0.75]),  # v1 is 70x40
])
def test_the_three_coordinate_spaces_give_the_same_crop(registry, image, pixels, k1000, k1):
    toolbox = Toolbox(cfg_with(), registry)
    ok(toolbox.call("register_image", {"image": str(CARD)}))
    ok(toolbox.call("region_select", {"image": "img1", "box": [240, 380, 310, 420]}))
    crops = [images(ok(toolbox.call("region_select", {"image": image, "box": box, "coordinates": space})))[0]
             for box, space in ((pixels, "pixels"), (k1000, "relative_1000"), (k1, "relative_1"))]
    assert len({(c.image.size, c.image.tobytes(), tuple(c.box)) for c in crops}) == 1
    assert [c.id for c in crops] == ["img1.v2", "img1.v3", "img1.v4"]


def test_a_crop_of_a_crop_maps_to_the_original_and_names_its_parent(registry):
    toolbox = Toolbox(cfg_with(), registry)
    first = ok(toolbox.call("region_select", {"image": str(CARD), "box": [240, 380, 310, 420]}))
    assert first.structured["views"][0]["size"] == [70, 40]
    second = ok(toolbox.call("region_select", {"image": "img1.v1", "box": [10, 10, 40, 30]}))
    assert second.structured["image"] == "img1.v1"
    assert second.structured["views"] == [{"id": "img1.v2", "box": [250, 390, 280, 410], "size": [30, 20],
                                           "parent": "img1.v1", "label": "region"}]
    loop = LoopSample(registry, CARD)
    loop.run("region_select", RegionArgs(box=(240, 380, 310, 420)))
    [want] = loop.run("region_select", RegionArgs(box=(10, 10, 40, 30)), target="v1")
    assert want.frame.parent == "v1" and images(second)[0].image.tobytes() == want.image.tobytes()


def test_a_box_leaving_the_image_is_clamped_and_said_so(registry):
    toolbox = Toolbox(cfg_with(), registry)
    got = ok(toolbox.call("region_select", {"image": str(CARD), "box": [400, 400, 500, 470]}))
    assert got.structured["views"][0]["box"] == [400, 400, 448, 448] and got.structured["repairs"] == ["clamped"]
    assert "the box was clamped to the image" in text_of(got)


# -- images and the store ---------------------------------------------------------------------------


def test_images_come_as_ids_data_urls_paths_or_mcp_image_content(registry):
    toolbox = Toolbox(cfg_with(), registry)
    card = Image.open(CARD)
    content = {"type": "image", "data": data_url(card).partition(",")[2], "mimeType": "image/png"}
    assert ok(toolbox.call("register_image", {"image": content})).structured == {"id": "img1", "size": [448, 448],
                                                                                  "new": True}
    assert ok(toolbox.call("register_image", {"image": str(CARD)})).structured["id"] == "img2"
    again = ok(toolbox.call("register_image", {"image": "card_0.png"}))  # relative: under the allowed folder
    assert again.structured == {"id": "img2", "size": [448, 448], "new": False} and "already" in text_of(again)
    assert toolbox.store.ids() == ["img1", "img2"]
    stored = [toolbox.store.get(i).image.tobytes() for i in ("img1", "img2")]
    assert stored == [as_rgb(load_image(CARD)).tobytes()] * 2


def test_the_store_lets_the_least_recently_used_image_go_with_its_views(registry):
    toolbox = Toolbox(cfg_with(max_images=4), registry)

    def card(k):  # a different image each time (the same bytes again would keep their id)
        image = Image.open(CARD).convert("RGB")
        image.putpixel((0, 0), (k, k, k))
        return data_url(image)

    for k in range(2):
        ok(toolbox.call("register_image", {"image": card(k)}))
    ok(toolbox.call("region_select", {"image": "img1", "box": NUMBER}))  # img1.v1; img1 used after img2
    ok(toolbox.call("register_image", {"image": card(2)}))
    assert len(toolbox.store) == 4
    ok(toolbox.call("register_image", {"image": card(3)}))  # img4: img2 goes
    assert toolbox.store.ids() == ["img1", "img1.v1", "img3", "img4"]
    message = error(toolbox.call("zoom", {"image": "img2", "box": NUMBER}))
    assert message == ("unknown image id 'img2': never registered, or evicted (least recently used) from the store's "
                       "4 images / 1024 MB\n  -> register it again with register_image (or give its path or data URL "
                       "as `image`)")
    ok(toolbox.call("zoom", {"image": "img1.v1", "box": [0, 0, 10, 10]}))  # a view's call uses its image: img3 goes
    assert toolbox.store.ids()[:2] == ["img4", "img1"]


def test_the_store_counts_megabytes_and_refuses_an_image_larger_than_itself():
    card = load_image(CARD)  # 448x448 RGB: 602,112 bytes
    store = ImageStore(max_images=100, max_mb=1.5)  # room for two
    ids = [store.register(card).id for _ in range(3)]
    assert ids == ["img1", "img2", "img3"] and store.ids() == ["img2", "img3"] and store.nbytes == 2 * 448 * 448 * 3
    with pytest.raises(Exception, match=r"unknown image id 'img1'.*1\.5 MB") as info:
        store.get("img1")
    assert info.value.code.value == "unknown-image"
    with pytest.raises(Exception, match="more than the whole image store") as info:
        store.register(Image.new("RGB", (1000, 1000)))
    assert "raise mcp.max_image_mb" in str(info.value) and store.ids() == ["img2", "img3"]


def test_an_images_least_recently_used_views_go_when_it_alone_fills_the_store(registry):
    toolbox = Toolbox(cfg_with(max_images=3), registry)
    ok(toolbox.call("tiles", {"image": str(CARD), "rows": 1, "cols": 2}))
    ok(toolbox.call("tiles", {"image": "img1", "rows": 1, "cols": 2}))
    assert toolbox.store.ids() == ["img1", "img1.v3", "img1.v4"]
    ok(toolbox.call("zoom", {"image": "img1.v3", "box": [0, 0, 10, 10]}))  # v3 used: v4 goes first, not v3
    assert toolbox.store.ids() == ["img1", "img1.v3", "img1.v5"]
    message = error(toolbox.call("tiles", {"image": "img1", "rows": 2, "cols": 2}))
    assert "the 4 view(s) this call made" in message and "-> raise mcp.max_images or mcp.max_image_mb" in message


# -- errors -----------------------------------------------------------------------------------------


class Failing(Action):
    """A view action that fails as a plugin may: with a typed error and its hint, or a plain exception."""

    name = "failing"
    grammar = TriggerGrammar(start="<|failing_start|>", end="<|failing_end|>")
    observation = "view"

    def run(self, call, context):
        if context.frame.width > 100:
            raise ActionInputError("cannot read this view", hint="try a smaller one")
        raise RuntimeError("kaput")


class Stall(Action):
    """A view action whose calls never return until the test lets them go."""

    name = "stall"
    grammar = TriggerGrammar(start="<|stall_start|>", end="<|stall_end|>")
    observation = "view"
    release = threading.Event()

    def run(self, call, context):
        self.release.wait(60)
        return View(image=context.image.copy(), frame=context.frame)


class TestPlugin:
    @hookimpl
    def perceive_register_actions(self):
        return [Failing(), Stall()]


@pytest.fixture
def plugged():
    return load_registry([("mcp-test", TestPlugin())])


BOX_HINT = ("  -> img1 is 448x448 px: in pixels, a box inside it lies within [0, 0, 448, 448], with x0 < x1 and "
            "y0 < y1")


@pytest.mark.parametrize(("name", "arguments", "want"), [
    ("zom", {}, "no tool named 'zom'\n  -> did you mean 'zoom'?"),
    ("zoom", [1], "zoom: the arguments must be a JSON object, not list"),
    ("zoom", {"box": NUMBER}, "zoom: `image` is missing\n  -> give an image id"),
    ("zoom", {"image": "img1", "bx": NUMBER}, "zoom: unknown argument(s) 'bx'\n  -> did you mean 'box'"),
    ("zoom", {"image": "img1", "xs": [1], "ys": [1], "grid": 0},
     "zoom: 1 invalid argument(s)\n  grid: Input should be greater than or equal to 1 (got 0)\n  -> the tool's"),
    ("zoom", {"image": "img1"}, "zoom: 1 invalid argument(s)\n  (arguments): region needs x and y cells, or a box"),
    ("zoom", {"image": "img1", "box": NUMBER, "coordinates": "absolute"},
     "zoom: coordinates 'absolute' is not a coordinate space\n  -> use one of pixels, relative_1000, relative_1"),
    ("zoom", {"image": "img1", "box": NUMBER, "options": {"size": 0}},
     "zoom's options: 1 invalid option(s)\n  size: action 'zoom': Input should be greater than or equal to 1"),
    ("zoom", {"image": "img1", "box": NUMBER, "options": {"sise": 9}}, "zoom: a call may not set the option(s) "
     "'sise'\n  -> it may set size (mcp.agent_options.zoom)"),
    ("zoom", {"image": "img1", "box": NUMBER, "options": []}, "zoom: `options` must be an object"),
    ("zoom", {"image": "img1", "box": [5, 5, 5, 9]}, "zoom: degenerate box [5, 5, 5, 9]: needs x0 < x1 and y0 < y1\n"
     + BOX_HINT),
    ("zoom", {"image": "img1", "box": [500, 0, 600, 10]},
     "zoom: box [500, 0, 600, 10] lies outside the 448x448 view 'img1'\n" + BOX_HINT),
    ("zoom", {"image": "img1", "box": [1, 2, 3]}, "zoom: box must be [x0, y0, x1, y1], 4 numbers; got [1, 2, 3]"),
    ("zoom", {"image": "img1", "box": [2, 0, 3, 1], "coordinates": "relative_1"},
     "zoom: box [2, 0, 3, 1] lies outside the 448x448 view 'img1'\n  -> img1 is 448x448 px: in relative_1, a box "
     "inside it lies within [0, 0, 1, 1]"),
    ("zoom", {"image": "img7.v3", "box": NUMBER}, "unknown image id 'img7.v3': never registered, or evicted"),
    ("zoom", {"image": "img1.v9", "box": NUMBER}, "unknown image id 'img1.v9'"),
    ("zoom", {"image": "https://example.com/a.png", "box": NUMBER}, "perceive mcp never fetches images from the "
     "network\n  -> send the image as a base64 data URL"),
    ("zoom", {"image": "/etc/passwd", "box": NUMBER}, "'/etc/passwd' is not under the allowed image folder"),
    ("zoom", {"image": "data:image/png;base64," + base64.b64encode(b"not an image").decode(), "box": NUMBER},
     "cannot"),
    ("register_image", {"image": {"type": "text", "text": "hi"}}, "an image given as an object must be MCP image "
     "content"),
    ("register_image", {}, "register_image takes one argument, `image`, which is missing"),
    ("graph_free_choice", {"image": "img1"}, "no tool named 'graph_free_choice'"),
])
def test_every_mistake_is_a_tool_error_with_the_clis_message_and_hint(registry, name, arguments, want):
    toolbox = Toolbox(cfg_with(agent_options={"zoom": ["size"]}), registry)
    ok(toolbox.call("register_image", {"image": str(CARD)}))
    result = toolbox.call(name, arguments)
    text = error(result)
    assert want in text, text
    message, _, hint = text.partition("\n  -> ")
    assert result.structured["error"]["message"] == message and result.structured["error"].get("hint", "") == hint
    assert "Traceback" not in text


def test_local_paths_are_refused_without_an_allowed_folder(registry):
    toolbox = Toolbox(PerceiveConfig(mcp=McpConfig(graphs=[])), registry)
    text = error(toolbox.call("zoom", {"image": str(CARD), "box": NUMBER}))
    assert text == (f"local image paths are off ({str(CARD)!r})\n  -> send a base64 data URL, or start the server "
                    "with --allow-local-images DIR")
    assert error(toolbox.call("zoom", {"image": "data:image/png,xyz", "box": NUMBER})) == \
        "an image data URL must be base64 (data:image/png;base64,...)\n  -> encode the file's bytes: " \
        "'data:image/png;base64,' + base64(bytes)"


def test_a_failing_plugin_is_a_tool_error_and_a_bug_is_one_line(plugged, monkeypatch):
    toolbox = Toolbox(cfg_with(), plugged)
    result = toolbox.call("failing", {"image": str(CARD)})
    assert error(result) == "failing failed on img1: cannot read this view\n  -> try a smaller one"
    assert result.structured["error"]["code"] == "action-input" and result.structured["stage"] == "run"
    ok(toolbox.call("tiles", {"image": "img1", "rows": 8, "cols": 8}))  # 56x56 views
    assert error(toolbox.call("failing", {"image": "img1.v1"})) == "failing failed on img1.v1: kaput"
    monkeypatch.setattr(toolbox.actions["zoom"], "call", lambda arguments: 1 / 0)
    result = toolbox.call("zoom", {"image": "img1", "box": NUMBER})
    assert error(result) == ("internal error (a bug in perceive or a plugin): ZeroDivisionError: division by zero\n"
                             "  -> the server goes on; report it with the call's arguments")
    assert result.structured["error"]["code"] == "internal"


def test_a_hung_plugin_times_out_then_is_quarantined_while_the_other_tools_work(plugged):
    toolbox = Toolbox(PerceiveConfig(mcp=McpConfig(graphs=[], allow_local_images=EXAMPLES),
                                     runtime={"action_timeout_s": 0.2}), plugged)
    Stall.release.clear()
    try:
        for _ in range(MAX_ABANDONED):
            result = toolbox.call("stall", {"image": str(CARD)})
            assert error(result) == ("action 'stall' did not return within 0.2 s\n  -> raise runtime.action_timeout_s "
                                     "(or --action-timeout), or fix the plugin; the abandoned call runs on in a "
                                     "background thread")
            assert result.structured["error"]["code"] == "action-timeout" and result.structured["stage"] == "timeout"
        t0 = time.perf_counter()
        text = error(toolbox.call("stall", {"image": "img1"}))
        assert time.perf_counter() - t0 < 0.2  # refused at once
        assert text.startswith(f"action 'stall' is quarantined: {MAX_ABANDONED} earlier calls passed their timeout")
        assert images(ok(toolbox.call("zoom", {"image": "img1", "box": NUMBER})))[0].id == "img1.v1"
    finally:
        Stall.release.set()
    assert drained()


# -- graphs ---------------------------------------------------------------------------------------




@pytest.mark.slow
@pytest.mark.parametrize("graph", ["region_then_answer", "free_choice"])
def test_a_graph_tool_answers_as_perceive_ask(registry, graph):
    from perceive.graph import compile_graph
    from perceive.loop_factory import loop_from_config

    cfg = PerceiveConfig(model=ROOT / "models" / "default", graph=graph, device="cpu",
                         mcp=McpConfig(graphs=[graph], allow_local_images=EXAMPLES))
    toolbox = Toolbox(cfg, registry)
    got = ok(toolbox.call(f"graph_{graph}", {"image": str(CARD), "question": QUESTION}))
    want = loop_from_config(cfg, graph=compile_graph(cfg.graph, params=cfg.graph_params())).ask(load_image(CARD),
                                                                                               QUESTION)
    assert want.ok and want.trace.hops  # the shipped model looks before it answers
    assert got.structured["answer"] == want.text and got.content[0].text == want.text
    trace = untimed(json.loads(json.dumps(want.trace.to_dict())))  # as `perceive ask --json` prints it
    assert untimed(got.structured["trace"]) == trace
    assert len(got.content) == 2  # the answer and the hops; the trace only in the structured content
    assert f"graph {graph} on img1: {len(want.trace.hops)} hop(s)" in got.content[1].text
    again = ok(toolbox.call(f"graph_{graph}", {"image": "img1", "question": QUESTION}))  # the model stays loaded
    assert again.structured["answer"] == want.text and again.structured["registered"] is None


@pytest.mark.slow
def test_a_graph_the_model_cannot_run_is_a_tool_error(registry):
    cfg = PerceiveConfig(model=ROOT / "models" / "default", device="cpu",
                         mcp=McpConfig(graphs=["tiles_then_answer"], allow_local_images=EXAMPLES))
    text = error(Toolbox(cfg, registry).call("graph_tiles_then_answer", {"image": str(CARD), "question": QUESTION}))
    assert text.startswith("graph 'tiles_then_answer' node 'tiles' shows 'tiles' views, but the model was trained to "
                           "read only ['region_select'] views") and "\n  -> use a graph with those actions" in text


def test_a_graph_tool_without_a_model_says_what_to_give(registry):
    toolbox = Toolbox(cfg_with(graphs=["region_then_answer"]), registry)
    assert error(toolbox.call("graph_region_then_answer", {"image": str(CARD), "question": QUESTION})) == (
        "the graph tools need a model, and the run config names none\n  -> start perceive mcp with --model DIR, or set "
        "model.path (or remote.url) in its --config")
    assert error(toolbox.call("graph_region_then_answer", {"image": "img1"})).startswith(
        "graph_region_then_answer: `image` and `question` must both be given")


def test_a_listed_graph_that_cannot_be_served_is_a_config_error(registry):
    with pytest.raises(Exception, match=r"mcp\.graphs\[1\] \(no_such_graph\) cannot be served") as info:
        Toolbox(cfg_with(graphs=["free_choice", "no_such_graph"]), registry)
    assert info.value.code.value == "config-invalid"
    with pytest.raises(Exception, match="is served as graph_free_choice, as an earlier one is"):
        Toolbox(cfg_with(graphs=["free_choice", "free_choice"]), registry)


# -- the config section, and a cheap start ---------------------------------------------------------


def test_the_mcp_section_reads_paths_relative_to_its_file(tmp_path, registry):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "mine.yaml").write_text((ROOT / "graphs" / "region_then_answer.yaml").read_text())
    run = tmp_path / "run.yaml"
    run.write_text("mcp:\n  graphs: [free_choice, g/mine.yaml]\n  allow_local_images: imgs\n  max_images: 8\n")
    cfg = load_config(run, registry)
    assert cfg.mcp.graphs == ["free_choice", str(tmp_path / "g" / "mine.yaml")]
    assert cfg.mcp.allow_local_images == tmp_path / "imgs" and cfg.mcp.max_images == 8
    assert (cfg.mcp.host, cfg.mcp.port, cfg.mcp.max_image_mb, cfg.mcp.max_body_mb) == ("127.0.0.1", 8765, 1024, 20)
    assert [t.name for t in Toolbox(cfg, registry).tools()][-2:] == ["graph_free_choice", "graph_region_then_answer"]
    run.write_text("mcp:\n  max_images: 0\n  max_imgs: 3\n")
    with pytest.raises(Exception, match=r"mcp\.max_images \(line 2\): Input should be greater than or equal to 1"):
        load_config(run, registry)


def test_building_a_toolbox_loads_no_model_and_imports_no_torch():
    code = ("import sys; from perceive.config import PerceiveConfig; from perceive.mcp.toolbox import Toolbox; "
            "t = Toolbox(PerceiveConfig()); assert len(t.tools()) > 5; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_device_auto_is_resolved_only_for_an_action_that_names_encoders(registry, monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(1) or False)
    toolbox = Toolbox(cfg_with(), registry)
    ok(toolbox.call("zoom", {"image": str(CARD), "box": NUMBER}))
    zoom = toolbox.actions["zoom"]
    assert asked == [] and zoom.context()["device"] == "cpu"  # a crop has nothing to place on a device

    class Encoding(Action):
        name, encoders = "encoding", ("dino",)

    contexts = [toolbox._context(Encoding()) for _ in range(2)]
    assert asked == [1] and contexts[0]["device"] == "cpu" and contexts[0]["encoders"] is zoom.context()["encoders"]
    pinned = Toolbox(cfg_with().model_copy(update={"device": "cuda:1"}), registry)
    assert pinned.actions["zoom"].context()["device"] == "cuda:1" and asked == [1]


def test_a_missing_model_folder_is_refused_at_start_when_graphs_are_served(registry, tmp_path):
    from perceive.errors import ConfigError

    cfg = PerceiveConfig(model=tmp_path / "nowhere", mcp=McpConfig(graphs=["free_choice"]))
    with pytest.raises(ConfigError, match="model folder not found: .*nowhere") as info:
        Toolbox(cfg, registry)
    assert "mcp.graphs: []" in info.value.hint
    Toolbox(PerceiveConfig(model=tmp_path / "nowhere", mcp=McpConfig(graphs=[])), registry)  # actions only: fine


def test_only_a_graph_tool_on_a_served_model_reaches_beyond_the_machine(registry):
    local = Toolbox(PerceiveConfig(mcp=McpConfig(graphs=["free_choice"])), registry).tools()
    assert not any(t.open_world for t in local)
    served = PerceiveConfig(remote={"url": "http://127.0.0.1:9/v1"}, mcp=McpConfig(graphs=["free_choice"]))
    tools = {t.name: t for t in Toolbox(served, registry).tools()}  # nothing is contacted until a graph call
    assert tools["graph_free_choice"].open_world and not tools["zoom"].open_world
