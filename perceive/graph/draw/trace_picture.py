"""The picture of what a run did: the original image with each hop's box numbered, the hops' views
in a strip beside it, and the question and answer below (``perceive ask --render``)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from perceive.geometry import Box
from perceive.graph.draw.layout import _font
from perceive.images import as_rgb
from perceive.trace import Trace

COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
          (240, 50, 230), (210, 245, 60)]


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


__all__ = ["COLORS", "render_trace"]
