"""Pictures: what a run did (the trace over the image), and the graph itself."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from perceive.geometry import Box
from perceive.graph.spec import GraphSpec
from perceive.images import as_rgb
from perceive.trace import Trace

COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
          (240, 50, 230), (210, 245, 60)]


def _font(size: int):
    return ImageFont.load_default(size=size)


def _wrap_px(text: str, font, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (a word too long for a line is
    cut into pieces that fit)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fits = lambda t: probe.textlength(t, font=font) <= width  # noqa: E731
    words = []
    for w in text.split():
        while not fits(w) and len(w) > 1:
            k = max(1, next((k for k in range(len(w) - 1, 0, -1) if fits(w[:k])), 1))
            words.append(w[:k])
            w = w[k:]
        words.append(w)
    lines, cur = [], ""
    for w in words:
        if cur and not fits(f"{cur} {w}"):
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


def render_trace(image: Image.Image, trace: Trace, out: str | Path | None = None, height: int = 480) -> Image.Image:
    """The original image with each hop's box numbered, the hops' views in a strip beside it,
    labelled with their action, and the question and answer below. Returns the picture (and
    writes it to ``out`` when given).

    The image's shorter side is shown ``height`` pixels long, its longer side at most twice that
    (a 4000x300 strip is shown 960x72, not 6400x480), and text and strip are sized to the whole
    picture, so they stay readable when the picture is shown fitted to a screen."""
    root = as_rgb(image)
    scale = min(height / min(root.size), 2 * height / max(root.size))
    shown = root.resize((max(1, round(root.width * scale)), max(1, round(root.height * scale))),
                        Image.Resampling.BICUBIC)
    thumbs = []
    for hop in trace.hops:
        views = hop.views or ([hop.features[0]["source"]] if hop.features else [])
        for v in views[:4]:
            box = Box.from_dict(hop.box) if not hop.views else _frame_box(v)
            crop = root.crop(tuple(int(round(x)) for x in box.as_tuple()))
            label = f"{hop.index + 1}: {hop.action}" + (" (features)" if hop.features else "")
            if hop.error:
                label += " - failed"
            thumbs.append((hop.index, crop, label))
    cols = 2 if len(thumbs) > 3 else 1
    # one unit of text and strip sizes per 800 px of the figure's longer side (never below 1)
    fig_w = shown.width + (166 * cols if thumbs else 0)
    fig_h = max(shown.height, (len(thumbs) + cols - 1) // cols * 180)
    k = max(1.0, max(fig_w, fig_h) / 800)
    px = lambda v: max(1, round(v * k))  # noqa: E731
    thumb, gap, label_h, pad = px(150), px(16), px(30), px(8)
    f_text, f_label, f_tag = _font(px(15)), _font(px(13)), _font(px(16))
    strip_w = (thumb + gap) * cols if thumbs else 0
    cells = []
    for idx, crop, label in thumbs:  # fit the strip cell, upscaling small crops (nearest: show pixels)
        s = thumb / max(crop.size)
        cells.append((idx, crop.resize((max(1, round(crop.width * s)), max(1, round(crop.height * s))),
                                       Image.Resampling.NEAREST if s > 1 else Image.Resampling.BICUBIC), label))
    row_h = [max(t.height for _, t, _ in cells[r:r + cols]) + label_h for r in range(0, len(cells), cols)]
    W = max(shown.width + strip_w + 3 * pad, px(640))
    text = [f"Q: {trace.question}", f"A: {trace.answer or '(no answer)'}"]
    events = [e for e in trace.events if e.get("type") in ("parse_error", "budget_exhausted", "graph_error")]
    if trace.error:
        text.append(f"error: {trace.error.get('message')}")
    if events:
        text.append("events: " + "; ".join(e.get("kind") or e["type"] for e in events))
    text_lines = [line for t in text for line in _wrap_px(t, f_text, W - 2 * pad)]
    line_h = px(20)
    text_h = line_h * len(text_lines) + 2 * pad
    H = max(shown.height, sum(row_h)) + text_h + 2 * pad
    canvas = Image.new("RGB", (W, H), "white")
    canvas.paste(shown, (pad, pad))
    draw = ImageDraw.Draw(canvas)
    for hop in trace.hops:
        if not hop.box:
            continue
        color = COLORS[hop.index % len(COLORS)]
        b = Box.from_dict(hop.box)
        x0, y0, x1, y1 = (pad + v * scale for v in b.as_tuple())
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=px(3))
        tag = str(hop.index + 1)
        tw = draw.textlength(tag, font=f_tag)
        draw.rectangle([x0, y0, x0 + tw + px(8), y0 + px(20)], fill=color)
        draw.text((x0 + px(4), y0 + px(1)), tag, fill="white", font=f_tag)
    for n, (idx, t, label) in enumerate(cells):
        c, r = n % cols, n // cols
        x = shown.width + 2 * pad + c * (thumb + gap)
        y = pad + sum(row_h[:r])
        canvas.paste(t, (x, y))
        draw.rectangle([x - 1, y - 1, x + t.width, y + t.height], outline=COLORS[idx % len(COLORS)], width=px(2))
        draw.text((x, y + t.height + px(4)), label, fill="black", font=f_label)
    y = H - text_h
    for line in text_lines:
        draw.text((pad, y), line, fill="black", font=f_text)
        y += line_h
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out)
    return canvas


def _frame_box(frame: dict) -> Box:
    from perceive.geometry import Frame

    return Frame.from_dict(frame).root_box()


SHAPES = {"generate": ("([", "])"), "action": ("[", "]"), "route": ("{", "}"), "answer": ("((", "))")}


def to_mermaid(spec: GraphSpec) -> str:
    """Mermaid flowchart text of a graph."""
    lines = ["flowchart TD"]
    for name, n in spec.nodes.items():
        a, b = SHAPES[n.kind]
        detail = {"action": f"{n.action}{' (forced)' if n.forced else ''}", "route": "on call" if n.switch else "when",
                  "generate": "generate", "answer": "answer"}[n.kind]
        lines.append(f'    {name}{a}"{name}<br/>{detail}"{b}')
    for name, n in spec.nodes.items():
        for label, target in n.successors():
            lines.append(f"    {name} -->|{label.replace('*', 'any')}| {target}" if label != "next"
                         else f"    {name} --> {target}")
    if spec.budget is not None:
        lines.append(f"    %% hop budget: {spec.budget}")
    return "\n".join(lines) + "\n"


def _layers(g, start: str) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Longest-path layers over the graph minus its back edges (found by DFS from the start)."""
    import networkx as nx

    back, state = set(), {}

    def dfs(u):
        state[u] = 1
        for v in g.successors(u):
            if state.get(v) == 1:
                back.add((u, v))
            elif v not in state:
                dfs(v)
        state[u] = 2

    if start in g:
        dfs(start)
    for n in g.nodes:
        if n not in state:
            dfs(n)
    dag = nx.DiGraph([e for e in g.edges if e not in back])
    dag.add_nodes_from(g.nodes)
    depth = {n: 0 for n in g.nodes}
    for n in nx.topological_sort(dag):
        for v in dag.successors(n):
            depth[v] = max(depth[v], depth[n] + 1)
    return depth, back


