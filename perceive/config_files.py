"""Config files made of layers: ``extends:`` chains, ``--set`` and flag overrides, and where each
value came from.

Every config perceive reads (run, train and eval) may start from another file::

    extends: base.yaml        # relative to this file; the base may extend another (a chain)

The file's values are laid over its base's: mappings merge key by key, any other value (a list,
a number, a string, ``null``) replaces the base's. A cycle (``a.yaml`` extends ``b.yaml`` extends
``a.yaml``) and chains longer than :data:`MAX_CHAIN` files are refused.

On top of the files come the command line's values (:class:`Override`): ``--set KEY.PATH=VALUE``
(:func:`parse_sets`; the value is read by the same safe YAML reader as files), then a command's
own flags (``--max-hops 2``). So the precedence is **flag > --set > the file > its bases >
the schema's default**.

Every mapping remembers the line and the origin (a file, or ``--set KEY`` / ``--flag``) of each
key, so that an error names where the wrong value was written (:func:`render_problem`,
:func:`format_validation_error`), and a relative path is resolved against the folder of the
file that wrote it (:func:`rebase`; a path given on the command line stays relative to the
working folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from perceive.errors import ConfigError, did_you_mean
from perceive.yamlio import LinedDict, load_yaml, loads

#: the key that names a config's base file
EXTENDS = "extends"
#: the most files in one ``extends`` chain
MAX_CHAIN = 16

_HINT = "a config file is `field: value` lines; see docs/reference/config.md"


@dataclass(frozen=True)
class Override:
    """A value set on the command line at ``path`` (``("runtime", "max_hops")``); ``origin``
    names it in errors (``--set runtime.max_hops``, ``--max-hops``)."""

    path: tuple[str | int, ...]
    value: Any
    origin: str


# -- reading a chain of files ---------------------------------------------------------------------

def read_mapping(path: str | Path) -> LinedDict:
    """One YAML file whose top level must be a mapping (an empty file: ``{}``), not composed."""
    data = load_yaml(path)
    if data is None:
        return LinedDict()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is a {type(data).__name__}, not a mapping of field: value",
                          hint=_HINT)
    return data


def load_mapping(path: str | Path, normalise: Callable[[LinedDict], LinedDict] | None = None) -> LinedDict:
    """A config file with its ``extends`` chain merged in, each key stamped with its file.
    ``normalise`` rewrites each file's mapping before it is merged (shorthands of a schema)."""
    path = Path(path)
    data = _load_chain(path, [], [], normalise)
    data.source = path
    return data


def _load_chain(path: Path, chain: list[Path], shown: list[str], normalise) -> LinedDict:
    data = read_mapping(path)
    stamp(data, path)
    if normalise is not None:
        data = normalise(data)
    if EXTENDS not in data:
        return data
    ref, line = data[EXTENDS], data.lines.get(EXTENDS)
    where = f"{path}: {EXTENDS}" + (f" (line {line})" if line else "")
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{where}: give the path of one base config file, relative to this file (got {ref!r})",
                          hint="e.g. `extends: base.yaml`; see docs/reference/config.md")
    base = Path(os.path.normpath(path.parent / Path(ref.strip()).expanduser()))
    chain, shown = [*chain, path.resolve()], [*shown, str(path)]
    if base.resolve() in chain:
        loop = " -> ".join([*shown[chain.index(base.resolve()):], str(base)])
        raise ConfigError(f"{where}: the chain of bases is a cycle: {loop}",
                          hint="a config cannot extend itself, directly or through its bases")
    if len(chain) >= MAX_CHAIN:
        raise ConfigError(f"{where}: more than {MAX_CHAIN} files in the chain of bases ({' -> '.join(shown)} ...)",
                          hint="merge some of the bases into one file")
    if not base.is_file():
        raise ConfigError(f"{where}: {base} " + ("is a folder" if base.is_dir() else "does not exist"),
                          hint=f"`{EXTENDS}` names a config file, relative to the file that extends it")
    return merge(_load_chain(base, chain, shown, normalise), without(data, EXTENDS))


def stamp(data: Any, origin: Path | str, keep_lines: bool = True) -> Any:
    """Mark every key of ``data`` (nested mappings and lists included) as set by ``origin``: a
    file (a ``Path``) or a command-line option (a ``str``, ``--set KEY``)."""
    if isinstance(data, dict):
        if not isinstance(data, LinedDict):
            return stamp(LinedDict(data), origin, keep_lines)
        for key, value in list(data.items()):
            data[key] = stamp(value, origin, keep_lines)
            data.origins[key] = origin
        if not keep_lines:
            data.lines.clear()
    elif isinstance(data, list):
        return [stamp(v, origin, keep_lines) for v in data]
    return data


