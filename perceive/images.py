"""Loading images with clear errors. Nothing here mutates the caller's image.

Every image a run reads (``perceive ask``, ``PerceptionLoop.ask``, ``perceive serve``'s data URLs,
``--remote``, eval and training data, card backgrounds) is decoded by :func:`load_image`, which
turns it **upright** by its EXIF orientation (:func:`upright`: a phone photo stored sideways with
tag 6 is read as it is shown) before any frame is made, so every box refers to the upright image.

Two guards apply to every image :func:`load_image` returns:

* **size**: an image with no pixels (0xN) is an :class:`~perceive.errors.ImageError`; so is a
  file or byte string that would decode to more than ``PERCEIVE_MAX_IMAGE_PIXELS`` pixels
  (default 89,478,485, Pillow's own limit: about 9459x9459). That guards against decompression
  bombs, small files that expand to gigabytes. Raise the limit for images you trust with the
  environment variable (``PERCEIVE_MAX_IMAGE_PIXELS=200000000``; ``0`` turns the check off) or
  the ``max_pixels=`` argument.
* **bit depth**: :func:`as_rgb` turns images of more than 8 bits into 8-bit RGB by their range,
  not by clipping (Pillow's own ``convert("RGB")`` clips, so a 16-bit image comes out white).
  See :func:`to_uint8` for the rules.

An image a run starts from (not a crop the model chose) must also have a shape the model can look
at: :func:`check_input_size` refuses a side under :data:`MIN_INPUT_SIDE` px and an aspect ratio
over :data:`MAX_INPUT_ASPECT`, with a hint addressed to the user.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from perceive.errors import ImageError

MAX_PIXELS_ENV = "PERCEIVE_MAX_IMAGE_PIXELS"
#: the default pixel limit: Pillow's (89,478,485 px, a 9459x9459 image)
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
#: modes of more than 8 bits per sample, with one channel
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
#: the EXIF tag that says how the stored pixels are turned: 1 upright, 2-8 mirrored and/or rotated
ORIENTATION_TAG = 0x0112
#: orientations whose stored width is the upright height (a quarter turn)
QUARTER_TURNS = (5, 6, 7, 8)
#: the shortest side, in pixels, of an image a run starts from: one pixel per cell of the paper's
#: 8x8 region grid (a smaller image makes empty regions)
MIN_INPUT_SIDE = 8
#: the most elongated image a run starts from (longer side / shorter side): Qwen2-VL's image
#: processor (transformers' ``smart_resize``) refuses more
MAX_INPUT_ASPECT = 200
T = TypeVar("T")


def max_image_pixels() -> int | None:
    """The pixel limit in force: ``PERCEIVE_MAX_IMAGE_PIXELS`` if set (``0``: none), else
    :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw.replace("_", "")))
    except ValueError:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r} is not a number of pixels",
                         hint=f"set it to a whole number such as 200000000 (0 turns the check off), "
                              f"or unset it for the default {DEFAULT_MAX_PIXELS}") from None
    if value < 0:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r} is negative",
                         hint="set it to a positive number of pixels, or 0 to turn the check off")
    return value or None


def _too_large(what: str, size: tuple[int, int] | None, limit: int | None, detail: str = "") -> ImageError:
    if size:
        pixels, shown = size[0] * size[1], f" is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels,"
    else:  # Pillow's own guard stopped it; its message carries the pixel count
        pixels = _bomb_pixels(detail)
        shown = f" is {pixels:,} pixels," if pixels else f" is too large ({detail}),"
    need = str(pixels) if pixels else str(10 * (limit or DEFAULT_MAX_PIXELS))
    over = f"over the limit of {limit:,} pixels" if limit else "over Pillow's own limit"
    return ImageError(
        f"{what}{shown} {over} (a guard against decompression bombs: small files that decode to huge images)",
        hint=f"if you trust the image, raise the limit: set the environment variable {MAX_PIXELS_ENV}={need} "
             f"(0 turns the check off), or pass max_pixels= to perceive.images.load_image",
    )


