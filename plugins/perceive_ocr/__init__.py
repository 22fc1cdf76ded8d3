"""OCR: read the text in a view, or in a box of it, with a pretrained OCR model.

The engine is RapidOCR (``rapidocr-onnxruntime``): PaddleOCR's PP-OCRv4 text detection and
recognition networks (and its angle classifier) as ONNX models, run by onnxruntime on the CPU. Its
wheel ships the model files, so nothing is downloaded, ever. It is an optional dependency:
``pip install "perceive[ocr]"``. Without it this plugin still loads and registers ``ocr`` (so
configs and graphs that name it validate), and every call fails with a typed
:class:`~perceive.errors.EncoderUnavailableError` (the OCR engine cannot be built) that says what to
install.

The span is ``<|ocr_start|>`` (grid cells)* ``<|ocr_end|>``: no cells reads the whole view the
call targets; cells (the region tokens ``<|x_i|>``/``<|y_j|>`` on an 8x8 grid, as zoom's) read
those cells grown by ``margin``. A graph can force it with ``args: {box: [x0, y0, x1, y1]}`` in the
target view's pixels. The region is always read from the original image at full resolution,
whatever the view's scale. The observation is a :class:`perceive.Text`: the lines read, in
reading order and joined by spaces, each with its box in the original image's pixels.

Options (config ``actions.ocr.options``): ``min_score`` (drop lines recognised with less
confidence, default 0.5), ``pad`` (pixels of replicated border added around the region before
reading, default 16: text that touches the crop's edge is read far more reliably), ``threads``
(onnxruntime's intra-op threads, 0 for its default).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from perceive import hookimpl
from perceive.actions import Action, ActionCall, ActionContext, TriggerGrammar
from perceive.errors import EncoderUnavailableError
from perceive.geometry import Box
from perceive.observations import Text
from perceive.regions import RegionArgs, parse_grid_span
from perceive.vocabulary import Vocabulary

INSTALL = 'pip install "perceive[ocr]"'


class OcrArgs(RegionArgs):
    """What to read: the whole target view (no arguments), grid ``xs``/``ys`` cells grown by
    ``margin`` cells, or an explicit ``box`` in the target view's pixels. A region's arguments,
    with the whole view allowed too."""

    @model_validator(mode="after")
    def _one_form(self) -> OcrArgs:  # replaces RegionArgs' check, which needs cells or a box
        if bool(self.xs) != bool(self.ys):
            raise ValueError("give both x and y cells, or neither (the whole view)")
        if self.xs and self.box is not None:
            raise ValueError("give cells or a box, not both")
        bad = [i for i in (*self.xs, *self.ys) if not 0 <= i < self.grid]
        if bad:
            raise ValueError(f"cell indices {bad} outside the {self.grid}x{self.grid} grid")
        return self

    def box_in(self, width: int, height: int, frame: str) -> Box:
        """The region to read, in the pixel frame ``frame`` of a ``width`` x ``height`` view."""
        if self.box is None and not self.xs:
            return Box(0, 0, width, height, frame)
        return super().box_in(width, height, frame)


class OcrOptions(BaseModel):
    """``min_score``: lowest recognition confidence kept; ``pad``: replicated border (pixels) added
    around the region before reading; ``threads``: onnxruntime intra-op threads (0: its default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    pad: int = Field(16, ge=0, le=256)
    threads: int = Field(0, ge=0, le=256)


_engines: dict[int, object] = {}
_lock = threading.Lock()


def engine(threads: int = 0):
    """The RapidOCR engine (built once per thread setting, from the models inside its wheel)."""
    with _lock:
        if threads not in _engines:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise EncoderUnavailableError(
                    f"the ocr action needs rapidocr-onnxruntime, which is not installed ({exc})",
                    hint=f"{INSTALL} (onnxruntime, opencv and the PP-OCR models, about 120 MB)") from None
            kw = {} if threads == 0 else {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            _engines[threads] = RapidOCR(print_verbose=False, **kw)
        return _engines[threads]


def available() -> bool:
    """Whether the OCR engine can be built here."""
    try:
        engine()
    except EncoderUnavailableError:
        return False
    return True


class Ocr(Action):
    name = "ocr"
    description = ("Read the text in the view (or in the named grid cells, or a box) with a pretrained OCR model; "
                   "gives the text and its boxes in the original image's pixels.")
    Args = OcrArgs
    Options = OcrOptions
    observation = "text"
    start_token = "<|ocr_start|>"
    end_token = "<|ocr_end|>"

    def __init__(self, grid: int = 8, margin: int = 1):
        self.grid, self.margin = grid, margin
        vocab = Vocabulary(grid)
        self.grammar = TriggerGrammar(start=self.start_token, end=self.end_token,
                                      inner=vocab.x_tokens + vocab.y_tokens)

    def parse(self, pieces: Sequence[str]) -> OcrArgs:
        if not any(p.strip() for p in pieces):
            return OcrArgs(grid=self.grid, margin=self.margin)  # an empty span: the whole view
        cells = parse_grid_span(pieces, self.grid, self.margin)
        return OcrArgs(xs=cells.xs, ys=cells.ys, grid=self.grid, margin=self.margin)

    def run(self, call: ActionCall, context: ActionContext) -> Text:
        import numpy as np

        opts = context.options  # an OcrOptions, validated, its defaults filled in
        ocr = engine(opts.threads)
        w, h = context.frame.size
        region = context.root_box(call.args.box_in(w, h, context.frame.id))  # whole pixels of the original
        pixels = np.asarray(context.root.crop(region.as_int_tuple()).convert("RGB"))[:, :, ::-1]  # BGR
        p = opts.pad
        if p:
            pixels = np.pad(pixels, ((p, p), (p, p), (0, 0)), mode="edge")
        with _lock:  # the engine keeps per-call thresholds on itself
            lines, _ = ocr(np.ascontiguousarray(pixels), text_score=opts.min_score)
        boxes = []
        for points, words, _score in lines or ():
            xs = [pt[0] - p + region.x0 for pt in points]
            ys = [pt[1] - p + region.y0 for pt in points]
            b = Box(min(xs), min(ys), max(xs), max(ys)).clip(context.root.width, context.root.height)
            b = Box(max(b.x0, region.x0), max(b.y0, region.y0), min(b.x1, region.x1), min(b.y1, region.y1))
            if words.strip() and not b.is_empty():
                boxes.append((Box(float(b.x0), float(b.y0), float(b.x1), float(b.y1)), words.strip()))
        return Text(" ".join(t for _, t in boxes), context.frame, boxes=tuple(boxes), region=region, label="ocr")

    def examples(self) -> list[OcrArgs]:
        g = self.grid - 1
        return [OcrArgs(grid=self.grid, margin=self.margin),  # the whole view
                OcrArgs(xs=(0, g // 2), ys=(0, g), grid=self.grid, margin=self.margin)]  # its left half

    def args_for_box(self, box: Box) -> OcrArgs:
        return OcrArgs(box=box.as_tuple(), grid=self.grid, margin=self.margin)


@hookimpl
def perceive_register_actions():
    return [Ocr()]
