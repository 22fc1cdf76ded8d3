from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perceive.geometry import ROOT, Box, Frame, box_to_grid_cells, grid_cells_to_box


def test_paper_worked_example():
    # vpt-paper.md §1.2: x1, y5, x5, y7 -> cells x 0-6, y 4-7 -> [0, H/2, 7W/8, H]
    b = grid_cells_to_box({1, 5}, {5, 7}, 800, 600)
    assert b.as_tuple() == (0, 300, 700, 600)
    assert b.frame == ROOT


def test_grid_box_truncates_like_the_reference():
    # W=H=100, cell 12.5 px. x cell 2 -> cells 1..3 -> int(12.5)=12, int(50.0)=50;
    # y cell 3 -> cells 2..4 -> int(25.0)=25, int(62.5)=62
    b = grid_cells_to_box({2}, {3}, 100, 100)
    assert b.as_tuple() == (12, 25, 50, 62)


def test_grid_size_is_a_parameter():
    b = grid_cells_to_box({0}, {15}, 160, 160, grid=16, margin=0)
    assert b.as_tuple() == (0, 150, 10, 160)


@given(st.integers(1, 5000), st.integers(1, 5000), st.sets(st.integers(0, 7), min_size=1),
       st.sets(st.integers(0, 7), min_size=1))
def test_grid_box_always_inside_image(w, h, xs, ys):
    b = grid_cells_to_box(xs, ys, w, h)
    assert 0 <= b.x0 <= b.x1 <= w and 0 <= b.y0 <= b.y1 <= h
    # and it covers every chosen cell
    assert b.x0 <= int(min(xs) * w / 8) and b.x1 >= int((max(xs) + 1) * w / 8)


def test_box_to_grid_cells_inverts_cell_boxes():
    xs, ys = box_to_grid_cells(Box(56, 112, 168, 168), 448, 448)
    assert xs == [1, 2] and ys == [2]


def box_in(frame: Frame, fx0, fy0, fx1, fy1) -> Box:
    """A non-empty integer box inside ``frame`` from four fractions in [0, 1]."""
    x0 = int(fx0 * (frame.width - 1))
    y0 = int(fy0 * (frame.height - 1))
    x1 = x0 + 1 + int(fx1 * (frame.width - x0 - 1))
    y1 = y0 + 1 + int(fy1 * (frame.height - y0 - 1))
    return Box(x0, y0, x1, y1, frame.id)


unit = st.floats(0, 1)


@given(st.integers(2, 4000), st.integers(2, 4000), unit, unit, unit, unit, unit, unit, unit, unit)
def test_crop_of_crop_maps_back_exactly(w, h, a, b, c, d, e, f, g, k):
    root = Frame.root(w, h)
    box1 = box_in(root, a, b, c, d)
    crop1 = root.child("c1", box1)
    box2 = box_in(crop1, e, f, g, k)
    crop2 = crop1.child("c2", box2)
    # a plain crop of a crop is an offset: integer arithmetic, no rounding
    expect = Box(box1.x0 + box2.x0, box1.y0 + box2.y0, box1.x0 + box2.x1, box1.y0 + box2.y1)
    assert crop2.root_box() == expect
    assert crop2.parent == "c1"


@given(st.integers(2, 2000), st.integers(2, 2000), unit, unit, unit, unit,
       st.integers(1, 1000), st.integers(1, 1000), unit, unit, unit, unit)
def test_zoom_of_zoom_maps_back_exactly(w, h, a, b, c, d, zw, zh, e, f, g, k):
    root = Frame.root(w, h)
    box1 = box_in(root, a, b, c, d)
    zoom1 = root.child("z1", box1, (zw, zh))
    box2 = box_in(zoom1, e, f, g, k)
    zoom2 = zoom1.child("z2", box2, (7, 5))
    got = zoom2.root_box()
    # exact rational answer, computed independently
    sx, sy = Fraction(box1.width) / zw, Fraction(box1.height) / zh
    want = (box1.x0 + sx * box2.x0, box1.y0 + sy * box2.y0, box1.x0 + sx * box2.x1, box1.y0 + sy * box2.y1)
    assert [Fraction(v) for v in got.as_tuple()] == [Fraction(float(v)) if v.denominator != 1 else v for v in want]
    # the zoomed view still lies inside the first crop
    assert box1.x0 <= got.x0 < got.x1 <= box1.x1 and box1.y0 <= got.y0 < got.y1 <= box1.y1


def test_frame_roundtrips_through_json():
    f = Frame.root(640, 480).child("a", Box(10, 20, 110, 70), (300, 150)).child("b", Box(0, 0, 3, 3, "a"))
    assert Frame.from_dict(f.to_dict()) == f


def test_frame_rejects_box_of_another_frame():
    with pytest.raises(ValueError, match="frame"):
        Frame.root(10, 10).child("a", Box(0, 0, 5, 5, frame="other"))
    with pytest.raises(ValueError, match="empty"):
        Frame.root(10, 10).child("a", Box(5, 5, 5, 9))


def test_iou():
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 15, 10)) == pytest.approx(1 / 3)