def _bomb_pixels(detail: str) -> int | None:
    """The pixel count in the message of Pillow's ``DecompressionBombError``, if it gives one."""
    m = re.search(r"\((\d+) pixels\)", detail)
    return int(m.group(1)) if m else None


#: held while Pillow's own guard is lifted for one image (see :func:`_open_checked`)
_PILLOW_GUARD = threading.Lock()


def _image_path(source: str | Path) -> Path:
    """``source`` as the path of an existing file, else the :class:`ImageError` that says why not."""
    text = str(source).strip()
    if not text or text == ".":  # the command line turns "" into "."
        raise ImageError(f"no image file given: the path is {text!r}", hint="pass the path of an image file")
    path = Path(source)
    if not path.exists():
        raise ImageError(f"image not found: {path}", hint="check the path")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file", hint="pass the path of one image file")
    return path


def _open_checked(source: Path | bytes | bytearray, limit: int | None, then: Callable[[Image.Image], T]) -> T:
    """``then(im)`` for the image in the file ``source`` (a checked :class:`Path`) or the bytes
    ``source``, once its size (read from the header) is within ``limit`` (``None``: no limit);
    :class:`ImageError` for a too large, corrupt or unreadable image.

    Our limit decides, not Pillow's: Pillow warns over its ``Image.MAX_IMAGE_PIXELS`` and refuses
    twice that. The warning is silenced; where Pillow refuses an image our limit allows (a limit
    raised for trusted images), the image is opened again with Pillow's guard set to our limit,
    under a lock, and restored at once: Pillow's global setting is never left changed."""
    if isinstance(source, Path):
        what, cannot, hint = f"image {source}", f"cannot read image {source}", \
            "the file is corrupt or not an image PIL can open"
    else:
        what, cannot, hint = "the image bytes", "cannot decode image bytes", "the bytes are corrupt or not an image"

    def attempt() -> T:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # a damaged EXIF block: the pixels are still good, and read as stored (see orientation)
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
            with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as im:
                if limit is not None and im.width * im.height > limit:
                    raise _too_large(what, im.size, limit)
                return then(im)

    try:
        try:
            return attempt()
        except Image.DecompressionBombError as exc:
            pixels = _bomb_pixels(str(exc))
            if limit is not None and (pixels is None or pixels > limit):
                raise _too_large(what, None, limit, str(exc)) from exc
            with _PILLOW_GUARD:  # our limit allows it: Pillow's, for this image only
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = limit
                try:
                    return attempt()
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:  # DecompressionBombError too
        # PIL names a byte buffer by its repr ("<_io.BytesIO object at 0x...>"): drop it
        why = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        raise ImageError(f"{cannot}: {why}", hint=hint) from exc


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1-8; 1 when it has none, or its EXIF cannot be read: the
    pixels are still good, read as stored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" and reads on
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image) -> Image.Image:
    """``image`` as it is meant to be seen: turned and mirrored as its EXIF orientation tag says
    (``PIL.ImageOps.exif_transpose``; the result's tag is removed, so it is never turned twice);
    ``image`` itself when it has no tag or tag 1. Same mode; width and height swap for tags 5-8."""
    if orientation(image) == 1:
        return image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ImageOps.exif_transpose(image)


def _decoded(im: Image.Image) -> Image.Image:
    im.load()  # fully: a truncated file fails here, not later in a caller
    turned = upright(im)
    return im.copy() if turned is im else turned


def check_input_size(size: tuple[int, int], what: str = "the input image") -> None:
    """Refuse, with an :class:`ImageError` addressed to the user, an image a run starts from whose
    ``(width, height)`` the model cannot look at: a side under :data:`MIN_INPUT_SIDE` px, or an
    aspect ratio over :data:`MAX_INPUT_ASPECT`. Crops the model chooses are not checked here:
    their errors say to choose another region."""
    w, h = size
    if min(w, h) < MIN_INPUT_SIDE:
        raise ImageError(f"{what} is {w}x{h} px: too small to look at; each side needs at least {MIN_INPUT_SIDE} px, "
                         "one per cell of the 8x8 region grid",
                         hint=f"give a larger image, at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} px: upscale a small "
                              "one first")
    if max(w, h) / min(w, h) > MAX_INPUT_ASPECT:
        raise ImageError(f"{what} is {w}x{h} px: its aspect ratio of {max(w, h) / min(w, h):.0f}:1 is over the "
                         f"{MAX_INPUT_ASPECT}:1 the model's image processor takes",
                         hint=f"crop the panorama into parts of at most {MAX_INPUT_ASPECT}:1, or pad it towards a "
                              "square, and ask about each part")


