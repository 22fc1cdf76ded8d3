"""Stock checkpoints: tiny random-weight Qwen2.5-VL and Qwen3-VL folders saved as a user has
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


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    return save_tiny_stock_model(tmp_path_factory.mktemp("stock") / "qwen3", "qwen3_vl")


@pytest.fixture(scope="module")
def qwen3(qwen3_folder):
    return perceive.load_model(qwen3_folder)


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


def test_qwen3_vl_moe_is_refused_saying_why(tmp_path, qwen3_folder):
    folder = tmp_path / "moe"
    folder.mkdir()
    raw = json.loads((qwen3_folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "model_type": "qwen3_vl_moe"}))
    with pytest.raises(ModelLoadError) as e:
        perceive.load_model(folder)
    msg = e.value.message
    assert "Qwen3-VL-MoE" in msg and "not supported yet" in msg and "deepstack" in msg
    assert "deepstack_visual_indexes = [0]" in msg and "answer wrongly" in msg


# -- the loop: each protocol on the stock Qwen2.5-VL ------------------------------------------------

# (protocol, options, script, the crops in root pixels by the family's convention)
# 64x48 image, absolute pixels: [8, 4, 48, 36] is the crop itself.
# mini_o3: [0.125, 0.125, 0.75, 0.875] of 64x48 = (8, 6, 48, 42).
CASES = {
    "hermes_json": ("auto", {}, hermes([8, 4, 48, 36]), [(8, 4, 48, 36)]),
    # the 64x48 image is seen at 56x56 (4x4 patches of 14): [7, 7, 49, 49] of that is (8, 6, 56, 42)
    "hermes_json_resized": ("hermes_json", {"coordinates": "absolute_resized"}, hermes([7, 7, 49, 49]),
                            [(8, 6, 56, 42)]),
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
    # (31 px: absolute coordinates refuse a short side of 30 px or less, as DeepEyes' tool does)
    ans = make_loop(qwen25, {0: hermes([8, 4, 48, 36]) + hermes([0, 0, 31, 31], 1)}, protocol="auto",
                    max_new_tokens=400).ask(image(), "What is there?")
    assert ans.ok, ans.error
    first, second = ans.trace.hops
    assert box_of(first) == (8, 4, 48, 36)
    # region_select shows the 40x32 crop as it is: view 1's pixel (x, y) is root (8 + x, 4 + y)
    view = first.views[0]
    assert (view["width"], view["height"]) == (40, 32)
    assert (view["to_root"]["ox"], view["to_root"]["oy"], view["to_root"]["sx"], view["to_root"]["sy"]) == \
        ("8", "4", "1", "1")
    assert second.target == "v1" and box_of(second) == (8, 4, 39, 35)


def test_a_batch_on_different_hop_paths_equals_one_at_a_time(qwen25):
    scripts = {0: hermes([8, 4, 48, 36]),  # one call
               2: "I see. " + hermes([0, 0, 64, 48]) + hermes([10, 10, 41, 41], 1),  # two, the second on the view
               3: hermes([30, 30, 10, 10])}  # a degenerate box: a parse error, then it goes on
    items = [(image(), "What is there?"), (image("red"), "Which colour?"), (image("green"), "Where?"),
             (image("white"), "And?")]
    batch = make_loop(qwen25, scripts, protocol="auto", max_new_tokens=400).ask_batch(items)
    hops = [len(a.trace.hops) for a in batch]
    assert hops == [1, 0, 2, 0], hops
    assert box_of(batch[2].trace.hops[1]) == (10, 10, 41, 41)  # view 1 is the whole 64x48 image at 1x
    assert [e["kind"] for e in batch[3].trace.events if e["type"] == "parse_error"] == ["bad_box"]
    for i, (img, q) in enumerate(items):
        single = make_loop(qwen25, {0: scripts[i]} if i in scripts else {}, protocol="auto",
                           max_new_tokens=400).ask(img, q)
        assert batch[i].token_ids == single.token_ids, i
        assert [box_of(h) for h in batch[i].trace.hops] == [box_of(h) for h in single.trace.hops]
        for a, b in zip(batch[i].logits, single.logits, strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


# -- Qwen3-VL: deepstack features and positions through the loop -----------------------------------

def test_a_stock_qwen3_vl_folder_loads_with_its_deepstack(qwen3_folder, qwen3):
    assert json.loads((qwen3_folder / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert type(qwen3.base).__name__ == "Qwen3VLForConditionalGeneration" and qwen3.config.base == "qwen3_vl"
    assert qwen3.deepstack_layers == 1 and qwen3.tokenizer.chat_template == QWEN3_VL_TEMPLATE
    assert qwen3.image_processor.patch_size == 16 and qwen3.spatial_merge_size == 2
    loop = make_loop(qwen3, {}, protocol="auto")
    assert loop.protocol.name == "hermes_json"
    assert loop.protocol.options.coordinates == "relative_1000" and loop.protocol.options.response == "qwen3"


def _qwen3_ids(model, grids, text=("ab", "cde", "f")):
    """ids with one image run per grid (vision start, pads, vision end) between texts."""
    tok, sp, merge = model.tokenizer, model.config.special, model.spatial_merge_size
    ids = tok.encode(text[0])
    for k, g in enumerate(grids):
        ids += [sp.vision_start] + [sp.image_pad] * (int(torch.tensor(g).prod()) // merge**2) + [sp.vision_end]
        ids += tok.encode(text[min(k + 1, len(text) - 1)])
    return ids


def test_qwen3_vl_positions_equal_transformers_get_rope_index(qwen3):
    from perceive.model.positions import sequence_positions

    grids = [[1, 4, 6], [1, 8, 4], [1, 2, 2]]
    ids = _qwen3_ids(qwen3, grids)
    pad = qwen3.config.special.image_pad
    t = torch.tensor([ids])
    ref, _ = qwen3.base.model.get_rope_index(t, (t == pad).int(), image_grid_thw=torch.tensor(grids))
    mine, _ = sequence_positions(ids, pad, grids, qwen3.spatial_merge_size)
    assert torch.equal(mine, ref[:, 0])
    # segment by segment (as the engine computes them) gives the same positions
    cut = max(i for i, x in enumerate(ids) if x == qwen3.config.special.vision_end and i < len(ids) // 2) + 1
    n_first = sum(1 for k, x in enumerate(ids[:cut]) if x == pad and (k == 0 or ids[k - 1] != pad))
    first, nxt = sequence_positions(ids[:cut], pad, grids[:n_first], 2)
    rest, _ = sequence_positions(ids[cut:], pad, grids[n_first:], 2, nxt)
    assert torch.equal(torch.cat([first, rest], dim=1), ref[:, 0])


def _pixels(model, sizes):
    out = []
    for k, (w, h) in enumerate(sizes):
        g = torch.Generator().manual_seed(k)
        arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        inp = model.image_processor(images=[Image.fromarray(arr)], return_tensors="pt")
        out.append((inp["pixel_values"], inp["image_grid_thw"][0]))
    return out


@torch.no_grad()
def _reference_logits(model, ids, images):
    """transformers' own forward over the whole sequence (its vision call, deepstack and positions)."""
    t = torch.tensor([ids])
    if not images:
        return model.base(input_ids=t).logits[0, -1].float()
    pv = torch.cat([p for p, _ in images])
    grid = torch.stack([g for _, g in images])
    model.base.model.rope_deltas = None
    out = model.base(input_ids=t, pixel_values=pv, image_grid_thw=grid,
                     mm_token_type_ids=(t == model.config.special.image_pad).int())
    model.base.model.rope_deltas = None
    return out.logits[0, -1].float()