Point = tuple[float, float]
Rect = tuple[float, float, float, float]


@dataclass
class DrawnNode:
    name: str
    kind: str
    box: Rect  # x0, y0, x1, y1


@dataclass
class DrawnEdge:
    """One edge as drawn: ``path`` is the polyline of the line, from the source's border to the
    arrow tip on the target's border; ``label_box`` the rectangle its label is written in (None
    for an unlabelled ``next`` edge), placed against the edge itself."""

    source: str
    target: str
    label: str  # as in the spec: next, call NAME, call *, if ..., default
    text: str  # as written on the picture ('' for next)
    path: list[Point]
    label_box: Rect | None = None

    def samples(self, step: float = 2.0) -> list[Point]:
        return _sample(self.path, step)


@dataclass
class GraphLayout:
    """Where everything of a graph picture is: :func:`render_graph` draws exactly this."""

    width: int
    height: int
    nodes: dict[str, DrawnNode]
    edges: list[DrawnEdge]
    budget_text: str = ""
    params: dict = field(default_factory=dict)


def graph_edges(spec: GraphSpec) -> list[tuple[str, str, str]]:
    """Every edge of ``spec`` as (source, target, label), parallel edges included (a route with
    two cases to the same node has two edges)."""
    return [(name, target, label) for name, n in spec.nodes.items() for label, target in n.successors()
            if target in spec.nodes]


def _sample(path: list[Point], step: float = 2.0) -> list[Point]:
    out = [path[0]]
    for (x0, y0), (x1, y1) in pairwise(path):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        out += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return out