def _check_size(image: Image.Image, what: str) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{what} is empty ({image.width}x{image.height} px)",
                         hint="pass an image of at least 1x1 px")
    return image


def load_image(source: Any, *, max_pixels: int | None = -1) -> Image.Image:
    """A fully decoded PIL image from a path, bytes, a numpy array (HxW, HxWx1, HxWx3 or HxWx4)
    or a PIL image, turned upright by its EXIF orientation (:func:`upright`; files, bytes and PIL
    images: a PIL image you turned yourself with ``exif_transpose`` has no tag left and stays as
    it is). Its pixels are the frame every box of a run refers to.

    Raises :class:`~perceive.errors.ImageError` for a missing, corrupt, empty (0xN) or
    unsupported image, and for a file or byte string of more than ``max_pixels`` pixels
    (default: ``PERCEIVE_MAX_IMAGE_PIXELS``, else 89,478,485; ``None`` or ``0``: no limit).
    The mode is kept for files and PIL images (convert with :func:`as_rgb` where RGB is needed);
    an array that is not uint8 becomes 8-bit by the rules of :func:`to_uint8`.
    """
    limit = max_image_pixels() if max_pixels == -1 else (max_pixels or None)
    if isinstance(source, Image.Image):
        return _check_size(upright(source), "the image")
    if isinstance(source, str | Path):
        path = _image_path(source)
        return _check_size(_open_checked(path, limit, _decoded), f"image {path}")
    if isinstance(source, bytes | bytearray):
        return _check_size(_open_checked(source, limit, _decoded), "the image bytes")
    if hasattr(source, "__array_interface__"):
        return _check_size(from_array(source), "the array")
    raise ImageError(f"unsupported image source of type {type(source).__name__}",
                     hint="pass a path, bytes, a numpy array or a PIL image")


def check_image_file(path: str | Path, *, max_pixels: int | None = -1) -> tuple[int, int]:
    """The size of the image file at ``path``, reading its header only: a cheap early check for
    a missing, unreadable or too large image (truncated pixel data shows up only when
    :func:`load_image` decodes it). The size is the upright image's, as :func:`load_image` returns
    it (width and height swapped for EXIF orientations 5-8). ``max_pixels`` as for :func:`load_image`."""
    limit = max_image_pixels() if max_pixels == -1 else (max_pixels or None)
    path = _image_path(path)
    size = _open_checked(path, limit, lambda im: im.size[::-1] if orientation(im) in QUARTER_TURNS else im.size)
    if size[0] == 0 or size[1] == 0:
        raise ImageError(f"image {path} is empty ({size[0]}x{size[1]} px)", hint="pass an image of at least 1x1 px")
    return size


def from_array(source: Any) -> Image.Image:
    """A PIL image from a numpy array: HxW (``L``), HxWx1, HxWx3 (``RGB``) or HxWx4 (``RGBA``);
    other dtypes than uint8 are brought to 8 bits by :func:`to_uint8`."""
    hint = "pass an HxW, HxWx3 or HxWx4 array (uint8, or uint16 / float scaled to 8 bits)"
    try:
        a = np.asarray(source)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"cannot make an image from array: {exc}", hint=hint) from exc
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"cannot make an image from an array of shape {a.shape}", hint=hint)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"the array is empty (shape {a.shape}: {a.shape[1]}x{a.shape[0]} px)",
                         hint="pass an image of at least 1x1 px")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ImageError(f"cannot make an image from an array of dtype {a.dtype}", hint=hint)
    try:
        return Image.fromarray(np.ascontiguousarray(to_uint8(a, sixteen_bit=a.dtype == np.uint16)))
    except (TypeError, ValueError) as exc:
        raise ImageError(f"cannot make an image from array: {exc}", hint=hint) from exc