def test_qwen3_vl_engine_step_equals_transformers_forward(qwen3):
    """A batch of prompts of different lengths and images (right-padded into one step: each row's
    image tokens at their own columns) gives, row by row, transformers' logits of that sequence;
    so does the next step on the cache."""
    from perceive.loop.engine import Chunk, ChunkKind, NativeEngine

    sizes = [[(64, 48)], [(48, 96), (32, 32)], [], [(96, 64)]]
    engine = NativeEngine(qwen3)
    rows = []
    for key, sz in enumerate(sizes):
        images = _pixels(qwen3, sz)
        ids = _qwen3_ids(qwen3, [g.tolist() for _, g in images], text=("x" * (3 * key + 1), "yz", "w"))
        rows.append((ids, images))
        engine.open(key)
        engine.feed(key, Chunk(ids, ChunkKind.PROMPT, images=images))
    out = engine.step()
    assert len({len(ids) for ids, _ in rows}) == len(rows)  # really right-padded
    for key, (ids, images) in enumerate(rows):
        torch.testing.assert_close(out[key].logits, _reference_logits(qwen3, ids, images), atol=2e-5, rtol=1e-4)
    nxt = qwen3.tokenizer.encode("q")
    for key in range(len(rows)):
        engine.feed(key, Chunk(nxt, ChunkKind.DECODE))
    out = engine.step()
    for key, (ids, images) in enumerate(rows):
        torch.testing.assert_close(out[key].logits, _reference_logits(qwen3, ids + nxt, images),
                                   atol=2e-5, rtol=1e-4)


def test_qwen3_vl_deepstack_features_reach_the_model(qwen3, monkeypatch):
    from perceive.loop.engine import Chunk, ChunkKind, NativeEngine, ReprefillEngine

    images = _pixels(qwen3, [(64, 48)])
    ids = _qwen3_ids(qwen3, [images[0][1].tolist()])

    def logits(cls):
        e = cls(qwen3)
        e.open(0)
        e.feed(0, Chunk(ids, ChunkKind.PROMPT, images=images))
        return e.step()[0].logits

    kept = {cls: logits(cls) for cls in (NativeEngine, ReprefillEngine)}
    torch.testing.assert_close(kept[NativeEngine], kept[ReprefillEngine], atol=2e-5, rtol=1e-4)
    real = qwen3.image_features

    def zeroed(pv, grid):
        e, deep = real(pv, grid)
        return e, [torch.zeros_like(f) for f in deep]

    monkeypatch.setattr(qwen3, "image_features", zeroed)
    for cls in (NativeEngine, ReprefillEngine):
        assert (logits(cls) - kept[cls]).abs().max() > 1e-3, cls.__name__