def without(data: LinedDict, key: str) -> LinedDict:
    out = LinedDict({k: v for k, v in data.items() if k != key}, data.lines, data.origins)
    out.lines.pop(key, None)
    out.origins.pop(key, None)
    return out


def merge(base: Any, over: Any) -> Any:
    """``over`` laid over ``base``: mappings merge key by key (recursively), anything else in
    ``over`` replaces. Neither is changed; lines and origins follow the values."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    lines, origins = dict(getattr(base, "lines", {})), dict(getattr(base, "origins", {}))
    out = LinedDict(base, lines, origins)
    over_lines, over_origins = getattr(over, "lines", {}), getattr(over, "origins", {})
    for key, value in over.items():
        out[key] = merge(base[key], value) if key in base else value
        out.lines.pop(key, None)
        out.origins.pop(key, None)
        if key in over_lines:
            out.lines[key] = over_lines[key]
        if key in over_origins:
            out.origins[key] = over_origins[key]
    return out


# -- the command line -----------------------------------------------------------------------------

def parse_sets(items: Iterable[str] | None, fields: Iterable[str] | None = None) -> list[Override]:
    """``--set KEY.PATH=VALUE`` items as :class:`Override` s. ``KEY.PATH`` is dotted
    (``runtime.max_hops``, ``actions.zoom.options.size``; a number indexes a list:
    ``encoders.0.weights``); ``VALUE`` is YAML (``2``, ``null``, ``[a, b]``, ``{size: 336}``).

    ``fields``: the config's top-level fields, for commands that run a graph: there a bare KEY
    that is not one of them is a graph param (``max_hops=2`` is ``params.max_hops=2``).
    A malformed item raises ``ValueError`` (a usage error); a bad value ``ConfigError``."""
    fields = None if fields is None else set(fields)
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(p.strip() for p in parts):
            raise ValueError(f"--set takes KEY=VALUE, e.g. runtime.max_hops=2, got {item!r}")
        path = tuple(int(p) if p.isdigit() else p.strip() for p in parts)
        if fields is not None and len(path) == 1 and key not in fields:
            path = ("params", key)
        origin = f"--set {key}"
        out.append(Override(path, loads(value, origin), origin))
    return out


def apply_overrides(data: LinedDict, overrides: Iterable[Override]) -> LinedDict:
    """Set each override's value in ``data`` (in place; ``data`` is returned). A mapping value
    merges into a mapping already there, like a file over its base; missing mappings on the way
    are made."""
    for o in overrides:
        node: Any = data
        for depth, key in enumerate(o.path):
            path = o.path[:depth]
            if isinstance(node, list):
                if not isinstance(key, int) or not 0 <= key < len(node):
                    raise ConfigError(f"{o.origin}: {_dotted(path)} is a list of {len(node)} item(s): {key!r} "
                                      "is not one of its indices", hint="count from 0, e.g. encoders.0.weights")
            elif isinstance(node, dict):
                key = str(key)
            else:
                raise ConfigError(f"{o.origin}: {_dotted(path)} is {node!r}{at(data, path)}, not a mapping: it has "
                                  f"no field {key!r}", hint="set the whole value instead, or fix the key path")
            if depth == len(o.path) - 1:
                value = stamp(o.value, o.origin, keep_lines=False)
                have = node[key] if isinstance(node, list) or key in node else None
                node[key] = merge(have, value) if have is not None else value
            elif isinstance(node, list) or isinstance(node.get(key), (dict, list)):
                node = node[key]
                continue
            elif node.get(key) is None:
                if isinstance(o.path[depth + 1], int):
                    raise ConfigError(f"{o.origin}: {_dotted(o.path[:depth + 1])} has no item {o.path[depth + 1]}",
                                      hint=f"set the whole list: --set '{_dotted(o.path[:depth + 1])}=[...]'")
                node[key] = LinedDict()
            else:
                node = node[key]  # a scalar: refused with its line on the next key
                continue
            if isinstance(node, dict):
                getattr(node, "lines", {}).pop(key, None)
                getattr(node, "origins", {})[key] = o.origin
            node = node[key]
    return data


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path)) or "(top level)"


# -- where a value came from ----------------------------------------------------------------------

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


__all__ = ["EXTENDS", "MAX_CHAIN", "Override", "apply_overrides", "at", "format_validation_error", "load_mapping",
           "merge", "origin_dir", "parse_sets", "read_mapping", "rebase", "render_problem", "where"]
