"""The images ``perceive mcp`` holds for agents: each registered image under an id (``img3``), and every
view a tool made of it under the image's id and the view's frame id (``img3.v1``), so an agent names any of
them in a later call; with a bounded memory, the least recently used image going first with all its views.

An image is held as the perception loop holds a sample's: ``as_rgb(load_image(...))``, upright and RGB, so
a crop cut here equals the loop's for the same call; its views' frames map their pixels to it exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from perceive.errors import ImageError, UnknownImageError
from perceive.geometry import ROOT, Frame
from perceive.images import as_rgb, decode_image_url
from perceive.observations import View

#: bytes in the MB of the store's limit (as ``serve.max_body_mb``)
MB = 1024 * 1024
#: an image id: ``img<N>`` for a registered image, ``img<N>.<frame id>`` for a view of it
IMAGE_ID = re.compile(r"img(\d+)(?:\.(v\d+))?")
#: how a client passes an image as MCP image content: ``{"type": "image", "data": BASE64, "mimeType": ...}``
CONTENT_TYPE = "image"


def rgb_bytes(image: Image.Image) -> int:
    """The memory an RGB image's pixels take: 3 bytes a pixel."""
    return image.width * image.height * 3


@dataclass(frozen=True)
class StoredImage:
    """One image the store holds, as a tool runs on it: ``id`` (``img3`` or ``img3.v1``), ``group`` (the
    registered image's id), ``root`` (the registered image, RGB), ``frame`` (this image's frame: ``root``'s
    own, or the view's, mapping its pixels to ``root``'s), ``image`` (its pixels, RGB) and ``ids`` (the view
    id counter shared by every call on this group: an :class:`~perceive.actions.ActionContext`'s ``_ids``)."""

    id: str
    group: str
    root: Image.Image
    frame: Frame
    image: Image.Image
    ids: Iterator[int]

    def public(self, frame_id: str | None) -> str:
        """The id of this group's image whose frame id is ``frame_id`` (``root``: the group's)."""
        return self.group if frame_id in (None, ROOT) else f"{self.group}.{frame_id}"


@dataclass
class _Group:
    """A registered image and its views: they are kept and let go together, since a view's crops are cut
    from the root."""

    id: str
    root: Image.Image
    key: Any = None
    views: OrderedDict[str, View] = field(default_factory=OrderedDict)  # frame id -> view, least recently used first
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def count(self) -> int:
        return 1 + len(self.views)

    @property
    def nbytes(self) -> int:
        return rgb_bytes(self.root) + sum(rgb_bytes(v.image) for v in self.views.values())