# 64x48 image, relative 0-1000 of the image it names: [125, 125, 750, 875] of the root = (8, 6, 48, 42)
Q3_SCRIPT = hermes([125, 125, 750, 875], 0)


def test_qwen3_vl_online_equals_reprefill(qwen3):
    runs = []
    for reprefill in (False, True):
        loop = make_loop(qwen3, {0: Q3_SCRIPT}, protocol="auto", reprefill=reprefill,
                         max_new_tokens=len(Q3_SCRIPT) + 12)
        runs.append(loop.ask(image(), "What is there?"))
    online, ref = runs
    assert online.ok and ref.ok, (online.error, ref.error)
    assert not [e for e in online.trace.events if e["type"] == "parse_error"]
    assert [box_of(h) for h in online.trace.hops] == [(8, 6, 48, 42)]
    assert online.token_ids == ref.token_ids
    for a, b in zip(online.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_qwen3_vl_a_call_on_a_view_maps_its_0_1000_through_its_frame(qwen3):
    ans = make_loop(qwen3, {0: Q3_SCRIPT + hermes([0, 0, 500, 500], 1)}, protocol="auto",
                    max_new_tokens=400).ask(image(), "What is there?")
    assert ans.ok, ans.error
    first, second = ans.trace.hops
    assert box_of(first) == (8, 6, 48, 42)
    view = first.views[0]  # the 40x36 crop shown as it is: view pixel (x, y) is root (8 + x, 6 + y)
    assert (view["width"], view["height"]) == (40, 36)
    assert (view["to_root"]["ox"], view["to_root"]["oy"], view["to_root"]["sx"], view["to_root"]["sy"]) == \
        ("8", "6", "1", "1")
    # [0, 0, 500, 500] of view 1 = (0, 0, 20, 18) of its 40x36 pixels = root (8, 6, 28, 24)
    assert second.target == "v1" and box_of(second) == (8, 6, 28, 24)


def test_qwen3_vl_a_batch_on_different_hop_paths_equals_one_at_a_time(qwen3):
    scripts = {0: Q3_SCRIPT,
               2: "I see. " + hermes([0, 0, 1000, 1000], 0) + hermes([250, 250, 750, 750], 1),
               3: hermes([600, 600, 100, 100], 0)}  # a degenerate box: a parse error, then it goes on
    items = [(image(), "What is there?"), (image("red"), "Which colour?"), (image("green"), "Where?"),
             (image("white"), "And?")]
    batch = make_loop(qwen3, scripts, protocol="auto", max_new_tokens=400).ask_batch(items)
    hops = [len(a.trace.hops) for a in batch]
    assert hops == [1, 0, 2, 0], hops
    assert box_of(batch[2].trace.hops[1]) == (16, 12, 48, 36)  # view 1 is the whole 64x48 image at 1x
    assert [e["kind"] for e in batch[3].trace.events if e["type"] == "parse_error"] == ["bad_box"]
    for i, (img, q) in enumerate(items):
        single = make_loop(qwen3, {0: scripts[i]} if i in scripts else {}, protocol="auto",
                           max_new_tokens=400).ask(img, q)
        assert batch[i].token_ids == single.token_ids, i
        assert [box_of(h) for h in batch[i].trace.hops] == [box_of(h) for h in single.trace.hops]
        for a, b in zip(batch[i].logits, single.logits, strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_qwen3_vl_training_forward_carries_the_deepstack_features(qwen3):
    """VPTModel.forward (the collator's positions) equals transformers' forward on a Qwen3-VL."""
    from perceive.model.positions import sequence_positions

    images = _pixels(qwen3, [(64, 48), (48, 96)])
    ids = _qwen3_ids(qwen3, [g.tolist() for _, g in images])
    pos, _ = sequence_positions(ids, qwen3.config.special.image_pad, [g.tolist() for _, g in images], 2)
    with torch.no_grad():
        out = qwen3(torch.tensor([ids]), position_ids=pos.unsqueeze(1),
                    pixel_values=torch.cat([p for p, _ in images]), image_grid_thw=torch.stack([g for _, g in images]))
    torch.testing.assert_close(out.logits[0, -1], _reference_logits(qwen3, ids, images), atol=2e-5, rtol=1e-4)


def test_a_saved_qwen3_vl_loads_back_in_perceives_format(qwen3, tmp_path):
    from perceive.model.checkpoint import save_model

    back = perceive.load_model(save_model(qwen3, tmp_path / "saved"))
    assert back.config.base == "qwen3_vl" and type(back.base).__name__ == "Qwen3VLForConditionalGeneration"
    assert back.deepstack_layers == 1