def _point_at(path: list[Point], t: float) -> Point:
    """The point ``t`` (0..1) of the way along ``path``."""
    lengths = [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in pairwise(path)]
    goal = t * sum(lengths)
    for (a, b), d in zip(pairwise(path), lengths, strict=True):
        if goal <= d and d > 0:
            return a[0] + (b[0] - a[0]) * goal / d, a[1] + (b[1] - a[1]) * goal / d
        goal -= d
    return path[-1]


def point_segment_distance(p: Point, a: Point, b: Point) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    d2 = dx * dx + dy * dy
    t = 0.0 if d2 == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / d2))
    return math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy)


def path_distance(p: Point, path: list[Point]) -> float:
    return min(point_segment_distance(p, a, b) for a, b in pairwise(path))


def rect_distance(r: Rect, path: list[Point]) -> float:
    """Distance from rectangle ``r`` to ``path`` (0 where the path enters it)."""
    if any(_inside(q, r) for q in _sample(path, 1.0)):
        return 0.0
    corners = [(r[0], r[1]), (r[2], r[1]), (r[2], r[3]), (r[0], r[3])]
    edges = list(pairwise(corners + corners[:1]))
    return min(min(point_segment_distance(q, a, b) for a, b in edges) for q in _sample(path, 1.0))


def _inside(p: Point, r: Rect, margin: float = 0.0) -> bool:
    return r[0] - margin <= p[0] <= r[2] + margin and r[1] - margin <= p[1] <= r[3] + margin


def _overlap(a: Rect, b: Rect, margin: float = 0.0) -> bool:
    return a[0] - margin < b[2] and b[0] - margin < a[2] and a[1] - margin < b[3] and b[1] - margin < a[3]


def _rounded(points: list[Point], radius: float = 8.0) -> list[Point]:
    """An orthogonal polyline with its corners rounded (quadratic arcs of at most ``radius``)."""
    out = [points[0]]
    for a, b, c in zip(points, points[1:], points[2:], strict=False):
        d1, d2 = math.hypot(b[0] - a[0], b[1] - a[1]), math.hypot(c[0] - b[0], c[1] - b[1])
        r = min(radius, d1 / 2, d2 / 2)
        if r < 1:
            out.append(b)
            continue
        p = (b[0] - (b[0] - a[0]) * r / d1, b[1] - (b[1] - a[1]) * r / d1)
        q = (b[0] + (c[0] - b[0]) * r / d2, b[1] + (c[1] - b[1]) * r / d2)
        for i in range(7):
            t = i / 6
            out.append(((1 - t) ** 2 * p[0] + 2 * t * (1 - t) * b[0] + t * t * q[0],
                        (1 - t) ** 2 * p[1] + 2 * t * (1 - t) * b[1] + t * t * q[1]))
    out.append(points[-1])
    return out


def _curve(a: Point, b: Point, bulge: float = 0.0, n: int = 24) -> list[Point]:
    """A cubic from ``a`` (leaving downwards) to ``b`` (arriving downwards), its middle moved
    ``bulge`` pixels sideways (parallel edges fan out, each on an arc of its own)."""
    dy = (b[1] - a[1]) / 2
    c1, c2 = (a[0] + bulge / 0.75, a[1] + dy), (b[0] + bulge / 0.75, b[1] - dy)
    return [((1 - t) ** 3 * a[0] + 3 * t * (1 - t) ** 2 * c1[0] + 3 * t * t * (1 - t) * c2[0] + t ** 3 * b[0],
             (1 - t) ** 3 * a[1] + 3 * t * (1 - t) ** 2 * c1[1] + 3 * t * t * (1 - t) * c2[1] + t ** 3 * b[1])
            for t in (i / n for i in range(n + 1))]


def _order(spec: GraphSpec, edges: list[tuple[str, str, str]]) -> dict[str, int]:
    """Discovery order from the start (depth first, following each node's edges in order)."""
    seen: dict[str, int] = {}
    succ: dict[str, list[str]] = {}
    for u, v, _ in edges:
        succ.setdefault(u, []).append(v)

    def visit(u):
        seen[u] = len(seen)
        for v in succ.get(u, []):
            if v not in seen:
                visit(v)

    if spec.start in spec.nodes:
        visit(spec.start)
    for n in spec.nodes:
        if n not in seen:
            visit(n)
    return seen


def layout_graph(spec: GraphSpec) -> GraphLayout:
    """Place the nodes in layers (longest distance from the start, loops ignored) and route every
    edge, parallel ones included: an edge to the next layer is a curve between its own ports; a
    longer edge, or one back up (a loop), goes down into the gap under its source, along a lane of
    its own beside the nodes, and into the gap above its target (an edge from a node to itself
    too). Each label is written against its own edge, where no other edge, label or node is."""
    for grow in range(8):
        layout = _layout(spec, grow)
        if layout is not None:
            return layout
    return _layout(spec, 8, force=True)


