import numpy as np
import pytest
from PIL import Image

from perceive.errors import ImageError
from perceive.images import as_rgb, load_image


def test_load_paths_bytes_arrays(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (5, 4), "blue").save(p)
    assert load_image(p).size == (5, 4)
    assert load_image(p.read_bytes()).size == (5, 4)
    assert load_image(np.zeros((4, 5, 3), np.uint8)).size == (5, 4)


def test_corrupt_and_truncated_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(bad)
    good = tmp_path / "g.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageError):
        load_image(cut)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="unsupported"):
        load_image(3.5)


def test_as_rgb_composites_alpha_on_white():
    im = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (10, 20, 30, 255))
    rgb = as_rgb(im)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 0)) == (10, 20, 30)
    assert as_rgb(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)