def to_uint8(a: np.ndarray, *, sixteen_bit: bool = False) -> np.ndarray:
    """Samples of any depth as uint8, by what a vision user expects them to mean:

    * uint8: unchanged; bool: 0 or 255;
    * ``sixteen_bit`` (uint16 arrays, Pillow's ``I;16`` modes, 16-bit PNG/TIFF): the full
      0-65535 range maps to 0-255 (a 16-bit file shows as its 8-bit version does);
    * other integers (Pillow's ``I``): values inside 0-255 are taken as 8-bit, inside 0-65535 as
      16-bit, anything else (negative values, more than 16 bits) is stretched from the image's
      minimum to its maximum;
    * floats (Pillow's ``F``): values inside 0-1 map to 0-255, inside 0-255 are taken as they
      are, anything else is stretched from minimum to maximum; NaN and infinities become 0.
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    x = a.astype(np.float64)
    if sixteen_bit:
        x *= 255 / 65535
    else:
        finite = np.isfinite(x)
        if not finite.all():
            x = np.where(finite, x, 0.0)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        is_float = np.issubdtype(a.dtype, np.floating)
        if is_float and lo >= 0 and hi <= 1:
            x *= 255
        elif lo >= 0 and hi <= 255:
            pass
        elif not is_float and lo >= 0 and hi <= 65535:
            x *= 255 / 65535
        else:
            x = (x - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def as_rgb(image: Image.Image) -> Image.Image:
    """RGB copy (or the image itself when already RGB). Alpha is composited on white; images of
    more than 8 bits (``I;16``, ``I``, ``F``) are scaled to 8 bits by :func:`to_uint8`."""
    if image.mode == "RGB":
        return image
    if image.mode in DEEP_MODES:
        a = np.asarray(image)
        gray = to_uint8(a, sixteen_bit=image.mode.startswith("I;16"))
        return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"cannot convert a {image.mode} image to RGB: {exc}",
                         hint="convert it to RGB yourself before passing it") from exc


def rescale(image: Image.Image, factor: float) -> Image.Image:
    """``image`` resized by ``factor`` on both sides (bicubic; at least 1x1 px)."""
    if factor == 1:
        return image
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


def decode_image_url(url: str, local_root: Path | None, *, server: str = "perceive serve") -> Image.Image:
    """An image a request names: a base64 ``data:`` URL, or the path of a file under the folder
    ``local_root`` (a ``file://`` prefix is stripped; ``None``: paths are refused), decoded by
    :func:`load_image` (upright; not converted to RGB). An ``http(s)`` URL is refused: perceive never
    fetches images. ``server`` names the server in messages (``perceive serve``, ``perceive mcp``),
    whose ``--allow-local-images`` flag sets ``local_root``. Raises :class:`ImageError` saying what
    to send instead."""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head:
            raise ImageError("an image data URL must be base64 (data:image/png;base64,...)",
                             hint="encode the file's bytes: 'data:image/png;base64,' + base64(bytes)")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"the image data URL is not valid base64: {exc}",
                             hint="send the file's bytes base64-encoded whole (standard alphabet, padded)") from None
        return load_image(raw)
    if url.startswith(("http://", "https://")):
        raise ImageError(f"{server} never fetches images from the network",
                         hint="send the image as a base64 data URL (data:image/png;base64,...)")
    path = Path(url.removeprefix("file://"))
    if local_root is None:
        raise ImageError(f"local image paths are off ({url!r})",
                         hint="send a base64 data URL, or start the server with --allow-local-images DIR")
    resolved = path
    try:
        resolved = path.resolve()
        resolved.relative_to(local_root.resolve())
    except (ValueError, OSError):
        # a link inside the folder that points out of it: say where it leads
        where = f" (it resolves to {str(resolved)!r})" if resolved != path else ""
        raise ImageError(f"{url!r}{where} is not under the allowed image folder {str(local_root)!r}",
                         hint="send a base64 data URL, or a path under --allow-local-images") from None
    return load_image(resolved)