class ImageStore:
    """Registered images and their views, at most ``max_images`` of them together and ``max_mb`` MB of RGB
    pixels; past either, the least recently used registered image goes with all its views (a call on an
    image or one of its views uses it). Safe to use from several threads at once."""

    def __init__(self, max_images: int = 256, max_mb: float = 1024.0):
        if max_images < 1 or not max_mb > 0:
            raise ValueError(f"an image store holds at least one image and some memory, not {max_images} / "
                             f"{max_mb} MB")
        self.max_images = max_images
        self.max_mb = max_mb
        self.max_bytes = int(max_mb * MB)
        self._groups: OrderedDict[str, _Group] = OrderedDict()  # least recently used first
        self._keys: dict[Any, str] = {}
        self._serial = itertools.count(1)
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, mcp) -> ImageStore:
        """The store ``mcp`` (a :class:`~perceive.config.McpConfig`) sets: ``max_images``, ``max_image_mb``."""
        return cls(mcp.max_images, mcp.max_image_mb)

    # -- what it holds ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Images held: registered images and their views."""
        with self._lock:
            return sum(g.count for g in self._groups.values())

    @property
    def nbytes(self) -> int:
        """Bytes of RGB pixels held."""
        with self._lock:
            return sum(g.nbytes for g in self._groups.values())

    def ids(self) -> list[str]:
        """Every id held, least recently used image first, each image before its views."""
        with self._lock:
            return [i for g in self._groups.values() for i in (g.id, *(f"{g.id}.{v}" for v in g.views))]

    def limits(self) -> str:
        """``256 images / 1024 MB``, for messages."""
        return f"{self.max_images} images / {self.max_mb:g} MB"

    # -- registering and reading -----------------------------------------------------------------

    def register(self, image: Image.Image, key: Any = None) -> StoredImage:
        """Hold ``image`` (as RGB; give it as ``load_image`` returns it) under a new id ``img<N>``. ``key``
        (hashable, e.g. a file's path, size and time): an image registered with the same key and still held
        is returned instead. Raises :class:`ImageError` for an image larger than the whole store."""
        with self._lock:
            if key is not None and self._keys.get(key) in self._groups:
                return self.get(self._keys[key])
        rgb = as_rgb(image)
        size = rgb_bytes(rgb)
        if size > self.max_bytes:
            raise ImageError(f"the image is {rgb.width}x{rgb.height} px, {size / MB:.1f} MB as RGB: more than the "
                             f"whole image store ({self.max_mb:g} MB)",
                             hint="send a smaller image, or raise mcp.max_image_mb")
        with self._lock:
            group = _Group(f"img{next(self._serial)}", rgb, key)
            self._groups[group.id] = group
            if key is not None:
                self._keys[key] = group.id
            self._make_room(keep=group)
            return self._entry(group, ROOT)

    def get(self, image_id: str) -> StoredImage:
        """The image ``image_id`` names (and its group is now the most recently used), or
        :class:`UnknownImageError`."""
        m = IMAGE_ID.fullmatch(image_id.strip()) if isinstance(image_id, str) else None
        with self._lock:
            group = self._groups.get(f"img{m.group(1)}") if m else None
            frame_id = (m.group(2) or ROOT) if m else ROOT
            if group is None or (frame_id != ROOT and frame_id not in group.views):
                raise self._unknown(image_id)
            self._groups.move_to_end(group.id)
            if frame_id != ROOT:  # within its image too, a view used is the last to go
                group.views.move_to_end(frame_id)
            return self._entry(group, frame_id)

    def resolve(self, source: str | Mapping[str, Any], local_root: Path | None) -> tuple[StoredImage, bool]:
        """``(the image, whether it was registered now)`` for what a call gives as ``image``: an id held, or
        an image to register (:func:`decode_source`). Raises :class:`UnknownImageError` for an id held no
        more, :class:`ImageError` for an image that cannot be read or is not allowed."""
        if isinstance(source, str) and looks_like_id(source):
            return self.get(source), False
        key = source_key(source, local_root)
        with self._lock:  # the same bytes or file again: the image held, not decoded a second time
            if key is not None and self._keys.get(key) in self._groups:
                return self.get(self._keys[key]), False
        return self.register(decode_source(source, local_root), key), True

    def add_views(self, group_id: str, views: Sequence[View]) -> list[str]:
        """Hold ``views`` (made by a call on an image of the group ``group_id``; their frames have ids from
        its counter) and return their ids (``img3.v4``). To make room, other images go first (least recently
        used first), then this image's own least recently used views. Raises :class:`UnknownImageError` when
        the group was let go meanwhile, :class:`ImageError` when the views alone do not fit beside their
        image."""
        need = sum(rgb_bytes(v.image) for v in views)
        with self._lock:
            group = self._groups.get(group_id)
            if group is None:
                raise self._unknown(group_id)
            if 1 + len(views) > self.max_images or rgb_bytes(group.root) + need > self.max_bytes:
                raise ImageError(f"the {len(views)} view(s) this call made ({need / MB:.1f} MB) do not fit in the "
                                 f"image store ({self.limits()}) beside the image they show",
                                 hint="raise mcp.max_images or mcp.max_image_mb, or ask for fewer or smaller views")
            for view in views:
                group.views[view.frame.id] = view
            self._groups.move_to_end(group_id)
            self._make_room(keep=group, fresh={v.frame.id for v in views})
            return [f"{group_id}.{v.frame.id}" for v in views]

    # -- internals -------------------------------------------------------------------------------

    def _entry(self, group: _Group, frame_id: str) -> StoredImage:
        if frame_id == ROOT:
            return StoredImage(group.id, group.id, group.root, Frame.root(*group.root.size), group.root, group.ids)
        view = group.views[frame_id]
        return StoredImage(f"{group.id}.{frame_id}", group.id, group.root, view.frame, view.image, group.ids)

    def _over(self) -> bool:
        groups = self._groups.values()
        return sum(g.count for g in groups) > self.max_images or sum(g.nbytes for g in groups) > self.max_bytes

    def _make_room(self, keep: _Group, fresh: set[str] = frozenset()) -> None:
        """Let go of the least recently used images but ``keep``, then ``keep``'s oldest views but ``fresh``,
        until the store is within its limits (the callers checked that ``keep``'s root and fresh views fit)."""
        while self._over():
            old = next((g for g in self._groups.values() if g is not keep), None)
            if old is not None:
                self._drop(old)
                continue
            stale = next((v for v in keep.views if v not in fresh), None)
            if stale is None:
                return
            del keep.views[stale]

    def _drop(self, group: _Group) -> None:
        del self._groups[group.id]
        if group.key is not None and self._keys.get(group.key) == group.id:
            del self._keys[group.key]

    def _unknown(self, image_id: Any) -> UnknownImageError:
        return UnknownImageError(f"unknown image id {image_id!r}: never registered, or evicted (least recently used) "
                                 f"from the store's {self.limits()}",
                                 hint="register it again with register_image (or give its path or data URL as "
                                      "`image`)")


