"""Where everything of a graph picture goes: nodes in layers, every edge routed, each label
against its own edge. :mod:`perceive.graph.draw.graph_picture` draws exactly this; the geometry helpers here
(distances between points, paths and rectangles) are what the layout and its tests measure with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from perceive.graph.spec import GraphSpec


def _font(size: int):
    return ImageFont.load_default(size=size)


def _subtitle(node) -> str:
    return f"{node.action}{' (forced)' if node.forced else ''}" if node.kind == "action" else node.kind


def _dfs(g, start: str) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Depth first from ``start``, then from each node not reached yet (in the graph's order),
    following each node's edges in order: the order the nodes are found in, and the back edges
    (those that close a loop, a node's edge to itself included). networkx walks the graph with a
    stack of its own, so a long chain does not run out of Python's recursion limit."""
    import networkx as nx

    root = object()  # leads to the start, then to every node: one walk finds them all, in that order
    h = nx.DiGraph()
    if start in g:
        h.add_edge(root, start)
    h.add_edges_from((root, n) for n in g.nodes)
    h.add_edges_from(g.edges)
    order: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    open_: set[str] = set()  # found, and not left yet: an edge to one of them closes a loop
    for u, v, kind in nx.dfs_labeled_edges(h, root):
        if v is root:
            continue
        if kind == "forward":
            order[v] = len(order)
            open_.add(v)
        elif kind == "reverse":
            open_.discard(v)
        elif kind == "nontree" and v in open_:
            back.add((u, v))
    return order, back


