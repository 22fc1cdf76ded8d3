"""Pictures: the trace picture stays readable at any aspect; the graph picture draws every edge,
each with its own label, checked against the graph."""

from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from perceive.geometry import Box, Frame
from perceive.graph.render import render_trace
from perceive.trace import Hop, Trace

QUESTION = ("What number is written on the card that lies somewhere in this very long image, and what "
            "colour is the card?")


def trace_for(w: int, h: int) -> Trace:
    box = Box(w // 4, h // 4, w // 2, h // 2)
    view = Frame.root(w, h).child("v1", box)
    hop = Hop(index=0, action="region_select", tokens=[], args={}, target="root", box=box.to_dict(),
              views=[view.to_dict()])
    return Trace(question=QUESTION, image_size=(w, h), hops=[hop], answer="42")


def last_text_line_height(pic: Image.Image) -> int:
    """Height in pixels of the picture's lowest line of dark text (the answer, 'A: 42')."""
    dark = np.asarray(pic.convert("L")) < 100
    rows = set(np.flatnonzero(dark.any(1)).tolist())
    last = first = max(rows)
    while first - 1 in rows:
        first -= 1
    return last - first + 1


@pytest.mark.parametrize("size", [(4000, 300), (300, 4000), (640, 480)])
def test_trace_picture_text_is_readable_at_any_aspect(size, photo, tmp_path):
    img = photo.resize(size)
    pic = render_trace(img, trace_for(*size), tmp_path / "t.png")
    text_px = last_text_line_height(pic)
    # readable when the whole picture is fitted to a screen: glyphs at least 1% of its longer
    # side (12 px when it is shown 1200 px wide), and 10 px in the file itself
    assert text_px >= 10 and text_px / max(pic.size) >= 0.01, (pic.size, text_px)
    assert max(pic.size) <= 2000  # a 4000 px strip is not blown up to 6400 px
    # the text wraps inside the picture: nothing dark in its right margin
    assert not (np.asarray(pic.convert("L"))[:, -4:] < 100).any()
    assert Image.open(tmp_path / "t.png").size == pic.size


# --- the graph picture -------------------------------------------------------------------------

def synthetic_graphs():
    """Shapes the shipped graphs lack: parallel edges (two cases to one node), a node routing to
    itself, several loops back, a wide fan."""
    from perceive.graph.spec import GraphSpec

    return [GraphSpec.model_validate(d) for d in (
        {"name": "parallel", "start": "g", "budget": 3, "nodes": {
            "g": {"kind": "generate", "next": "r"},
            "r": {"kind": "route", "switch": "call", "default": "done",
                  "cases": {"region_select": "crop", "zoom": "crop", "dino": "enc", "*": "g"}},
            "crop": {"kind": "action", "action": "region_select", "next": "g"},
            "enc": {"kind": "action", "action": "dino", "next": "crop"},
            "done": {"kind": "answer"}}},
        {"name": "self_loop", "start": "t", "budget": 3, "nodes": {
            "t": {"kind": "action", "action": "tiles", "args": {"rows": 1, "cols": 2}, "next": "more"},
            "more": {"kind": "route", "default": "gen", "when": [
                {"if": "hops < 2", "then": "t"}, {"if": "hops < 3", "then": "more"},
                {"if": "hops < 4", "then": "more"}, {"if": "answered == true", "then": "done"}]},
            "gen": {"kind": "generate", "next": "done"},
            "done": {"kind": "answer"}}},
        {"name": "fan", "start": "g", "budget": 3, "nodes": {
            "g": {"kind": "generate", "next": "r"},
            "r": {"kind": "route", "switch": "call", "default": "done",
                  "cases": {"region_select": "a1", "zoom": "a2", "dino": "a3", "sam": "a3"}},
            "a1": {"kind": "action", "action": "region_select", "next": "g"},
            "a2": {"kind": "action", "action": "zoom", "next": "g"},
            "a3": {"kind": "action", "action": "*", "next": "g2"},
            "g2": {"kind": "generate", "next": "r"},
            "done": {"kind": "answer"}}},
    )]


def shipped_graphs():
    from perceive.graph import compile_graph
    from perceive.graph.compiled import GRAPHS_DIR

    return [compile_graph(p.stem).spec for p in sorted(GRAPHS_DIR.glob("*.yaml"))]


def longest_shared_run(path, other, near=1.5, step=1.0):
    """The longest stretch (pixels) of ``path`` that lies within ``near`` px of ``other``: a
    crossing shares a few pixels; edges drawn over each other share their length."""
    from perceive.graph.draw.layout import _sample, path_distance

    run = best = 0
    for q in _sample(path, step):
        run = run + 1 if path_distance(q, other) < near else 0
        best = max(best, run)
    return best * step


def check_layout(spec):
    """Every problem of ``spec``'s picture, checked on its geometry against the graph."""
    from collections import Counter

    from perceive.graph.draw.layout import _inside, _overlap, graph_edges, layout_graph, path_distance, rect_distance

    L = layout_graph(spec)
    problems = []
    if Counter((e.source, e.target, e.label) for e in L.edges) != Counter(graph_edges(spec)):
        problems.append("the drawn edges are not the graph's edges, each once")
    boxes = {n: d.box for n, d in L.nodes.items()}
    problems += [f"nodes {a} and {b} overlap" for a in boxes for b in boxes if a < b and _overlap(boxes[a], boxes[b])]
    for i, e in enumerate(L.edges):
        name = f"{e.source} -> {e.target} ({e.label})"
        pts = e.samples(1.0)
        for end, n in ((pts[0], e.source), (pts[-1], e.target)):  # from its source's border to its target's
            x0, y0, x1, y1 = boxes[n]
            if not _inside(end, boxes[n], 0.6) or _inside(end, (x0 + 1, y0 + 1, x1 - 1, y1 - 1)):
                problems.append(f"{name} does not end on {n}'s border")
        for n, (x0, y0, x1, y1) in boxes.items():
            if any(_inside(q, (x0 + 1, y0 + 1, x1 - 1, y1 - 1)) for q in pts):
                problems.append(f"{name} runs behind node {n}")
        for f in L.edges[i + 1:]:
            if longest_shared_run(e.path, f.path) > 16:
                problems.append(f"{name} is drawn over {f.source} -> {f.target} ({f.label})")
        if not e.text:
            if e.label != "next" or e.label_box is not None:
                problems.append(f"{name}: only `next` edges go unlabelled")
            continue
        if e.text != e.label.replace("*", "any") or e.label_box is None:
            problems.append(f"{name} has no label of its own")
            continue
        b = e.label_box
        centre = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        if rect_distance(b, e.path) > 6:
            problems.append(f"{name}: its label is not on its edge")
        own = path_distance(centre, e.path)
        for f in L.edges:
            if f is not e and path_distance(centre, f.path) <= own:
                problems.append(f"{name}: its label is nearer {f.source} -> {f.target} ({f.label})")
            if f is not e and rect_distance(b, f.path) < 2:
                problems.append(f"{name}: its label covers {f.source} -> {f.target} ({f.label})")
        problems += [f"{name}: its label covers node {n}" for n, r in boxes.items() if _overlap(b, r)]
        problems += [f"{name}: its label covers another label" for f in L.edges[i + 1:]
                     if f.label_box and _overlap(b, f.label_box)]
        if not (0 <= b[0] and b[2] <= L.width and 0 <= b[1] and b[3] <= L.height):
            problems.append(f"{name}: its label is outside the picture")
    return L, problems


ALL_GRAPHS = shipped_graphs() + synthetic_graphs()


def test_every_shipped_graph_is_checked():
    from perceive.graph.compiled import GRAPHS_DIR

    assert {s.name for s in shipped_graphs()} == {p.stem for p in GRAPHS_DIR.glob("*.yaml")}
    assert {"region_then_answer", "free_choice", "iterative_zoom"} <= {s.name for s in ALL_GRAPHS}


@pytest.mark.parametrize("spec", ALL_GRAPHS, ids=lambda s: s.name)
def test_graph_picture_draws_each_edge_once_with_its_own_label(spec, tmp_path):
    from perceive.graph.render import EDGE_COLOR, LABEL_COLOR, render_graph

    layout, problems = check_layout(spec)
    assert problems == [], "\n".join(problems)
    # the picture is that layout: each edge's line is drawn where the layout says, each label
    # is written in its box
    img = render_graph(spec, tmp_path / "g.png")
    assert img.size == (layout.width, layout.height) and (tmp_path / "g.png").exists()
    px = np.asarray(img).astype(int)
    labels = [x.label_box for x in layout.edges if x.label_box]
    for e in layout.edges:  # (a label's white box hides the lines under it)
        pts = [(x, y) for x, y in e.samples(3.0)[2:-4]
               if not any(b[0] - 2 <= x <= b[2] + 2 and b[1] - 2 <= y <= b[3] + 2 for b in labels)]
        drawn = [np.abs(px[round(y) - 1:round(y) + 2, round(x) - 1:round(x) + 2] - EDGE_COLOR).sum(-1).min() < 60
                 for x, y in pts]
        assert sum(drawn) >= 0.95 * len(drawn), f"{e.source} -> {e.target} ({e.label}) is not drawn along its path"
        if e.label_box:
            x0, y0, x1, y1 = (round(v) for v in e.label_box)
            ink = np.abs(px[y0:y1, x0:x1] - LABEL_COLOR).sum(-1) < 60
            assert ink.any(), f"the label of {e.source} -> {e.target} ({e.label}) is not written in its box"


def test_region_then_answer_default_edge_goes_around_the_chain():
    """The reported bug: called -> done was drawn straight down behind crop and answer, and its
    'default' label sat on called -> crop."""
    from perceive.graph import compile_graph
    from perceive.graph.layout import layout_graph, path_distance

    layout = layout_graph(compile_graph("region_then_answer").spec)
    edges = {(e.source, e.target): e for e in layout.edges}
    default, call = edges["called", "done"], edges["called", "crop"]
    assert default.text == "default" and call.text == "call region_select"
    for node in ("crop", "answer"):
        x0, y0, x1, y1 = layout.nodes[node].box
        assert all(not (x0 <= x <= x1 and y0 <= y <= y1) for x, y in default.samples(1.0))
    b = default.label_box
    centre = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    assert path_distance(centre, default.path) < path_distance(centre, call.path)


def chain(n: int, loop: bool = False):
    """A graph of ``n`` nodes one after another (with ``loop``, the last but one routes back to the
    first until a hop count)."""
    from perceive.graph.spec import GraphSpec

    nodes = {f"n{i}": {"kind": "generate", "next": f"n{i + 1}"} for i in range(n - 1)}
    nodes[f"n{n - 1}"] = {"kind": "answer"}
    if loop:
        nodes[f"n{n - 2}"] = {"kind": "route", "default": f"n{n - 1}", "when": [{"if": "hops < 2", "then": "n0"}]}
    return GraphSpec.model_validate({"name": f"chain{n}", "start": "n0", "budget": 3, "nodes": nodes})


@pytest.mark.parametrize("loop", [False, True])
def test_a_long_chain_is_laid_out_without_recursion(loop):
    """The layers and the order within them came from recursive depth-first searches, which ran
    out of Python's recursion limit on a chain of about 1000 nodes."""
    import sys

    from perceive.graph.layout import layout_graph

    spec = chain(1500, loop)
    assert len(spec.nodes) > sys.getrecursionlimit()
    layout = layout_graph(spec)
    tops = [layout.nodes[f"n{i}"].box[1] for i in range(1500)]
    assert all(a < b for a, b in pairwise(tops))  # one node per layer, in chain order
    assert len(layout.edges) == 1499 + loop
    if loop:  # the loop back is routed along a lane beside the chain, and labelled
        back = next(e for e in layout.edges if e.target == "n0")
        assert back.label_box is not None
        assert min(x for x, _ in back.path) < layout.nodes["n0"].box[0] or \
            max(x for x, _ in back.path) > layout.nodes["n0"].box[2]


def test_rect_distance_measures_the_sampled_path():
    """The placing of labels measures each edge from many candidate boxes on points sampled once;
    the distance is the same as from the path itself."""
    from perceive.graph.draw.layout import _sample, rect_distance

    path = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)]
    pts = np.asarray(_sample(path, 1.0))
    for box, want in (((2, 2, 8, 8), 2.0), ((4, -1, 6, 1), 0.0), ((13, 13, 20, 20), 3 * 2 ** 0.5),
                      ((-5, 3, -2, 6), (4 + 9) ** 0.5)):
        assert rect_distance(box, path) == pytest.approx(want)
        assert rect_distance(box, path, samples=pts) == rect_distance(box, path)
