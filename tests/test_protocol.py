"""The streaming parser: calls from spans, errors as values, never an exception."""

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from perceive.actions import ActionContext
from perceive.plugins import load_registry
from perceive.protocol import DictCodec, ParseError, ParseErrorKind, PerceptionCall, StreamParser, parse_tokens
from perceive.vocabulary import REGION_END, REGION_START, Vocabulary

V = Vocabulary(8)
RS, RE = REGION_START, REGION_END
BRANCHES = load_registry().branch_specs()  # the re-encode tokens belong to the branch plugins
DS, DA, DE, _ = BRANCHES["dino"].tokens.all


def parse(registry, tokens):
    return parse_tokens(registry.select(), tokens)


def only(events, cls):
    assert len(events) == 1 and isinstance(events[0], cls), events
    return events[0]


def test_region_span_to_call(registry):
    call = only(parse(registry, ["hi", RS, V.x(1), V.y(5), V.x(5), V.y(7), RE, "bye"]), PerceptionCall)
    assert call.action == "region_select"
    assert call.args.xs == (1, 5) and call.args.ys == (5, 7)
    assert call.tokens[0] == RS and call.tokens[-1] == RE
    box = call.args.box_in(800, 600, "root")
    assert box.as_tuple() == (0, 300, 700, 600)  # the paper's worked example


def test_order_and_repetition_are_ignored(registry):
    a = only(parse(registry, [RS, V.y(7), V.x(5), V.x(5), V.y(5), V.x(1), RE]), PerceptionCall)
    b = only(parse(registry, [RS, V.x(1), V.y(5), V.x(5), V.y(7), RE]), PerceptionCall)
    assert a.args == b.args


def test_several_regions_give_several_calls(registry):
    events = parse(registry, [RS, V.x(0), V.y(0), RE, " and ", RS, V.x(7), V.y(7), RE])
    assert [type(e) for e in events] == [PerceptionCall, PerceptionCall]
    assert [e.args.xs for e in events] == [(0,), (7,)]


def test_reencode_span(registry):
    call = only(parse(registry, [DS, DA, DE]), PerceptionCall)
    assert call.action == "dino"
    # the paper masks the middle token's label, so start/end alone is accepted too
    assert only(parse(registry, [DS, DE]), PerceptionCall).action == "dino"


def kind(events):
    assert len(events) == 1 and isinstance(events[0], ParseError), events
    return events[0].kind


def test_missing_axis(registry):
    assert kind(parse(registry, [RS, V.x(1), V.x(2), RE])) == ParseErrorKind.MISSING_Y
    assert kind(parse(registry, [RS, V.y(1), RE])) == ParseErrorKind.MISSING_X


def test_out_of_range_as_text_pieces(registry):
    # <|x_8|> is not in the vocabulary: a tokenizer splits it into ordinary pieces
    table = {0: RS, 1: RE, 2: V.y(3), 10: "<|", 11: "x", 12: "_8", 13: "|>"}
    parser = StreamParser(registry.select(), DictCodec(table))
    events = parser.feed_many([0, 10, 11, 12, 13, 2, 1])
    assert kind(events) == ParseErrorKind.OUT_OF_RANGE
    assert "<|x_8|>" in events[0].message


def test_out_of_range_token_of_a_bigger_grid(registry):
    assert kind(parse(registry, [RS, "<|x_9|>", V.y(1), RE])) == ParseErrorKind.OUT_OF_RANGE


def test_unclosed(registry):
    events = parse(registry, [RS, V.x(1), V.y(1)])
    assert kind(events) == ParseErrorKind.UNCLOSED
    assert events[0].tokens == (RS, V.x(1), V.y(1))


def test_nested_start_drops_outer_and_keeps_inner(registry):
    events = parse(registry, [RS, V.x(1), RS, V.x(2), V.y(2), RE])
    assert isinstance(events[0], ParseError) and events[0].kind == ParseErrorKind.NESTED_START
    assert isinstance(events[1], PerceptionCall) and events[1].args.xs == (2,)


