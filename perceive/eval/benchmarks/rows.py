"""A benchmark table's rows, read without decoding their images: each item's image decodes when
the item asks (:class:`RowImage`), so a corrupt image fails its own sample, not the read."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from PIL import Image

from perceive.errors import DataUnusableError, ImageError
from perceive.eval.benchmarks.base import EvalItem, ReadResult, open_table
from perceive.images import as_rgb, load_image


class ImageEncoding(str, Enum):
    """How a benchmark stores its images in a column."""

    #: datasets' Image feature: ``{"bytes": ..., "path": ...}`` (V* Bench, TextVQA, DocVQA, ChartQA)
    HF_IMAGE = "hf_image"
    #: a base64 string of the encoded file (HR-Bench, MME-RealWorld)
    BASE64 = "base64"


def decode(value: Any, encoding: ImageEncoding, where: str) -> Image.Image:
    """The RGB image stored as ``value`` (as :func:`perceive.images.load_image` reads it: upright
    by its EXIF orientation, alpha on white). Raises :class:`~perceive.errors.ImageError` naming
    ``where`` (the row) when it is missing, not base64, or not a readable image."""
    try:
        return as_rgb(load_image(_source(value, encoding)))
    except ImageError as exc:
        raise ImageError(f"{where}: {exc.message}", hint=exc.hint) from None


def _source(value: Any, encoding: ImageEncoding) -> Any:
    """What :func:`load_image` reads for a stored ``value``: bytes, a path, or a PIL image."""
    if encoding is ImageEncoding.BASE64:
        if not isinstance(value, str | bytes) or not value:
            raise ImageError("the image is missing", hint="the image column holds a base64 string per row")
        try:
            return base64.b64decode(value)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"the image is not base64 ({exc})",
                             hint="the image column holds a base64 string per row") from None
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None or value == b"" or value == "":
        raise ImageError("the image is missing", hint="write the file with the image embedded "
                         "(datasets' Image feature keeps the bytes)")
    return value


@dataclass(frozen=True)
class StoredImage:
    """An image's stored value, decoded when called (what a :class:`RowImage` pickles to)."""

    value: Any
    encoding: ImageEncoding
    where: str

    def __call__(self) -> Image.Image:
        return decode(self.value, self.encoding, self.where)


class RowImage:
    """Row ``row``'s image in ``table`` (a ``datasets.Dataset`` of the image column), fetched and
    decoded when called. Pickled (to a worker), it carries its own stored value only."""

    def __init__(self, table: Any, row: int, column: str, encoding: ImageEncoding, where: str):
        self.table, self.row, self.column, self.encoding, self.where = table, row, column, encoding, where

    def stored(self) -> Any:
        return self.table[self.row][self.column]

    def __call__(self) -> Image.Image:
        return decode(self.stored(), self.encoding, self.where)

    def __reduce__(self):
        return StoredImage, (self.stored(), self.encoding, self.where)


@dataclass
class Table:
    """A benchmark file's rows: the scalar columns of every row (``rows``), whether its image is
    null (``imageless``), and each row's image on demand (:meth:`image`)."""

    path: Path
    rows: list[dict[str, Any]]
    imageless: list[bool]
    images: Any
    image_column: str
    encoding: ImageEncoding

    def image(self, row: int) -> RowImage:
        return RowImage(self.images, row, self.image_column, self.encoding, f"row {row} of {self.path}")


def read_table(path: Path, *, benchmark: str, required: tuple[str, ...], image_column: str,
               encoding: ImageEncoding, split: str | None = None) -> Table:
    """``path`` opened (:func:`~perceive.eval.benchmarks.base.open_table`) with its columns checked:
    a file without one of ``required`` (or ``image_column``) is not in ``benchmark``'s format, and
    the error says which columns it has."""
    import datasets

    ds = open_table(Path(path), split)
    missing = [c for c in (*required, image_column) if c not in ds.column_names]
    if missing:
        raise DataUnusableError(f"{path} has no column{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(map(repr, missing))}: it is not in {benchmark}'s "
                                f"format (its columns: {', '.join(ds.column_names)})",
                                hint=f"give the {benchmark} file as published, or name the benchmark it is in")
    images = ds.select_columns([image_column])
    if isinstance(images.features[image_column], datasets.Image):
        # the stored bytes, not a decoded image: decoding waits for the item
        images = images.cast_column(image_column, datasets.Image(decode=False))
    rows = ds.remove_columns([image_column]).to_list()
    imageless = ds.data.column(image_column).is_null().to_pylist()
    return Table(Path(path), rows, imageless, images, image_column, encoding)


def empty(value: Any) -> bool:
    """A missing value: null, NaN (pandas' missing option), a blank string or an empty list."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value))


def absent(row: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The problems of a row missing any of ``names`` (:func:`empty`), one per field."""
    return [f"no {name}" for name in names if empty(row.get(name))]


def collect(table: Table, build: Callable[[int, dict[str, Any]], EvalItem | list[str]],
            required: tuple[str, ...] = ()) -> ReadResult:
    """Every row of ``table`` through ``build`` (row number, scalar columns -> an item, or the
    row's problems): the items, and the rows left out with why. A row missing one of ``required``
    (:func:`absent`) is left out before ``build`` sees it."""
    items, skipped = [], []
    for row, rec in enumerate(table.rows):
        got = absent(rec, required) or build(row, rec)
        problems = (got if isinstance(got, list) else []) + (["no image"] if table.imageless[row] else [])
        if problems:
            skipped.append((row, problems))
        else:
            items.append(got)
    return ReadResult(items, len(table.rows), skipped)


def scalars(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, str | int | float | bool]:
    """The present scalar values among ``names`` (ids, categories), for an item's ``fields``."""
    return {n: row[n] for n in names if isinstance(row.get(n), str | int | float | bool) and not empty(row[n])}
