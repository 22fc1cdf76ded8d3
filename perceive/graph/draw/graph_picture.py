"""The picture of a graph: draws exactly the layout :func:`perceive.graph.draw.layout.layout_graph`
computes (nodes, every edge with its arrow, each label on its own edge)."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw

from perceive.graph.draw.layout import Point, _font, _subtitle, layout_graph
from perceive.graph.spec import GraphSpec


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


__all__ = ["EDGE_COLOR", "FILLS", "LABEL_COLOR", "render_graph"]
