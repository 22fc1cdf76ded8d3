"""Boxes and coordinate frames.

Conventions, used everywhere in perceive:

* A box is ``(x0, y0, x1, y1)`` in **pixels**, half-open: it covers columns ``x0 <= x < x1``
  and rows ``y0 <= y < y1``. ``x`` grows to the right, ``y`` downwards, origin at the top-left
  corner of the image.
* Every box names the frame (image) it is expressed in. ``"root"``-relative coordinates
  always mean the *original* image as the user passed it, before any resize.
* A :class:`Frame` is the pixel grid of one view. It knows the exact affine map (a scale and
  an offset per axis, held as :class:`fractions.Fraction`) from its pixels to the root image.
  Crops of crops and zooms of zooms compose exactly; a box chosen in any view maps back to the
  root image without rounding drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

ROOT = "root"


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in the pixel frame named by ``frame``."""

    x0: float
    y0: float
    x1: float
    y1: float
    frame: str = ROOT

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def as_int_tuple(self) -> tuple[int, int, int, int]:
        return (int(self.x0), int(self.y0), int(self.x1), int(self.y1))

    def is_empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    def clip(self, width: float, height: float) -> Box:
        """The part of this box inside a ``width`` x ``height`` image (may be empty)."""
        return Box(
            min(max(self.x0, 0), width),
            min(max(self.y0, 0), height),
            min(max(self.x1, 0), width),
            min(max(self.y1, 0), height),
            self.frame,
        )

    def iou(self, other: Box) -> float:
        if other.frame != self.frame:
            raise ValueError(f"IoU of boxes in different frames: {self.frame!r} vs {other.frame!r}")
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def to_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "frame": self.frame}

    @classmethod
    def from_dict(cls, d: dict) -> Box:
        return cls(d["x0"], d["y0"], d["x1"], d["y1"], d.get("frame", ROOT))


def _num(f: Fraction) -> float | int:
    return int(f) if f.denominator == 1 else float(f)


@dataclass(frozen=True)
class Frame:
    """The pixel grid of one view and its exact map to the root image.

    A pixel coordinate ``(x, y)`` of this frame is ``(ox + sx * x, oy + sy * y)`` in the root
    image. The root frame is ``Frame.root(w, h)``: identity map.
    """

    id: str
    width: int
    height: int
    ox: Fraction = Fraction(0)
    oy: Fraction = Fraction(0)
    sx: Fraction = Fraction(1)
    sy: Fraction = Fraction(1)
    parent: str | None = None
    #: the pixel size the model saw this view at, after its image processor resized it (a call in
    #: that frame's pixels, ``coordinates: absolute_resized``, scales by it); None: not known
    seen: tuple[int, int] | None = field(default=None, compare=False)

    @classmethod
    def root(cls, width: int, height: int) -> Frame:
        return cls(ROOT, int(width), int(height))

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def to_root(self, box: Box) -> Box:
        """Map a box expressed in this frame to the root image (exact)."""
        if box.frame != self.id:
            raise ValueError(f"box is in frame {box.frame!r}, not {self.id!r}")
        x0 = self.ox + self.sx * Fraction(box.x0)
        y0 = self.oy + self.sy * Fraction(box.y0)
        x1 = self.ox + self.sx * Fraction(box.x1)
        y1 = self.oy + self.sy * Fraction(box.y1)
        return Box(_num(x0), _num(y0), _num(x1), _num(y1), ROOT)

    def box(self) -> Box:
        """This whole frame, as a box in itself."""
        return Box(0, 0, self.width, self.height, self.id)

    def root_box(self) -> Box:
        """The region of the root image this frame shows."""
        return self.to_root(self.box())

    def child(self, child_id: str, box: Box, out_size: tuple[int, int] | None = None) -> Frame:
        """The frame of a view that shows ``box`` (in this frame) at ``out_size`` pixels.

        ``out_size=None`` means a plain crop: one view pixel per pixel of this frame. The box
        must have integer corners then, as PIL crops do.
        """
        if box.frame != self.id:
            raise ValueError(f"box is in frame {box.frame!r}, not {self.id!r}")
        if box.is_empty():
            raise ValueError(f"empty box {box.as_tuple()} in frame {self.id!r}")
        bw = Fraction(box.x1) - Fraction(box.x0)
        bh = Fraction(box.y1) - Fraction(box.y0)
        if out_size is None:
            if bw.denominator != 1 or bh.denominator != 1:
                raise ValueError("a plain crop needs integer box corners; pass out_size to resample")
            out_size = (int(bw), int(bh))
        w, h = int(out_size[0]), int(out_size[1])
        # view pixel x covers bw / w pixels of this frame, starting at box.x0
        sx = bw / w
        sy = bh / h
        return Frame(
            id=child_id,
            width=w,
            height=h,
            ox=self.ox + self.sx * Fraction(box.x0),
            oy=self.oy + self.sy * Fraction(box.y0),
            sx=self.sx * sx,
            sy=self.sy * sy,
            parent=self.id,
        )

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "width": self.width,
            "height": self.height,
            "parent": self.parent,
            "to_root": {k: str(getattr(self, k)) for k in ("ox", "oy", "sx", "sy")},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Frame:
        t = d.get("to_root", {})
        return cls(
            d["id"],
            d["width"],
            d["height"],
            *(Fraction(t.get(k, "0" if k[0] == "o" else "1")) for k in ("ox", "oy", "sx", "sy")),
            parent=d.get("parent"),
        )


def grid_cells_to_box(
    xs: set[int] | list[int],
    ys: set[int] | list[int],
    width: int,
    height: int,
    *,
    grid: int = 8,
    margin: int = 1,
    frame: str = ROOT,
) -> Box:
    """The paper's region-token box (vpt-paper.md §1.2), in the pixel frame of the image the
    grid was laid on (``width`` x ``height``).

    The cell rectangle spans ``[min xs, max xs] x [min ys, max ys]``; it grows by ``margin``
    cells on every side, is clamped to the grid, and converts to pixels with cell size
    ``width/grid`` x ``height/grid``, each corner truncated to int as the reference does.
    """
    if not xs or not ys:
        raise ValueError("a region needs at least one x and one y cell")
    x_lo = max(min(xs) - margin, 0)
    x_hi = min(max(xs) + margin, grid - 1)
    y_lo = max(min(ys) - margin, 0)
    y_hi = min(max(ys) + margin, grid - 1)
    return Box(
        int(x_lo * width / grid),
        int(y_lo * height / grid),
        int((x_hi + 1) * width / grid),
        int((y_hi + 1) * height / grid),
        frame,
    )


def box_to_grid_cells(box: Box, width: int, height: int, *, grid: int = 8) -> tuple[list[int], list[int]]:
    """The grid cells a box touches (inverse helper for building training data).

    Returns the sorted x and y cell indices whose cells overlap the box.
    """
    cw, ch = width / grid, height / grid
    x_lo = max(0, min(grid - 1, int(box.x0 // cw)))
    x_hi = max(0, min(grid - 1, int((box.x1 - 1e-9) // cw)))
    y_lo = max(0, min(grid - 1, int(box.y0 // ch)))
    y_hi = max(0, min(grid - 1, int((box.y1 - 1e-9) // ch)))
    return list(range(x_lo, x_hi + 1)), list(range(y_lo, y_hi + 1))