def test_mixed_families(registry):
    assert kind(parse(registry, [RS, V.x(1), DA, V.y(1), RE])) == ParseErrorKind.MIXED_FAMILIES
    assert kind(parse(registry, [DS, V.x(1), DE])) == ParseErrorKind.MIXED_FAMILIES
    # one mistake, one error; the parser is back in step after the span ends
    events = parse(registry, [DS, V.x(1), DE, RS, V.x(2), V.y(2), RE])
    assert [type(e) for e in events] == [ParseError, PerceptionCall]


def test_unexpected_text_and_stray_end(registry):
    assert kind(parse(registry, [RS, V.x(1), "cat", V.y(1), RE])) == ParseErrorKind.UNEXPECTED_TOKEN
    assert kind(parse(registry, ["a", RE])) == ParseErrorKind.STRAY_END


def test_whitespace_inside_a_span_is_ignored(registry):
    assert isinstance(parse(registry, [RS, V.x(1), " ", V.y(1), RE])[0], PerceptionCall)


def test_errors_serialise(registry):
    err = parse(registry, [RS, V.x(1), RE])[0]
    d = err.to_dict()
    assert d["kind"] == "missing_y" and d["action"] == "region_select" and d["tokens"][0] == RS


def test_codec_failure_is_a_value(registry):
    class Exploding:
        def token(self, i):
            raise RuntimeError("tokenizer broke")

        def text(self, ids):
            return ""

    parser = StreamParser(registry.select(), Exploding())
    ev = parser.feed(3)
    assert isinstance(ev, ParseError) and "tokenizer broke" in ev.message


VOCAB = [RS, RE, DS, DA, DE, *V.x_tokens, *V.y_tokens, "<|", "x_8", "|>", "<|x_9|>", "word", " ", "<|zoom_start|>",
         "<|zoom_end|>", BRANCHES["sam"].tokens.start, BRANCHES["native"].tokens.end]


ACTIONS = load_registry().select()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, len(VOCAB) + 3), max_size=60), st.integers(1, 3000), st.integers(1, 3000))
def test_any_token_sequence(ids, w, h):
    """No exception escapes, and every region call's box lies inside the image."""
    parser = StreamParser(ACTIONS, DictCodec(dict(enumerate(VOCAB))))
    events = parser.feed_many(ids)
    tail = parser.close()
    for ev in events + ([tail] if tail else []):
        assert isinstance(ev, PerceptionCall | ParseError)
        if isinstance(ev, PerceptionCall) and ev.action in ("region_select", "zoom"):
            b = ev.args.box_in(w, h, "root")
            assert 0 <= b.x0 <= b.x1 <= w and 0 <= b.y0 <= b.y1 <= h
            ctx = ActionContext.for_image(Image.new("RGB", (w, h)))
            if not b.is_empty():
                view = ctx.crop_root(b)
                assert view.box.as_tuple() == b.as_tuple()


# every tool-call protocol: any text, fed in any pieces, gives values; every box lies in its image
PIECES = ["<tool_call>", "</tool_call>", "<grounding>", "</grounding>", "<tool", "_call>", "</ground", "ing>", "{", "}",
          "[", "]", ",", ":", " ", "\n", '"name"', '"arguments"', '"image_zoom_in_tool"', '"bbox_2d"', '"img_idx"',
          '"source"', '"original_image"', '"observation_1"', '"observation_7"', '"label"', '"x"', "null", "true",
          "-3", "0", "0.5", "1", "7", "28", "500", "999", "1000", "2500", "1e308", "NaN", "-Infinity", "0.0001",
          "é", "\ufffd", RS, RE, V.x(1), V.y(2)]


PROTOCOL_OF = {"vpt": "vpt", "hermes_json": "hermes_json", "hermes_json_q3": "hermes_json",
               "hermes_json_resized": "hermes_json",
               "hermes_json_report": "hermes_json", "mini_o3_grounding": "mini_o3_grounding",
               "mini_o3_report": "mini_o3_grounding"}