# -- images as a client gives them ---------------------------------------------------------------------


def looks_like_id(text: str) -> bool:
    """Whether ``text`` is written as an image id (``img3``, ``img3.v1``) rather than a data URL or path."""
    return IMAGE_ID.fullmatch(text.strip()) is not None


def _data_key(data: str) -> tuple[str, str]:
    return ("sha256", hashlib.sha256(data.strip().encode()).hexdigest())


def source_key(source: str | Mapping[str, Any], local_root: Path | None) -> Any:
    """The store key of an image a client gives, before it is decoded: the sha256 of a data URL's or MCP
    image content's base64 text (an agent that sends its image again gets the id it had), a file's path,
    size and modification time; ``None`` when it cannot be told (it is then decoded, and refused if bad)."""
    if isinstance(source, Mapping):
        data = source.get("data")
        return _data_key(data) if isinstance(data, str) else None
    if not isinstance(source, str) or not source.strip():
        return None
    text = source.strip()
    if text.startswith("data:"):
        return _data_key(text.partition(",")[2])
    if text.startswith(("http://", "https://")) or local_root is None:
        return None
    try:
        resolved = _local_path(text, local_root).resolve()
        resolved.relative_to(local_root.resolve())  # never stat a file outside the allowed folder
        stat = resolved.stat()
    except (OSError, ValueError):
        return None
    return (str(resolved), stat.st_size, stat.st_mtime_ns)


def _local_path(text: str, local_root: Path) -> Path:
    """A path a client gives: a ``file://`` prefix dropped, a relative one taken under the allowed folder
    (an agent's working folder is not the server's)."""
    path = Path(text.removeprefix("file://"))
    return path if path.is_absolute() else local_root / path


def decode_source(source: str | Mapping[str, Any], local_root: Path | None) -> Image.Image:
    """The image (as load_image returns it) a client gives: a base64 data URL, MCP image content
    (``{"type": "image", "data": BASE64, "mimeType": "image/png"}``), or the path of a file under
    ``local_root`` (a relative path is taken under it; ``None``: paths are refused); its store key is
    :func:`source_key`'s. Raises :class:`ImageError` saying what to send instead."""
    if isinstance(source, Mapping):
        data, mime = source.get("data"), source.get("mimeType", source.get("mime_type", "image/png"))
        if source.get("type") != CONTENT_TYPE or not isinstance(data, str) or not isinstance(mime, str):
            raise ImageError("an image given as an object must be MCP image content: {\"type\": \"image\", "
                             "\"data\": BASE64, \"mimeType\": \"image/png\"}",
                             hint="or give a data URL (data:image/png;base64,...) as a string")
        return decode_image_url(f"data:{mime};base64,{data}", None, server="perceive mcp")
    if not isinstance(source, str) or not source.strip():
        raise ImageError(f"an image must be an id, a data URL or a path, not {source!r}",
                         hint="register_image gives an id (img1); or send data:image/png;base64,...")
    text = source.strip()
    if text.startswith(("data:", "http://", "https://")) or local_root is None:
        return decode_image_url(text, local_root, server="perceive mcp")
    return decode_image_url(str(_local_path(text, local_root)), local_root, server="perceive mcp")


__all__ = ["IMAGE_ID", "MB", "ImageStore", "StoredImage", "decode_source", "looks_like_id", "rgb_bytes",
           "source_key"]
