"""Loading images with clear errors. Nothing here mutates the caller's image."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from perceive.errors import ImageError


def load_image(source: Any) -> Image.Image:
    """A fully decoded PIL image from a path, bytes, a numpy array (HWC uint8) or a PIL image.

    Raises :class:`~perceive.errors.ImageError` for a missing, corrupt or unsupported image.
    The mode is kept (convert with ``.convert("RGB")`` where RGB is needed).
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"image not found: {path}", hint="check the path")
        try:
            with Image.open(path) as im:
                im.load()  # decode now, so truncation shows up here and not later
                return im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"cannot read image {path}: {exc}",
                             hint="the file is corrupt or not an image PIL can open") from exc
    if isinstance(source, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(source)) as im:
                im.load()
                return im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"cannot decode image bytes: {exc}") from exc
    if hasattr(source, "__array_interface__"):
        try:
            return Image.fromarray(source)
        except (TypeError, ValueError) as exc:
            raise ImageError(f"cannot make an image from array: {exc}",
                             hint="pass an HxW or HxWx3/4 uint8 array") from exc
    raise ImageError(f"unsupported image source of type {type(source).__name__}",
                     hint="pass a path, bytes, a numpy array or a PIL image")


def as_rgb(image: Image.Image) -> Image.Image:
    """RGB copy (or the image itself when already RGB). Alpha is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    return image.convert("RGB")


def rescale(image: Image.Image, factor: float) -> Image.Image:
    """``image`` resized by ``factor`` on both sides (bicubic; at least 1x1 px)."""
    if factor == 1:
        return image
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)