def _layers(g, back: set[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layers over the graph minus its back edges."""
    import networkx as nx

    dag = nx.DiGraph([e for e in g.edges if e not in back])
    dag.add_nodes_from(g.nodes)
    depth = {n: 0 for n in g.nodes}
    for n in nx.topological_sort(dag):
        for v in dag.successors(n):
            depth[v] = max(depth[v], depth[n] + 1)
    return depth


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
    """Where everything of a graph picture is: :func:`perceive.graph.draw.graph_picture.render_graph` draws
    exactly this."""

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


def rect_distance(r: Rect, path: list[Point], *, samples: np.ndarray | None = None) -> float:
    """Distance from rectangle ``r`` to ``path`` (0 where the path enters it), measured at points
    1 px apart along the path. ``samples``: those points (``_sample(path, 1.0)``, as an array),
    for measuring one path against many rectangles without sampling it each time."""
    pts = np.asarray(_sample(path, 1.0) if samples is None else samples, dtype=float)
    # from a point outside the rectangle, the nearest point of it is on its border
    dx = np.maximum(np.maximum(r[0] - pts[:, 0], pts[:, 0] - r[2]), 0.0)
    dy = np.maximum(np.maximum(r[1] - pts[:, 1], pts[:, 1] - r[3]), 0.0)
    return float(np.hypot(dx, dy).min())


def _inside(p: Point, r: Rect, margin: float = 0.0) -> bool:
    return r[0] - margin <= p[0] <= r[2] + margin and r[1] - margin <= p[1] <= r[3] + margin


def _any_inside(pts: np.ndarray, r: Rect, margin: float = 0.0) -> bool:
    """Whether any of the points ``pts`` ``(n, 2)`` is :func:`_inside` ``r``."""
    x, y = pts[:, 0], pts[:, 1]
    return bool(((r[0] - margin <= x) & (x <= r[2] + margin) & (r[1] - margin <= y) & (y <= r[3] + margin)).any())


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
    """One attempt at ``spec``'s layout with gaps ``grow`` steps wider; None when a label does not
    fit (unless ``force``)."""
    d = _Draft(spec, grow)
    d.place_x()
    d.place_y()
    return d.finish(d.route(), force)


class _Draft:
    """The phases of one layout attempt, in order: layers and sizes (``__init__``), x (``place_x``:
    columns, lanes, ports), y (``place_y``: gaps, rows, tracks), the edges' paths (``route``), and
    the picture's final width and labels (``finish``)."""

    def __init__(self, spec: GraphSpec, grow: int):
        import networkx as nx

        self.spec, self.grow = spec, grow
        edges = self.edges = graph_edges(spec)
        g = nx.DiGraph()
        g.add_nodes_from(spec.nodes)
        g.add_edges_from((u, v) for u, v, _ in edges)
        order, back = _dfs(g, spec.start)
        depth = self.depth = _layers(g, back)
        self.rows: dict[int, list[str]] = {}
        for n in sorted(spec.nodes, key=lambda n: (depth[n], order[n])):
            self.rows.setdefault(depth[n], []).append(n)
        self.nrows = max(self.rows) + 1 if self.rows else 0
        self.probe = probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        f_name, f_sub, self.f_label = _font(14), _font(12), _font(12)
        self.texts = [e[2].replace("*", "any") if e[2] != "next" else "" for e in edges]
        self.leaving: dict[str, list[int]] = {n: [] for n in spec.nodes}  # each node's edges (indices), in order
        self.arriving: dict[str, list[int]] = {n: [] for n in spec.nodes}
        for i, (u, v, _) in enumerate(edges):
            self.leaving[u].append(i)
            self.arriving[v].append(i)
        ports = max([len(ends) for ends in (*self.leaving.values(), *self.arriving.values())] + [0])
        self.bw = max([180, 36 * (ports + 1)] + [int(probe.textlength(n, font=f_name)) + 24 for n in spec.nodes]
                      + [int(probe.textlength(_subtitle(spec.nodes[n]), font=f_sub)) + 24 for n in spec.nodes])
        self.bh, self.gx, self.track = 48, 40 + 10 * grow, 14
        self.lane_gap, self.margin = 16 + 4 * grow, 40 + 10 * grow
        # per edge: "short" (to the next layer) or "lane" (longer, back up, or to itself)
        self.kinds = ["short" if depth[v] == depth[u] + 1 and (u, v) not in back else "lane" for u, v, _ in edges]

    def place_x(self) -> None:
        """Rows centred; lanes beside the nodes, on the side nearer the edge's ends, longer spans
        further out; ports: outgoing on the bottom, incoming on the top, each edge its own, ordered
        by where the edge's other end lies (so parallel edges do not cross)."""
        edges, depth, bw, gx, kinds = self.edges, self.depth, self.bw, self.gx, self.kinds
        widest = max((len(names) * bw + (len(names) - 1) * gx for names in self.rows.values()), default=bw)
        centre = {n: -(len(names) * bw + (len(names) - 1) * gx) / 2 + k * (bw + gx) + bw / 2
                  for names in self.rows.values() for k, n in enumerate(names)}
        self.lane_edges = lane_edges = [i for i, k in enumerate(kinds) if k == "lane"]
        side = {i: "left" if centre[edges[i][0]] + centre[edges[i][1]] < 0 else "right" for i in lane_edges}
        span = {i: (abs(depth[edges[i][1]] - depth[edges[i][0]]), i) for i in lane_edges}
        lanes_l = sorted((i for i in lane_edges if side[i] == "left"), key=span.get)
        lanes_r = sorted((i for i in lane_edges if side[i] == "right"), key=span.get)
        left_w = self.margin + self.lane_gap * len(lanes_l) + 20 if lanes_l else 20
        right_w = self.margin + self.lane_gap * len(lanes_r) + 20 if lanes_r else 20
        self.width = int(left_w + widest + right_w)
        ox = left_w + widest / 2
        self.node_x = node_x = {n: ox + centre[n] - bw / 2 for n in self.spec.nodes}
        self.lane_x = lane_x = {i: left_w - self.margin - self.lane_gap * k for k, i in enumerate(lanes_l)}
        lane_x |= {i: left_w + widest + self.margin + self.lane_gap * k for k, i in enumerate(lanes_r)}

        def spread(n, k, count):
            return node_x[n] + bw * (k + 1) / (count + 1)

        self.out_x, self.in_x = out_x, in_x = {}, {}
        for n in self.spec.nodes:
            outs = sorted(self.leaving[n],
                          key=lambda i: (lane_x[i] if kinds[i] == "lane" else ox + centre[edges[i][1]], i))
            out_x |= {i: spread(n, k, len(outs)) for k, i in enumerate(outs)}
        for n in self.spec.nodes:
            ins = sorted(self.arriving[n], key=lambda i: (lane_x[i] if kinds[i] == "lane" else out_x[i], i))
            in_x |= {i: spread(n, k, len(ins)) for k, i in enumerate(ins)}

    def place_y(self) -> None:
        """Gap r lies under row r (gap -1 above row 0). A lane edge leaves through the gap under
        its source and arrives through the gap above its target, each on a track of its own; a gap
        is deep enough for its tracks, its labels, and edges that cross it steeply."""
        edges, depth, nrows, track, bh = self.edges, self.depth, self.nrows, self.track, self.bh
        exits: dict[int, list[int]] = {r: [] for r in range(-1, nrows)}
        entries: dict[int, list[int]] = {r: [] for r in range(-1, nrows)}
        short_from: dict[int, list[int]] = {r: [] for r in range(-1, nrows)}
        for i in self.lane_edges:
            exits[depth[edges[i][0]]].append(i)
            entries[depth[edges[i][1]] - 1].append(i)
        for i, k in enumerate(self.kinds):
            if k == "short":
                short_from[depth[edges[i][0]]].append(i)
        gap_h = {}
        for r in range(-1, nrows):
            shorts = short_from[r]
            base = (16 if r in (-1, nrows - 1) else 56) + 10 * self.grow + track * (len(exits[r]) + len(entries[r]))
            base += 12 if any(self.texts[i] for i in shorts) else 0
            steep = max((0.4 * abs(self.out_x[i] - self.in_x[i]) for i in shorts), default=0)
            gap_h[r] = max(base, min(steep, 240))
        row_y, y = {}, gap_h[-1]
        for r in range(nrows):
            row_y[r] = y
            y += bh + gap_h[r]
        self.height = height = y + 24
        self.nodes = {n: DrawnNode(n, self.spec.nodes[n].kind,
                                   (self.node_x[n], row_y[depth[n]], self.node_x[n] + self.bw, row_y[depth[n]] + bh))
                      for n in self.spec.nodes}
        # tracks: leaving edges on the upper ones (the port furthest from its lane lowest), arriving
        # edges on the lower ones
        self.exit_y, self.entry_y = {}, {}
        lane_x = self.lane_x
        for r in range(-1, nrows):
            top = (row_y[r] + bh) if r >= 0 else 0
            bottom = row_y[r + 1] if r + 1 < nrows else height - 24
            ex = sorted(exits[r], key=lambda i: -abs(lane_x[i] - self.out_x[i]))
            self.exit_y |= {i: top + 12 + track * (len(ex) - 1 - k) + (4 if r == -1 else 0) for k, i in enumerate(ex)}
            en = sorted(entries[r], key=lambda i: abs(lane_x[i] - self.in_x[i]))
            self.entry_y |= {i: bottom - 12 - track * k for k, i in enumerate(en)}

    def route(self) -> list[DrawnEdge]:
        """Every edge's path; parallel edges to the next layer fan out, their middles a label's
        width apart."""
        out_x, texts = self.out_x, self.texts
        bulge = {}
        groups: dict[tuple[str, str], list[int]] = {}
        for i, k in enumerate(self.kinds):
            if k == "short":
                groups.setdefault(self.edges[i][:2], []).append(i)
        for group in groups.values():
            group.sort(key=lambda i: out_x[i])
            step = max(self.probe.textlength(texts[i], font=self.f_label) for i in group) + 24 + 10 * self.grow
            bulge |= {i: (k - (len(group) - 1) / 2) * step if len(group) > 1 else 0.0 for k, i in enumerate(group)}
        drawn = []
        for i, ((u, v, label), kind) in enumerate(zip(self.edges, self.kinds, strict=True)):
            a, b = (out_x[i], self.nodes[u].box[3]), (self.in_x[i], self.nodes[v].box[1])
            if kind == "short":
                path = _curve(a, b, bulge[i])
            else:
                lx, ey, ny = self.lane_x[i], self.exit_y[i], self.entry_y[i]
                path = _rounded([a, (a[0], ey), (lx, ey), (lx, ny), (b[0], ny), b])
            drawn.append(DrawnEdge(u, v, label, texts[i], path))
        return drawn

    def finish(self, drawn: list[DrawnEdge], force: bool) -> GraphLayout | None:
        """The layout, widened so that a fan near the picture's side stays inside it, with its
        labels placed (None when one does not fit, unless ``force``)."""
        width, nodes = self.width, self.nodes
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
        budget = self.spec.budget
        layout = GraphLayout(width, int(self.height), nodes, drawn,
                             f"hop budget: {budget}" if budget is not None else "")
        if not _place_labels(layout, self.probe, self.f_label, force):
            return None
        return layout


def _place_labels(layout: GraphLayout, probe, font, force: bool) -> bool:
    """Put each label against its own edge where it covers no node, no other label and no other
    edge, and lies nearer its own edge than any other. False if some label found no place."""
    boxes = [n.box for n in layout.nodes.values()]
    # each edge sampled once, 1 px apart, for every candidate box of every label
    samples = [np.asarray(_sample(e.path, 1.0), dtype=float) for e in layout.edges]
    extents = [(*s.min(0).tolist(), *s.max(0).tolist()) for s in samples]
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
                if _label_fits(box, i, layout, boxes, samples, extents, placed):
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


def _label_fits(box: Rect, i: int, layout: GraphLayout, nodes: list[Rect], samples: list[np.ndarray],
                extents: list[Rect], placed: list[Rect]) -> bool:
    """``samples``: each edge's points (:func:`_sample` 1 px apart, ``(n, 2)``), ``extents``
    their bounding boxes."""
    if box[0] < 2 or box[1] < 2 or box[2] > layout.width - 2 or box[3] > layout.height - 22:
        return False
    if any(_overlap(box, n, 3) for n in nodes) or any(_overlap(box, p, 3) for p in placed):
        return False
    if rect_distance(box, layout.edges[i].path, samples=samples[i]) > 6:
        return False
    if any(j != i and _overlap(box, extents[j], 3.5) and _any_inside(s, box, 3) for j, s in enumerate(samples)):
        return False
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    own = path_distance(centre, layout.edges[i].path)
    return all(own + 4 < path_distance(centre, e.path) for j, e in enumerate(layout.edges) if j != i)
