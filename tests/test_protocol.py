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