PROTOCOLS = sorted(PROTOCOL_OF)
REGISTRY = load_registry()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROTOCOLS),
       st.lists(st.integers(0, len(PIECES) - 1), max_size=80), st.integers(1, 3000), st.integers(1, 3000),
       st.integers(0, 40), st.integers(0, 40))
def test_any_text_every_protocol(name, ids, w, h, a, b):
    check_protocol_on(name, [PIECES[i] for i in ids], w, h, a, b)


NUMBER = st.one_of(st.integers(-3000, 5000), st.floats(-10, 3000), st.floats(0, 1), st.integers(0, 1000),
                   st.sampled_from([0, 1, 0.5, 1000, 28, 32]))
BBOX = st.one_of(st.lists(NUMBER, min_size=4, max_size=4), st.lists(NUMBER, min_size=4, max_size=4).map(sorted),
                 st.lists(st.one_of(NUMBER, st.floats(allow_nan=True, allow_infinity=True)), max_size=5))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROTOCOLS), BBOX, st.one_of(st.none(), st.integers(-1, 3),
       st.sampled_from(["original_image", "observation_1", "observation_2", "x"])),
       st.integers(1, 3000), st.integers(1, 3000), st.integers(0, 40), st.integers(0, 40))
def test_well_formed_calls_every_protocol(name, bbox, where, w, h, a, b):
    """Calls in each family's own format with any numbers: a call's box is always inside its image."""
    import json

    if len(bbox) == 4 and sorted(bbox) == bbox:  # as x0, x1, y0, y1: a box, not a random order
        bbox = [bbox[0], bbox[2], bbox[1], bbox[3]]
    if name.startswith("mini_o3"):
        body = {"bbox_2d": bbox, **({"source": where} if isinstance(where, str) else {})}
        text = "<grounding>" + json.dumps(body) + "</grounding>"
    else:
        args = {"bbox_2d": bbox, **({"img_idx": where} if isinstance(where, int) else {})}
        text = "<tool_call>\n" + json.dumps({"name": "image_zoom_in_tool", "arguments": args}) + "\n</tool_call>"
    check_protocol_on(name, list(text), w, h, a, b)


def check_protocol_on(name, pieces, w, h, a, b):
    from perceive.geometry import Box, Frame

    options = {"hermes_json_q3": {"coordinates": "relative_1000"}, "hermes_json_report": {"repair": False},
               "hermes_json_resized": {"coordinates": "absolute_resized"},
               "mini_o3_report": {"repair": False}}.get(name, {})
    proto = REGISTRY.protocol(PROTOCOL_OF[name], options)
    table = dict(enumerate(dict.fromkeys(pieces)))
    ids = {p: i for i, p in table.items()}
    import dataclasses

    # each frame with a size the model saw it at (a processor's resize), as the loop gives them
    root = dataclasses.replace(Frame.root(w, h), seen=(max(28, w // 28 * 28), max(28, h // 28 * 28)))
    x0, y0 = min(a, w - 1), min(b, h - 1)
    view = dataclasses.replace(root.child("v1", Box(x0, y0, w, h), (640, 480)), seen=(644, 476))
    views = [root, view]
    reader = proto.reader(ACTIONS, DictCodec(table), lambda: views)
    events = reader.feed_many(ids[p] for p in pieces)
    tail = reader.close()
    for ev in events + ([tail] if tail else []):
        assert isinstance(ev, PerceptionCall | ParseError)
        if isinstance(ev, PerceptionCall) and ev.action in ("region_select", "zoom"):
            frame = {f.id: f for f in views}[ev.target or "root"]
            box = ev.args.box_in(frame.width, frame.height, frame.id)
            assert 0 <= box.x0 < box.x1 <= frame.width and 0 <= box.y0 < box.y1 <= frame.height, (box, frame)
            rb = frame.to_root(box)
            assert 0 <= rb.x0 < rb.x1 <= w and 0 <= rb.y0 < rb.y1 <= h
            ctx = ActionContext(image=Image.new("RGB", frame.size), frame=frame, root=Image.new("RGB", (w, h)))
            assert ctx.crop_root(box).box.as_tuple() == ctx.root_box(box).as_tuple()