def _layout(spec: GraphSpec, grow: int, force: bool = False) -> GraphLayout | None:
    import networkx as nx

    edges = graph_edges(spec)
    order = _order(spec, edges)
    g = nx.DiGraph()
    g.add_nodes_from(spec.nodes)
    g.add_edges_from((u, v) for u, v, _ in edges)
    depth, back = _layers(g, spec.start)
    rows: dict[int, list[str]] = {}
    for n in sorted(spec.nodes, key=lambda n: (depth[n], order[n])):
        rows.setdefault(depth[n], []).append(n)
    nrows = max(rows) + 1 if rows else 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f_name, f_sub, f_label = _font(14), _font(12), _font(12)
    texts = [e[2].replace("*", "any") if e[2] != "next" else "" for e in edges]
    ports = max([len([e for e in edges if e[end] == n]) for n in spec.nodes for end in (0, 1)] + [0])
    bw = max([180, 36 * (ports + 1)] + [int(probe.textlength(n, font=f_name)) + 24 for n in spec.nodes]
             + [int(probe.textlength(_subtitle(spec.nodes[n]), font=f_sub)) + 24 for n in spec.nodes])
    bh, gx, track, lane_gap, margin = 48, 40 + 10 * grow, 14, 16 + 4 * grow, 40 + 10 * grow
    # per edge: "short" (to the next layer) or "lane" (longer, back up, or to itself)
    kinds = ["short" if depth[v] == depth[u] + 1 and (u, v) not in back else "lane" for u, v, _ in edges]

    # x: rows centred; lanes beside the nodes, on the side nearer the edge's ends, longer spans further out
    widest = max((len(names) * bw + (len(names) - 1) * gx for names in rows.values()), default=bw)
    centre = {n: -(len(names) * bw + (len(names) - 1) * gx) / 2 + k * (bw + gx) + bw / 2
              for names in rows.values() for k, n in enumerate(names)}
    lane_edges = [i for i, k in enumerate(kinds) if k == "lane"]
    side = {i: "left" if centre[edges[i][0]] + centre[edges[i][1]] < 0 else "right" for i in lane_edges}
    span = {i: (abs(depth[edges[i][1]] - depth[edges[i][0]]), i) for i in lane_edges}
    lanes_l = sorted((i for i in lane_edges if side[i] == "left"), key=span.get)
    lanes_r = sorted((i for i in lane_edges if side[i] == "right"), key=span.get)
    left_w = margin + lane_gap * len(lanes_l) + 20 if lanes_l else 20
    right_w = margin + lane_gap * len(lanes_r) + 20 if lanes_r else 20
    width = int(left_w + widest + right_w)
    ox = left_w + widest / 2
    node_x = {n: ox + centre[n] - bw / 2 for n in spec.nodes}
    lane_x = {i: left_w - margin - lane_gap * k for k, i in enumerate(lanes_l)}
    lane_x |= {i: left_w + widest + margin + lane_gap * k for k, i in enumerate(lanes_r)}

    # ports: outgoing on the bottom, incoming on the top, each edge its own, ordered by where the
    # edge's other end lies (so parallel edges do not cross)
    def spread(n, k, count):
        return node_x[n] + bw * (k + 1) / (count + 1)

    out_x, in_x = {}, {}
    for n in spec.nodes:
        outs = sorted((i for i, e in enumerate(edges) if e[0] == n),
                      key=lambda i: (lane_x[i] if kinds[i] == "lane" else ox + centre[edges[i][1]], i))
        out_x |= {i: spread(n, k, len(outs)) for k, i in enumerate(outs)}
    for n in spec.nodes:
        ins = sorted((i for i, e in enumerate(edges) if e[1] == n),
                     key=lambda i: (lane_x[i] if kinds[i] == "lane" else out_x[i], i))
        in_x |= {i: spread(n, k, len(ins)) for k, i in enumerate(ins)}

    # y: gap r lies under row r (gap -1 above row 0). A lane edge leaves through the gap under
    # its source and arrives through the gap above its target, each on a track of its own; a
    # gap is deep enough for its tracks, its labels, and edges that cross it steeply
    exits = {r: [i for i in lane_edges if depth[edges[i][0]] == r] for r in range(-1, nrows)}
    entries = {r: [i for i in lane_edges if depth[edges[i][1]] - 1 == r] for r in range(-1, nrows)}
    gap_h = {}
    for r in range(-1, nrows):
        shorts = [i for i, k in enumerate(kinds) if k == "short" and depth[edges[i][0]] == r]
        base = (16 if r in (-1, nrows - 1) else 56) + 10 * grow + track * (len(exits[r]) + len(entries[r]))
        base += 12 if any(texts[i] for i in shorts) else 0
        steep = max((0.4 * abs(out_x[i] - in_x[i]) for i in shorts), default=0)
        gap_h[r] = max(base, min(steep, 240))
    row_y, y = {}, gap_h[-1]
    for r in range(nrows):
        row_y[r] = y
        y += bh + gap_h[r]
    height = y + 24
    nodes = {n: DrawnNode(n, spec.nodes[n].kind, (node_x[n], row_y[depth[n]], node_x[n] + bw, row_y[depth[n]] + bh))
             for n in spec.nodes}
    # tracks: leaving edges on the upper ones (the port furthest from its lane lowest), arriving
    # edges on the lower ones
    exit_y, entry_y = {}, {}
    for r in range(-1, nrows):
        top = (row_y[r] + bh) if r >= 0 else 0
        bottom = row_y[r + 1] if r + 1 < nrows else height - 24
        ex = sorted(exits[r], key=lambda i: -abs(lane_x[i] - out_x[i]))
        exit_y |= {i: top + 12 + track * (len(ex) - 1 - k) + (4 if r == -1 else 0) for k, i in enumerate(ex)}
        en = sorted(entries[r], key=lambda i: abs(lane_x[i] - in_x[i]))
        entry_y |= {i: bottom - 12 - track * k for k, i in enumerate(en)}
    # parallel edges to the next layer fan out, their middles a label's width apart
    bulge = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, k in enumerate(kinds):
        if k == "short":
            groups.setdefault(edges[i][:2], []).append(i)
    for group in groups.values():
        group.sort(key=lambda i: out_x[i])
        step = max(probe.textlength(texts[i], font=f_label) for i in group) + 24 + 10 * grow
        bulge |= {i: (k - (len(group) - 1) / 2) * step if len(group) > 1 else 0.0 for k, i in enumerate(group)}
    drawn = []
    for i, ((u, v, label), kind) in enumerate(zip(edges, kinds, strict=True)):
        a, b = (out_x[i], nodes[u].box[3]), (in_x[i], nodes[v].box[1])
        if kind == "short":
            path = _curve(a, b, bulge[i])
        else:
            lx = lane_x[i]
            path = _rounded([a, (a[0], exit_y[i]), (lx, exit_y[i]), (lx, entry_y[i]), (b[0], entry_y[i]), b])
        drawn.append(DrawnEdge(u, v, label, texts[i], path))
    # a fan near the picture's side may reach past it: widen the picture to hold every line
    lo = min(min(x for x, _ in e.path) for e in drawn) if drawn else 20
    hi = max(max(x for x, _ in e.path) for e in drawn) if drawn else width - 20
    shift = max(0.0, 20 - lo)
    width = int(max(width + shift, hi + shift + 20))
    if shift:
        for node in nodes.values():
            x0, y0, x1, y1 = node.box
            node.box = (x0 + shift, y0, x1 + shift, y1)
        for e in drawn:
            e.path = [(x + shift, y) for x, y in e.path]
    layout = GraphLayout(width, int(height), nodes, drawn,
                         f"hop budget: {spec.budget}" if spec.budget is not None else "")
    if not _place_labels(layout, probe, f_label, force):
        return None
    return layout


