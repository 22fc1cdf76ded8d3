"""Where each value of a config was written, for messages and relative paths.

A config composed from files and the command line (:mod:`perceive.config.files`,
:mod:`perceive.config.overrides`) is made of :class:`~perceive.config.safe_yaml.LinedDict` s that
know the line and the origin (a file, or ``--set KEY`` / ``--flag``) of each key. An error names
that place (:func:`render_problem`, :func:`format_validation_error`), and a relative path is
resolved against the folder of the file that wrote it (:func:`rebase`; a path given on the
command line stays relative to the working folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from perceive.errors import did_you_mean


def where(data: Any, loc: tuple) -> tuple[int | None, Path | str | None]:
    """``(line, origin)`` of the value at ``loc`` in a parsed config, or of the closest mapping
    key above it that the data has (a missing field: its parent's)."""
    line = origin = None
    for key in loc:
        if isinstance(data, dict) and key in data:
            line = getattr(data, "lines", {}).get(key)
            origin = getattr(data, "origins", {}).get(key)
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            break
    return line, origin


def at(data: Any, loc: tuple) -> str:
    """`` (line N)`` for a value of the file itself, `` (base.yaml line N)`` for one a base file
    set, `` (--set KEY)`` for one the command line set; empty when unknown."""
    if data is None:
        return ""
    line, origin = where(data, loc)
    if isinstance(origin, str):
        return f" ({origin})"
    other = origin if origin is not None and origin != getattr(data, "source", None) else None
    if line:
        return f" ({str(other) + ' ' if other else ''}line {line})"
    return f" ({other})" if other else ""


def origin_dir(data: Any, loc: tuple, default: Path | None) -> Path | None:
    """The folder a relative path at ``loc`` is relative to: its file's; ``None`` for a value from
    the command line (the working folder); ``default`` for the file itself."""
    _, origin = where(data, loc)
    if origin is None:
        return default
    return origin.parent if isinstance(origin, Path) else None


def rebase(value: Path | None, data: Any, loc: tuple, default: Path | None) -> Path | None:
    """``value`` (a path at ``loc``) made relative to the folder of the file that wrote it."""
    if value is None or Path(value).is_absolute():
        return value
    folder = origin_dir(data, loc, default)
    return value if folder is None else folder / value


def render_problem(loc: tuple, msg: str, data: Any = None) -> str:
    """``field (line N): message``: a problem at ``loc`` of a config, with where ``data`` (the
    parsed YAML) says the value was written."""
    return ".".join(str(p) for p in loc) + at(data, loc) + f": {msg}"


def format_validation_error(exc: ValidationError, source: str, data: Any = None,
                            model: type[BaseModel] | None = None) -> str:
    lines = [f"{source}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and model is not None:
            allowed = _allowed_fields(model, loc[:-1])
            hint = did_you_mean(str(loc[-1]), allowed) if allowed else None
            if hint:
                msg += f" ({hint})"
        lines.append(f"  {field}{at(data, loc)}: {msg}")
    return "\n".join(lines)


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    cur: Any = model
    for key in loc:
        if isinstance(key, int) or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            continue
        field = cur.model_fields.get(key)
        if field is None:
            return []
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        cur = next((a for a in [ann, *args] if isinstance(a, type) and issubclass(a, BaseModel)),
                   None)
        if cur is None:
            return []
    return list(cur.model_fields) if isinstance(cur, type) else []


__all__ = ["at", "format_validation_error", "origin_dir", "rebase", "render_problem", "where"]
