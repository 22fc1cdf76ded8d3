"""Test images: real photos shipped by scikit-image, and awkward inputs."""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea")


@cache
def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def real_photos() -> dict[str, Image.Image]:
    """Real RGB photos (scikit-image's bundled ones). Fresh copies each call."""
    return {name: _photo(name).copy() for name in PHOTOS}


def awkward_images() -> dict[str, Image.Image]:
    """Inputs that break careless code: 1x1, very wide and very tall, grayscale, RGBA with
    transparency, and a palette image. Built from a real photo, fresh each call."""
    photo = _photo("astronaut")
    rgba = photo.convert("RGBA")
    alpha = np.zeros(photo.size[::-1], dtype=np.uint8)
    alpha[:, photo.width // 2:] = 255
    rgba.putalpha(Image.fromarray(alpha))
    return {
        "1x1": photo.resize((1, 1)),
        "4000x300": photo.resize((4000, 300)),
        "300x4000": photo.resize((300, 4000)),
        "grayscale": photo.convert("L"),
        "rgba": rgba,
        "palette": photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
    }