def _place_labels(layout: GraphLayout, probe, font, force: bool) -> bool:
    """Put each label against its own edge where it covers no node, no other label and no other
    edge, and lies nearer its own edge than any other. False if some label found no place."""
    boxes = [n.box for n in layout.nodes.values()]
    samples = [e.samples(2.0) for e in layout.edges]
    placed: list[Rect] = []
    ok = True
    for i, e in enumerate(layout.edges):
        if not e.text:
            continue
        w, h = probe.textlength(e.text, font=font) + 8, 16
        best = None
        for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.45, 0.55, 0.35, 0.65, 0.25, 0.75, 0.2, 0.8):
            x, y = _point_at(e.path, t)
            for box in ((x + 5, y - h / 2, x + 5 + w, y + h / 2), (x - 5 - w, y - h / 2, x - 5, y + h / 2),
                        (x - w / 2, y - h / 2, x + w / 2, y + h / 2),
                        (x - w / 2, y - 5 - h, x + w / 2, y - 5), (x - w / 2, y + 5, x + w / 2, y + 5 + h)):
                if _label_fits(box, i, layout, boxes, samples, placed):
                    best = box
                    break
            if best:
                break
        if best is None:
            if not force:
                return False
            x, y = _point_at(e.path, 0.5)
            best, ok = (x - w / 2, y - h / 2, x + w / 2, y + h / 2), False
        e.label_box = best
        placed.append(best)
    return ok or force


