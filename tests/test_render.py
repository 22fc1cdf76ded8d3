"""Pictures: the trace picture stays readable at any aspect; the graph picture draws every edge,
each with its own label, checked against the graph."""

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