def _label_fits(box: Rect, i: int, layout: GraphLayout, nodes: list[Rect], samples, placed: list[Rect]) -> bool:
    if box[0] < 2 or box[1] < 2 or box[2] > layout.width - 2 or box[3] > layout.height - 22:
        return False
    if any(_overlap(box, n, 3) for n in nodes) or any(_overlap(box, p, 3) for p in placed):
        return False
    if any(j != i and any(_inside(q, box, 3) for q in s) for j, s in enumerate(samples)):
        return False
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    own = path_distance(centre, layout.edges[i].path)
    if rect_distance(box, layout.edges[i].path) > 6:
        return False
    return all(own + 4 < path_distance(centre, e.path) for j, e in enumerate(layout.edges) if j != i)


def _simplify(path: list[Point]) -> list[Point]:
    """``path`` without the points that lie on a straight run (a line drawn through many collinear
    pieces comes out ragged), rounded to whole pixels."""
    pts = [(round(x), round(y)) for x, y in path]
    out = [pts[0]]
    for p, q in pairwise(pts[1:]):
        a = out[-1]
        if (p[0] - a[0]) * (q[1] - a[1]) - (p[1] - a[1]) * (q[0] - a[0]) != 0:
            out.append(p)
    if pts[-1] != out[-1]:
        out.append(pts[-1])
    return out


def _subtitle(node) -> str:
    return f"{node.action}{' (forced)' if node.forced else ''}" if node.kind == "action" else node.kind


def _arrow_head(draw, tip: Point, before: Point, color) -> None:
    ang = math.atan2(tip[1] - before[1], tip[0] - before[0])
    draw.polygon([tip, (tip[0] - 10 * math.cos(ang - 0.4), tip[1] - 10 * math.sin(ang - 0.4)),
                  (tip[0] - 10 * math.cos(ang + 0.4), tip[1] - 10 * math.sin(ang + 0.4))], fill=color)


FILLS = {"generate": (220, 235, 255), "action": (225, 245, 225), "route": (255, 240, 210), "answer": (235, 235, 235)}
EDGE_COLOR = (90, 90, 90)
LABEL_COLOR = (120, 60, 0)


def render_graph(spec: GraphSpec, out: str | Path | None = None) -> Image.Image:
    """A layered drawing of the graph (see :func:`layout_graph`, which says where each node, edge
    and label is): every edge drawn, parallel edges and loops included, each label on its own
    edge."""
    layout = layout_graph(spec)
    img = Image.new("RGB", (layout.width, layout.height), "white")
    draw = ImageDraw.Draw(img)
    for e in layout.edges:
        draw.line(_simplify(e.path), fill=EDGE_COLOR, width=2, joint="curve")
        before = next((p for p in reversed(e.path) if math.hypot(p[0] - e.path[-1][0], p[1] - e.path[-1][1]) >= 4),
                      e.path[0])
        _arrow_head(draw, e.path[-1], before, EDGE_COLOR)
    for e in layout.edges:
        if e.label_box:
            x0, y0, x1, y1 = e.label_box
            draw.rectangle([x0, y0, x1, y1], fill="white")
            draw.text((x0 + 4, y0 + 1), e.text, fill=LABEL_COLOR, font=_font(12))
    for n, node in layout.nodes.items():
        x0, y0, x1, y1 = node.box
        draw.rounded_rectangle([x0, y0, x1, y1], radius=10, fill=FILLS[node.kind], outline=(60, 60, 60), width=2)
        draw.text((x0 + 10, y0 + 6), n, fill="black", font=_font(14))
        draw.text((x0 + 10, y0 + 26), _subtitle(spec.nodes[n]), fill=(80, 80, 80), font=_font(12))
    if layout.budget_text:
        draw.text((8, layout.height - 20), layout.budget_text, fill=(80, 80, 80), font=_font(12))
    if out is not None:
        img.save(out)
    return img
